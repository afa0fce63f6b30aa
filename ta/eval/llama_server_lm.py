"""lm-evaluation-harness's model for a GGUF behind llama.cpp's OpenAI-compatible server (llama-cpp-python's).

Log-likelihoods come from `/v1/completions` with `echo` and `logprobs` (the prompt's own token log-probs),
tokens from the server's `/extras/tokenize`, so the GGUF's own tokenizer splits context and continuation.

Why not lm-eval's `gguf` or `local-completions` models: with llama-cpp-python 0.3.36 neither scores correctly.
The server reports token i's log-prob from the logits *after* token i (one position late) unless the prompt
starts with the model's BOS token, which it then leaves out of the report (abetlen/llama-cpp-python#1983,
#1276); Qwen-style models add no BOS. `gguf` also splits the echo at a character offset, and the server
counts special tokens (`<|im_start|>`) as zero characters; `local-completions` sends token ids, which this
server refuses. Neither sends an API key. So every request here starts with the BOS token: ta_pref's
contexts carry it for every artifact alike (ta/eval/harness.py); another task's context gets it from this
model, so on lm-eval's own tasks the GGUF is scored after a BOS the `hf` backend does not give a Qwen-style
model (the difference is that one conditioning token).
"""

from __future__ import annotations

from typing import Any

import requests
from lm_eval.api.model import TemplateLM

from ta.errors import EvalError


class LlamaServerLM(TemplateLM):
    """Log-likelihood requests against llama.cpp's server at `base_url` (…/v1) serving `model`."""

    def __init__(self, base_url: str, model: str, api_key: str | None, bos: tuple[int, str], timeout: float = 120.0):
        super().__init__()
        self.base_url, self.model, self.timeout = base_url.rstrip("/"), model, timeout
        self.bos_id, self.bos_text = bos
        self.session = requests.Session()
        if api_key:
            self.session.headers["Authorization"] = f"Bearer {api_key}"

    def _post(self, url: str, body: dict[str, Any]) -> dict[str, Any]:
        try:
            response = self.session.post(url, json=body, timeout=self.timeout)
        except requests.RequestException as err:
            raise EvalError(f"{url}: {err}") from err
        if response.status_code != 200:
            raise EvalError(f"{url}: HTTP {response.status_code}: {response.text[:300]}")
        return response.json()

    @property
    def eot_token_id(self) -> int:
        return self.bos_id  # only used for an empty context, which the local tasks never have

    def tok_encode(self, string: str, **kwargs: Any) -> list[int]:
        root = self.base_url.removesuffix("/v1")
        return self._post(f"{root}/extras/tokenize", {"input": string, "model": self.model})["tokens"]

    def _loglikelihood_tokens(
        self, pairs: list[tuple[tuple[str, str], list[int], list[int]]], **kwargs: Any
    ) -> list[tuple[float, bool]]:
        results = []
        for (context, continuation), context_ids, continuation_ids in pairs:
            if not context_ids or context_ids[0] != self.bos_id:
                context, context_ids = self.bos_text + context, [self.bos_id, *context_ids]
            n_tokens = len(context_ids) + len(continuation_ids)
            results.append(self._score(context + continuation, n_tokens, continuation_ids))
        return results

    def _score(self, text: str, n_tokens: int, continuation_ids: list[int]) -> tuple[float, bool]:
        body = {"model": self.model, "prompt": text, "max_tokens": 1, "temperature": 0.0, "echo": True, "logprobs": 1}
        reply = self._post(f"{self.base_url}/completions", body)
        if reply["usage"]["prompt_tokens"] != n_tokens:
            raise EvalError(
                f"{self.base_url}: the server tokenized a request into {reply['usage']['prompt_tokens']} tokens, "
                f"/extras/tokenize into {n_tokens}"
            )
        logprobs = reply["choices"][0]["logprobs"]
        # The report leaves out the BOS and ends with the token generated after the prompt, if any: none when
        # the model's first pick is a stop token (a chat model after its end-of-turn), so the prompt's own
        # tokens end `completion_tokens` before the report does, and the continuation ends there.
        end = len(logprobs["token_logprobs"]) - reply["usage"]["completion_tokens"]
        span = slice(end - len(continuation_ids), end)
        token_logprobs, top_logprobs = logprobs["token_logprobs"][span], logprobs["top_logprobs"][span]
        is_greedy = all(lp >= max(top.values()) for lp, top in zip(token_logprobs, top_logprobs, strict=True))
        return float(sum(token_logprobs)), is_greedy

    def loglikelihood_rolling(self, requests: list[Any], disable_tqdm: bool = False) -> list[float]:
        raise EvalError("the llama.cpp server model scores multiple-choice and log-likelihood tasks only")

    def generate_until(self, requests: list[Any], disable_tqdm: bool = False) -> list[str]:
        raise EvalError("the llama.cpp server model scores multiple-choice and log-likelihood tasks only")
