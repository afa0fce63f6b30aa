"""The harness stage (ta/eval/harness.py, ta/eval/llama_server_lm.py): the local task as lm-eval reads it, scored
by a fake model with known log-likelihoods (fast tier); and the stage's metrics/harness.json from the pipeline
run against log-probabilities computed here directly with transformers and llama.cpp (full tier)."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import jinja2
import pytest

from ta.chat import CHATML_TEMPLATE
from ta.config import load_params
from ta.errors import EvalError, ParamsError
from ta.eval import harness
from tests.conftest import apply_overrides
from tests.helpers import DVC, REPO, clone_with_results, ran_stages, run, write_params

SHIPPED = load_params(REPO / "params.yaml").harness
SYSTEM = {"role": "system", "content": "你是教学助手。"}
BOS = "<|endoftext|>"


def chatml(messages: list[dict[str, str]], add_generation_prompt: bool) -> str:
    return jinja2.Template(CHATML_TEMPLATE).render(messages=messages, add_generation_prompt=add_generation_prompt)


def pair(question: str, chosen: str, rejected: str) -> dict[str, Any]:
    return {
        "prompt": [SYSTEM, {"role": "user", "content": question}],
        "chosen": [{"role": "assistant", "content": chosen}],
        "rejected": [{"role": "assistant", "content": rejected}],
    }


def test_a_pair_becomes_context_and_two_answers_from_the_header_newline_to_their_end_of_turn() -> None:
    doc = harness.preference_doc(pair("1+1?", "答案：2", "3"), chatml, BOS)
    assert doc == {
        "context": "<|endoftext|><|im_start|>system\n你是教学助手。<|im_end|>\n<|im_start|>user\n1+1?<|im_end|>\n"
        "<|im_start|>assistant",
        "choices": ["\n答案：2<|im_end|>", "\n3<|im_end|>"],
    }


def test_a_template_that_does_not_render_prefix_by_prefix_is_refused() -> None:
    def numbered(messages: list[dict[str, str]], add_generation_prompt: bool) -> str:
        return f"{len(messages)} turns: " + chatml(messages, add_generation_prompt)

    with pytest.raises(EvalError, match="prefix by prefix"):
        harness.preference_doc(pair("1+1?", "2", "3"), numbered, BOS)


class KnownLM:
    """An lm-eval model whose log-likelihood of a continuation is looked up in a table; it records requests."""

    def __new__(cls, table: dict[str, float]) -> Any:
        from lm_eval.api.model import LM

        class Known(LM):
            def __init__(self) -> None:
                super().__init__()
                self.requests: list[tuple[str, str]] = []

            def loglikelihood(self, requests: list[Any], disable_tqdm: bool = False) -> list[tuple[float, bool]]:
                self.requests += [request.args for request in requests]
                return [(table[continuation], False) for _, continuation in (r.args for r in requests)]

            def loglikelihood_rolling(self, requests: list[Any], disable_tqdm: bool = False) -> list[float]:
                raise NotImplementedError

            def generate_until(self, requests: list[Any], disable_tqdm: bool = False) -> list[str]:
                raise NotImplementedError

        return Known()


def test_lm_eval_reads_the_local_task_offline_and_scores_acc_and_acc_norm(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rows = [pair("q1", "aaaa", "b"), pair("q2", "cc", "dddddddd"), pair("q3", "eeeeeeee", "ff"), pair("q4", "g", "h")]
    split = tmp_path / "pref_eval.jsonl"
    split.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    monkeypatch.setitem(harness.LOCAL_TASKS, "ta_pref", split)
    table = {"aaaa": -4.0, "b": -3.0, "cc": -2.0, "dddddddd": -9.0, "eeeeeeee": -9.0, "ff": -8.0, "g": -1.0, "h": -5.0}
    table = {f"\n{answer}<|im_end|>": logprob for answer, logprob in table.items()}  # 11 more characters each
    task_dir = tmp_path / "tasks"
    task_dir.mkdir()
    harness.write_local_tasks(task_dir, ["ta_pref"], chatml, BOS)
    lm = KnownLM(table)

    report = harness.evaluate(lm, dataclasses.replace(SHIPPED, tasks=["ta_pref"], limit=0), task_dir)

    # chosen wins on the sum in pairs 2 and 4; per character (answer + 11) also in pair 3: -9/19 > -8/13
    assert report == {"ta_pref": {"acc": 0.5, "acc_norm": 0.75, "samples": 4}}
    assert {context for context, _ in lm.requests} == {harness.preference_doc(r, chatml, BOS)["context"] for r in rows}
    assert sorted(continuation for _, continuation in lm.requests) == sorted(table)  # nothing between the two

    limited = harness.evaluate(KnownLM(table), dataclasses.replace(SHIPPED, tasks=["ta_pref"], limit=2), task_dir)
    assert limited["ta_pref"]["samples"] == 2


def test_summary_keeps_values_drops_errors_and_names_other_filters() -> None:
    results = {
        "ta_pref": {"alias": "ta_pref", "acc,none": 0.123456, "acc_stderr,none": "N/A", "acc_norm,none": 1},
        "gsm8k": {"exact_match,strict-match": 0.25, "exact_match_stderr,strict-match": 0.01, "sample_len": 9},
    }
    n_samples = {"ta_pref": {"original": 22, "effective": 8}, "gsm8k": {"original": 9, "effective": 9}}
    assert harness.summarize(results, n_samples) == {
        "gsm8k": {"exact_match,strict-match": 0.25, "samples": 9},
        "ta_pref": {"acc": 0.1235, "acc_norm": 1.0, "samples": 8},
    }


@pytest.mark.parametrize("key", ["artifacts", "tasks"])
def test_an_empty_list_is_a_params_error(tmp_path: Path, key: str) -> None:
    with pytest.raises(ParamsError, match=f"harness.{key}: empty"):
        load_params(write_params(tmp_path, harness={key: []}))


@pytest.mark.parametrize("generated", [1, 0])
def test_the_continuation_ends_where_the_prompt_does_whether_or_not_a_token_was_generated(generated: int) -> None:
    """The server's report: the prompt's tokens after the BOS, then the one generated token, or none when the
    model's first pick is a stop token (a chat model after its end-of-turn picks one). The continuation's two
    tokens are the last two of the prompt either way."""
    from ta.eval.llama_server_lm import LlamaServerLM

    prompt = [None, -0.5, -1.0, -2.0, -4.0]  # context tokens, then the continuation's -2.0 and -4.0
    report = prompt + [-0.1] * generated
    reply = {
        "usage": {"prompt_tokens": 6, "completion_tokens": generated},
        "choices": [{"logprobs": {"token_logprobs": report, "top_logprobs": [{"x": -0.1}] * len(report)}}],
    }
    lm = LlamaServerLM("http://127.0.0.1:1/v1", "ta-lora", None, (1, BOS))
    lm._post = lambda url, body: reply  # the server's side is tests below (a real llama.cpp server)
    assert lm._score(BOS + "context and continuation", 6, [7, 8]) == (-6.0, False)


# ------------------------------------------------------------------------------ on the pipeline's artifacts


def continuation_logprob(logprobs: list[float], n_context: int) -> float:
    """Sum of log p(token i | tokens before) over the continuation; logprobs[i - 1] is token i's."""
    return sum(logprobs[n_context - 1 :])


