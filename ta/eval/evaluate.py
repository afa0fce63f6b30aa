"""eval: every artifact of the chain measured on the same held-out data.

Every runtime scores the SAME token ids: the base tokenizer renders each conversation with its chat
template and tokenizes it once; transformers and llama.cpp then both get those ids, so perplexities of
HF and GGUF artifacts are comparable and the q4_k_m/f16 ratio measures quantization alone.
Metric definitions are in ta/eval/metrics.py, the runtimes in ta/eval/runtimes.py.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from typing import Any

from ta import models, paths
from ta.base_model import read_base_ref
from ta.config import Eval
from ta.data.io import read_jsonl
from ta.errors import EvalError, GateFailed, MissingInputError
from ta.eval import gates, judge, metrics, outputs
from ta.eval.gates import GateVerdict
from ta.eval.results import ArtifactResult, HeldOut, PreferenceItem, TaskItem
from ta.eval.runtimes import (
    HFRuntime,
    LlamaCppRuntime,
    Runtime,
    encode_conversation,
    encode_prompt,
    scored_logprobs,
)

log = logging.getLogger("eval")

ARTIFACTS = {  # name -> (how it is loaded, path); the order is the order of the report
    "base": ("base", paths.BASE_DIR),  # base.json says where the weights are (models/base for tiny)
    "sft": ("peft", paths.SFT_DIR),
    "dpo": ("peft", paths.DPO_DIR),
    "merged": ("merged", paths.MERGED_DIR),
    "gguf_f16": ("llama_cpp", paths.gguf_file("f16")),
    "gguf_q4_k_m": ("llama_cpp", paths.gguf_file("q4_k_m")),
}
END_TOKENS = ("<|im_end|>", "<|endoftext|>")  # ChatML turn end and document end: both stop generation


def load_runtimes(params: Eval, n_ctx: int, pad_id: int) -> Iterator[tuple[str, Runtime]]:
    """Yield (artifact, runtime) one at a time, in ARTIFACTS order; a model is freed before the next one loads
    (the caller drops its runtime too). The base is loaded once for base, sft and dpo: scored bare first, then
    the adapters are attached to it in turn (PEFT keeps both; `set_adapter` switches), so a 7B base is not
    loaded three times. Transformers models run in `eval.precision` on the GPU when there is one."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    threads = torch.get_num_threads()  # reproducibility.threads, set by the stage (llama.cpp's count too)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    load = {"dtype": models.torch_dtype(params.precision), "attn_implementation": params.attn_implementation}
    base_model, peft_model = None, None
    for name in [name for name in ARTIFACTS if name in params.artifacts]:
        kind, path = ARTIFACTS[name]
        if kind == "peft" and not (path / "adapter_config.json").is_file():
            kind = "merged"  # sft.method: full — models/sft and models/dpo are whole models
        if kind not in ("base", "peft") and base_model is not None:
            base_model, peft_model = None, None  # the base and its adapters are done with
            free_memory()
        if kind == "llama_cpp":
            runtime = LlamaCppRuntime(path, n_ctx, threads)
            yield name, runtime
            runtime.llm.close()  # now, not in __del__ at interpreter exit (which logs a TypeError)
            continue
        if kind == "merged":
            merged_model = AutoModelForCausalLM.from_pretrained(path, device_map=device, **load)
            yield name, HFRuntime(merged_model, pad_id, params.batch_size)
            del merged_model
            free_memory()
            continue
        base_model = base_model or models.load_base_model(read_base_ref(), device_map=device, **load)
        if kind == "base":
            yield name, HFRuntime(base_model, pad_id, params.batch_size)
            continue
        if peft_model is None:
            peft_model = PeftModel.from_pretrained(base_model, str(path), adapter_name=name)
        else:
            peft_model.load_adapter(str(path), adapter_name=name)
        peft_model.set_adapter(name)
        yield name, HFRuntime(peft_model, pad_id, params.batch_size)


def free_memory() -> None:
    """Return a dropped model's memory now (the CUDA caching allocator keeps it otherwise)."""
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# ---------------------------------------------------------------------------------------- evaluation


