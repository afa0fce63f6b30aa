"""How eval scores and generates with each kind of artifact, on token ids the base tokenizer made.

A `Runtime` gives per-token log-probabilities of whole sequences and greedy continuations: HFRuntime for
transformers models (the base, with or without an adapter, and merged models), LlamaCppRuntime for GGUF
files. Both receive the SAME ids (encode_conversation renders the chat template and tokenizes once), so
HF and GGUF perplexities are comparable.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from ta import paths
from ta.errors import EvalError
from ta.eval import metrics


class Runtime(Protocol):
    def token_logprobs(self, sequences: list[list[int]]) -> list[list[float]]:
        """Per sequence: log p(ids[i] | ids[:i]) for i = 1 .. len(ids) - 1."""

    def greedy(self, prompts: list[list[int]], max_new_tokens: int, stop_ids: set[int]) -> list[list[int]]:
        """Per prompt: its greedy continuation, cut before the first stop token."""


# ----------------------------------------------------------------------------------------- token ids


@dataclass
class Encoded:
    ids: list[int]
    scored: list[bool]  # True for assistant tokens (the answer text and its end-of-turn token)


def encode_conversation(tokenizer: Any, messages: list[dict[str, str]]) -> Encoded:
    """Render with the chat template, tokenize once, and mark the tokens inside assistant turns.

    An assistant turn spans from the end of the generation prompt before it to its end-of-turn token
    (the template's trailing newline is not scored), found by rendering the growing conversation.
    """
    text = tokenizer.apply_chat_template(messages, tokenize=False)
    spans = []
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        prompt = tokenizer.apply_chat_template(messages[:i], tokenize=False, add_generation_prompt=True)
        turn = tokenizer.apply_chat_template(messages[: i + 1], tokenize=False).rstrip("\n")
        if not (text.startswith(prompt) and text.startswith(turn)):
            raise EvalError(f"{paths.BASE_DIR}: chat template does not render conversations prefix by prefix")
        spans.append((len(prompt), len(turn)))
    encoding = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    scored = [any(start <= begin < end for start, end in spans) for begin, _ in encoding["offset_mapping"]]
    return Encoded(list(encoding["input_ids"]), scored)


def encode_prompt(tokenizer: Any, messages: list[dict[str, str]]) -> list[int]:
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def scored_logprobs(runtime: Runtime, conversations: list[Encoded]) -> list[list[float]]:
    """Per conversation, the log-probs of its scored (assistant) tokens."""
    all_logprobs = runtime.token_logprobs([encoded.ids for encoded in conversations])
    return [
        [logprobs[i - 1] for i in range(1, len(encoded.ids)) if encoded.scored[i]]
        for encoded, logprobs in zip(conversations, all_logprobs, strict=True)
    ]


# ------------------------------------------------------------------------------------------ runtimes


class HFRuntime:
    """A transformers (or PEFT-wrapped) causal LM. Sequences go through in padded batches of similar length
    (sorted, longest first, so that a batch pads little and an out-of-memory shows on the first one); results
    come back in the callers' order."""

    LOGPROB_CHUNK = 256  # positions turned into fp32 log-probs at once: 152k vocab x 256 x 4 B = 155 MiB

    def __init__(self, model: Any, pad_id: int, batch_size: int) -> None:
        self.model, self.pad_id, self.batch_size = model.eval(), pad_id, batch_size

    def _batches(self, sequences: list[list[int]]) -> Iterator[list[int]]:
        """Indices of `sequences` in batches of at most batch_size, longest first (ties in input order)."""
        order = sorted(range(len(sequences)), key=lambda i: -len(sequences[i]))
        for start in range(0, len(order), self.batch_size):
            yield order[start : start + self.batch_size]

    def _padded(self, batch: list[list[int]], left: bool) -> tuple[Any, Any]:
        import torch

        width = max(len(ids) for ids in batch)
        input_ids = torch.full((len(batch), width), self.pad_id, dtype=torch.long)
        attention_mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, ids in enumerate(batch):
            span = slice(width - len(ids), width) if left else slice(0, len(ids))
            input_ids[row, span], attention_mask[row, span] = torch.tensor(ids), 1
        return input_ids.to(self.model.device), attention_mask.to(self.model.device)

    def token_logprobs(self, sequences: list[list[int]]) -> list[list[float]]:
        import torch

        result: list[list[float]] = [[] for _ in sequences]
        for indices in self._batches(sequences):
            batch = [sequences[i] for i in indices]
            input_ids, attention_mask = self._padded(batch, left=False)  # right padding: causal, no effect
            with torch.no_grad():
                logits = self.model(input_ids=input_ids, attention_mask=attention_mask).logits
                for row, i in enumerate(indices):
                    result[i] = self._logprobs(logits[row, : len(batch[row]) - 1], input_ids[row, 1 : len(batch[row])])
        return result

    def _logprobs(self, logits: Any, targets: Any) -> list[float]:
        """log softmax(logits)[target] per position, as logit - logsumexp in fp32, LOGPROB_CHUNK positions at
        a time: never a full fp32 log-softmax over the vocabulary (~1 GiB per 2k positions at 152k)."""
        import torch

        values = []
        for start in range(0, logits.shape[0], self.LOGPROB_CHUNK):
            chunk, wanted = logits[start : start + self.LOGPROB_CHUNK], targets[start : start + self.LOGPROB_CHUNK]
            picked = chunk.gather(1, wanted[:, None])[:, 0].float()
            values.append(picked - torch.logsumexp(chunk.float(), dim=-1))
        return torch.cat(values).tolist() if values else []

    def greedy(self, prompts: list[list[int]], max_new_tokens: int, stop_ids: set[int]) -> list[list[int]]:
        import torch
        from transformers import GenerationConfig

        config = GenerationConfig(
            max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=sorted(stop_ids), pad_token_id=self.pad_id
        )
        result: list[list[int]] = [[] for _ in prompts]
        for indices in self._batches(prompts):
            input_ids, attention_mask = self._padded([prompts[i] for i in indices], left=True)
            with torch.no_grad():
                output = self.model.generate(
                    input_ids=input_ids, attention_mask=attention_mask, generation_config=config
                )
            for i, row in zip(indices, output, strict=True):
                result[i] = _until_stop(row[input_ids.shape[1] :].tolist(), stop_ids)
        return result


class LlamaCppRuntime:
    """A GGUF file through llama.cpp, one sequence at a time, logits for every position (of at most n_ctx)."""

    def __init__(self, path: Path, n_ctx: int, n_threads: int) -> None:
        from ta.export.llama_cpp import open_gguf

        self.llm = open_gguf(path, n_ctx, n_threads, logits_all=True)

    def token_logprobs(self, sequences: list[list[int]]) -> list[list[float]]:
        result = []
        for ids in sequences:
            self.llm.reset()
            self.llm.eval(ids)
            result.append(metrics.next_token_logprobs(self.llm.scores[: len(ids) - 1], ids[1:]))
        return result

    def greedy(self, prompts: list[list[int]], max_new_tokens: int, stop_ids: set[int]) -> list[list[int]]:
        return [self._greedy_one(prompt, max_new_tokens, stop_ids) for prompt in prompts]

    def _greedy_one(self, prompt: list[int], max_new_tokens: int, stop_ids: set[int]) -> list[int]:
        # llama.cpp's own greedy sampler (temp 0); we stop on the same end tokens as transformers.
        generated: list[int] = []
        for token in self.llm.generate(prompt, temp=0.0, top_k=1, repeat_penalty=1.0, reset=True):
            if token in stop_ids or len(generated) == max_new_tokens:
                break
            generated.append(token)
        return generated


def _until_stop(tokens: list[int], stop_ids: set[int]) -> list[int]:
    for i, token in enumerate(tokens):
        if token in stop_ids:
            return tokens[:i]
    return tokens