@pytest.fixture(scope="module")
def scored_pairs(pipeline_repo: Path, merged_dir: Path, q4_gguf: Path) -> SimpleNamespace:
    """Every held-out pair as the stage builds it, each answer's log-likelihood computed here: by transformers
    (fp32) on the merged model and by llama.cpp on the q4_k_m GGUF, on the same token ids."""
    import torch
    from transformers import AutoModelForCausalLM

    from ta import models
    from ta.data.io import read_jsonl
    from ta.eval import metrics
    from ta.export.llama_cpp import open_gguf

    tokenizer = models.load_tokenizer(merged_dir)
    bos_id, bos_text = harness.gguf_bos(q4_gguf)

    def render(messages: list[dict[str, str]], add_generation_prompt: bool) -> str:
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)

    docs = [
        harness.preference_doc(row, render, bos_text)
        for row in read_jsonl(pipeline_repo / "data/prepared/pref_eval.jsonl")
    ]
    model = AutoModelForCausalLM.from_pretrained(merged_dir, dtype=torch.float32).eval()
    llm = open_gguf(q4_gguf, 1024, 1, logits_all=True)
    hf, gguf, encoded = [], [], []
    for doc in docs:
        context_ids = tokenizer(doc["context"], add_special_tokens=False)["input_ids"]
        assert context_ids[0] == bos_id
        hf_row, gguf_row = [], []
        for choice in doc["choices"]:
            ids = tokenizer(doc["context"] + choice, add_special_tokens=False)["input_ids"]
            assert ids[: len(context_ids)] == context_ids  # the answer starts on a token boundary
            encoded.append((doc["context"], choice, len(ids) - len(context_ids)))
            with torch.no_grad():
                logits = model(torch.tensor([ids])).logits[0, :-1]
            hf_lp = torch.log_softmax(logits, dim=-1).gather(1, torch.tensor(ids[1:])[:, None])[:, 0].tolist()
            hf_row.append(continuation_logprob(hf_lp, len(context_ids)))
            llm.reset()
            llm.eval(ids)
            gguf_lp = metrics.next_token_logprobs(llm.scores[: len(ids) - 1], ids[1:])
            gguf_row.append(continuation_logprob(gguf_lp, len(context_ids)))
        hf.append(hf_row)
        gguf.append(gguf_row)
    llm.close()
    return SimpleNamespace(docs=docs, hf=hf, gguf=gguf, bos=(bos_id, bos_text))