def select_task_items(rows: list[dict[str, Any]], n: int) -> list[TaskItem]:
    """Up to n held-out questions, alternating drill (final answer) and open ones so both are scored."""
    items = [TaskItem(row["messages"][:-1], row["messages"][-1]["content"]) for row in rows]
    drill = [item for item in items if metrics.is_drill_reference(item.reference)]
    open_ = [item for item in items if not metrics.is_drill_reference(item.reference)]
    chosen = []
    while len(chosen) < n and (drill or open_):
        for group in (drill, open_):
            if group and len(chosen) < n:
                chosen.append(group.pop(0))
    return chosen


def load_held_out(tokenizer: Any, params: Eval, system_prompt: str) -> HeldOut:
    sft_rows = read_jsonl(paths.SFT_EVAL)[: params.max_samples]
    pref_rows = read_jsonl(paths.PREF_EVAL)[: params.max_samples]
    if not sft_rows or not pref_rows:
        raise EvalError(
            f"{paths.SFT_EVAL if not sft_rows else paths.PREF_EVAL}: no held-out rows (prepare.eval_fraction?)"
        )
    tasks = select_task_items(read_jsonl(paths.SFT_EVAL), params.max_generations)
    system = [{"role": "system", "content": system_prompt}] if system_prompt else []
    samples = [system + [{"role": "user", "content": prompt}] for prompt in params.sample_prompts]
    return HeldOut(
        conversations=[encode_conversation(tokenizer, row["messages"]) for row in sft_rows],
        tasks=tasks,
        task_prompt_ids=[encode_prompt(tokenizer, item.prompt) for item in tasks],
        preferences=[
            PreferenceItem(
                encode_conversation(tokenizer, row["prompt"] + row["chosen"]),
                encode_conversation(tokenizer, row["prompt"] + row["rejected"]),
            )
            for row in pref_rows
        ],
        sample_prompts=list(params.sample_prompts),
        sample_prompt_ids=[encode_prompt(tokenizer, messages) for messages in samples],
    )


def evaluate(
    runtime: Runtime, held: HeldOut, tokenizer: Any, params: Eval, stop_ids: set[int], refusal_patterns: list[str]
) -> ArtifactResult:
    per_conversation = scored_logprobs(runtime, held.conversations)
    token_logprobs = [lp for logprobs in per_conversation for lp in logprobs]
    chosen = scored_logprobs(runtime, [pair.chosen for pair in held.preferences])
    rejected = scored_logprobs(runtime, [pair.rejected for pair in held.preferences])
    margins = [metrics.length_normalized_margin(c, r) for c, r in zip(chosen, rejected, strict=True)]
    sums = [(sum(c), sum(r)) for c, r in zip(chosen, rejected, strict=True)]

    prompts = held.task_prompt_ids + held.sample_prompt_ids  # one generation pass (one batch for HF)
    generated = runtime.greedy(prompts, params.max_new_tokens, stop_ids) if prompts else []
    decoded = [tokenizer.decode(ids, skip_special_tokens=True).strip() for ids in generated]
    task_answers, sample_answers = decoded[: len(held.task_prompt_ids)], decoded[len(held.task_prompt_ids) :]
    scores = [metrics.task_score(a, item.reference) for a, item in zip(task_answers, held.tasks, strict=True)]
    return ArtifactResult(
        perplexity=metrics.perplexity(token_logprobs),
        task=metrics.task_summary(scores),
        preference_sums=sums,
        preference_accuracy=metrics.preference_accuracy(margins),
        refusal_rate=metrics.refusal_rate(decoded, refusal_patterns) if decoded else 0.0,  # all prompts are benign
        task_answers=task_answers,
        task_scores=scores,
        sample_answers=sample_answers,
        nll_sums=[-sum(logprobs) for logprobs in per_conversation],
        token_counts=[len(logprobs) for logprobs in per_conversation],
        preference_margins=margins,
    )


def check_inputs(params: Eval) -> None:
    """Every artifact to measure and both held-out splits are there."""
    for name in params.artifacts:
        path = ARTIFACTS[name][1]
        if not path.exists():
            raise MissingInputError(
                f"{path}: missing artifact {name!r}; run `dvc repro` or drop it from eval.artifacts"
            )
    for path in (paths.SFT_EVAL, paths.PREF_EVAL):
        if not path.exists():
            raise MissingInputError(f"{path}: missing; run `dvc repro prepare` first")


def stop_token_ids(tokenizer: Any) -> set[int]:
    ids = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    vocab = tokenizer.get_vocab()
    return ids | {vocab[token] for token in END_TOKENS if token in vocab}


def measure(
    params: Eval, held: HeldOut, tokenizer: Any, refusal_patterns: list[str], timing: dict[str, Any]
) -> dict[str, ArtifactResult]:
    """Every artifact in `eval.artifacts` on the same held-out ids, one model in memory at a time; `timing` gets
    the threads and each artifact's seconds (loading it; scoring and generating)."""
    stop_ids = stop_token_ids(tokenizer)
    scored = held.conversations + [p.chosen for p in held.preferences] + [p.rejected for p in held.preferences]
    longest_prompt = max(len(ids) for ids in held.task_prompt_ids + held.sample_prompt_ids + [[]])
    n_ctx = max(max(len(e.ids) for e in scored), longest_prompt + params.max_new_tokens) + 8
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else min(stop_ids)
    results: dict[str, ArtifactResult] = {}
    timing.update(threads=_threads(), seconds={})
    runtimes = load_runtimes(params, n_ctx, pad_id)
    while True:
        started = time.perf_counter()
        name, runtime = next(runtimes, (None, None))
        if name is None or runtime is None:
            break
        loaded = time.perf_counter()
        results[name] = result = evaluate(runtime, held, tokenizer, params, stop_ids, refusal_patterns)
        del runtime  # so that the next model loads into freed memory
        done = time.perf_counter()
        timing["seconds"][name] = {"load": round(loaded - started, 2), "measure": round(done - loaded, 2)}
        log.info("%s: perplexity %.3f, task %s (%.1f s)", name, result.perplexity, result.task["task"], done - started)
    return results


def _threads() -> int:
    import torch

    return torch.get_num_threads()


def run(params: Eval, system_prompt: str, refusal_patterns: list[str]) -> tuple[dict[str, Any], list[GateVerdict]]:
    """Measure, write every output, and return eval.json's report and the gates' verdicts (for `apply_gates`)."""
    check_inputs(params)
    tokenizer = models.load_tokenizer(paths.BASE_DIR)
    held = load_held_out(tokenizer, params, system_prompt)
    timing: dict[str, Any] = {}
    results = measure(params, held, tokenizer, refusal_patterns, timing)
    sizes = {name: ARTIFACTS[name][1].stat().st_size for name in results if name.startswith("gguf_")}
    report = outputs.build_report(results, sizes)
    if params.judge_enabled:
        judged = {name: judge.judge_score(params, held.tasks, result.task_answers) for name, result in results.items()}
        report["judge"] = {name: outputs.round_or_none(score) for name, (score, _) in judged.items()}
        report["judge_unscored"] = {name: unscored for name, (_, unscored) in judged.items()}
    interval_report = outputs.build_intervals(results, params)
    verdicts = gates.gate_verdicts(report, interval_report, params)
    outputs.write_outputs(report, interval_report, verdicts, results, held, params)
    outputs.write_json(paths.EVAL_TIMING, timing)
    return report, verdicts


def apply_gates(verdicts: list[GateVerdict], params: Eval) -> None:
    """Warn about every gate not passed; with `eval.gate_action: fail`, stop on those that fail
    (`eval.gate_evidence` decides which: ta/eval/gates.py)."""
    for verdict in verdicts:
        if verdict.status != "pass":
            log.warning("%s", verdict.message)
    failures = [verdict.message for verdict in verdicts if verdict.fails]
    if failures and params.gate_action == "fail":
        raise GateFailed(f"{len(failures)} eval gate(s) failed (eval.gate_action: fail): " + "; ".join(failures))