@pytest.fixture(scope="module")
def harness_repo(pipeline_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The pipeline's results in a clone, with `harness.enabled: true` and `dvc repro` run: only harness runs."""
    assert json.loads((pipeline_repo / "metrics/harness.json").read_text(encoding="utf-8")) == {}  # off by default
    clone = clone_with_results(pipeline_repo, tmp_path_factory.mktemp("harness") / "repo")
    apply_overrides(clone / "params.yaml", {"harness": {"enabled": True}})
    result = run([DVC, "repro"], cwd=clone)
    assert ran_stages(result.stdout) == ["harness"], result.stdout
    return clone


def accuracy(rows: list[list[float]]) -> float:
    return round(sum(chosen > rejected for chosen, rejected in rows) / len(rows), 4)


def test_stage_results_are_the_share_of_pairs_whose_chosen_answer_is_likelier(
    harness_repo: Path, scored_pairs: SimpleNamespace
) -> None:
    report = json.loads((harness_repo / "metrics/harness.json").read_text(encoding="utf-8"))
    n = len(scored_pairs.docs)
    assert set(report) == {"merged", "gguf_q4_k_m"}
    assert report["merged"]["ta_pref"]["samples"] == report["gguf_q4_k_m"]["ta_pref"]["samples"] == n
    assert report["merged"]["ta_pref"]["acc"] == accuracy(scored_pairs.hf)
    assert report["gguf_q4_k_m"]["ta_pref"]["acc"] == accuracy(scored_pairs.gguf)
    assert abs(report["gguf_q4_k_m"]["ta_pref"]["acc"] - report["merged"]["ta_pref"]["acc"]) <= 2 / n  # q4_k_m
    for artifact, rows in (("merged", scored_pairs.hf), ("gguf_q4_k_m", scored_pairs.gguf)):
        per_char = [
            [lp / len(choice) for lp, choice in zip(row, doc["choices"], strict=True)]
            for row, doc in zip(rows, scored_pairs.docs, strict=True)
        ]
        assert report[artifact]["ta_pref"]["acc_norm"] == accuracy(per_char)


def test_server_model_scores_what_llama_cpp_scores_directly(
    llama_server: SimpleNamespace, scored_pairs: SimpleNamespace
) -> None:
    from ta.eval.llama_server_lm import LlamaServerLM

    lm = LlamaServerLM(llama_server.base_url, "ta-lora", llama_server.key, scored_pairs.bos)
    docs = scored_pairs.docs[:3]
    requests = [SimpleNamespace(args=(doc["context"], choice)) for doc in docs for choice in doc["choices"]]
    got = [logprob for logprob, _ in lm.loglikelihood(requests, disable_tqdm=True)]
    expected = [logprob for row in scored_pairs.gguf[:3] for logprob in row]
    assert got == pytest.approx(expected, rel=1e-3, abs=1e-3)
    assert not any(math.isclose(g, 0.0) for g in got)

    # a context without the BOS (an lm-eval task's own) gets it from the model: the same score
    without_bos = SimpleNamespace(args=(docs[0]["context"].removeprefix(BOS), docs[0]["choices"][0]))
    assert lm.loglikelihood([without_bos], disable_tqdm=True)[0][0] == pytest.approx(got[0], abs=1e-4)

    nobody = LlamaServerLM(llama_server.base_url, "ta-lora", "wrong-key", scored_pairs.bos)
    with pytest.raises(EvalError, match="HTTP 401"):
        nobody.loglikelihood(requests[:1], disable_tqdm=True)
