"""Benchmark `runtime`: how fast the exported model answers, q4_k_m GGUF vs f16 GGUF vs the merged HF model.

Reads  <workspace>/models/gguf/teachingassistant-{q4_k_m,f16}.gguf, models/merged, data/prepared/sft_eval.jsonl

The same held-out questions (rendered with the merged model's chat template, tokenized once, so every
runtime sees the same ids) are answered greedily, each with exactly max_new_tokens new tokens (end tokens do
not stop it), by llama.cpp in process (llama_cpp.Llama, as ta/export/llama_cpp.py opens a GGUF; n_threads =
cores, or --threads) and by transformers' generate (fp32, as many torch threads). Prompt processing is the
prompt's tokens over the time to the first new token; generation is the remaining new tokens over the time after it.
Every runtime is loaded once and warmed up by one untimed answer; within a round they take turns prompt by
prompt (so a slow phase of a shared machine falls on all of them), and each round's rates are reported.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

from bench.report import Options, Result, median, ratio, rotated, table
from ta import paths

log = logging.getLogger("bench.runtime")

VARIANTS = ("gguf q4_k_m", "gguf f16", "hf merged")


def held_out_prompts(workspace: Path, tokenizer: Any, count: int) -> list[list[int]]:
    """The first `count` held-out conversations, cut before their last answer, as prompt ids."""
    prompts = []
    with (workspace / paths.SFT_EVAL).open(encoding="utf-8") as f:
        for line in f:
            messages = json.loads(line)["messages"]
            text = tokenizer.apply_chat_template(messages[:-1], tokenize=False, add_generation_prompt=True)
            prompts.append(list(tokenizer(text, add_special_tokens=False)["input_ids"]))
            if len(prompts) == count:
                break
    return prompts


class LlamaCppAnswerer:
    def __init__(self, path: Path, n_ctx: int, threads: int) -> None:
        from ta.export.llama_cpp import open_gguf

        self.llm = open_gguf(path, n_ctx, threads)

    def answer(self, prompt: list[int], new_tokens: int) -> tuple[float, float]:
        """(seconds to the first new token, seconds for the rest)."""
        self.llm.reset()  # else generate() reuses the KV cache of the last identical prompt
        started = time.perf_counter()
        first = 0.0
        for count, _ in enumerate(self.llm.generate(prompt, temp=0.0, top_k=1, repeat_penalty=1.0, reset=True), 1):
            if count == 1:
                first = time.perf_counter()
            if count == new_tokens:
                break
        return first - started, time.perf_counter() - first


class HFAnswerer:
    def __init__(self, model_dir: Path) -> None:
        from transformers import AutoModelForCausalLM

        self.model = AutoModelForCausalLM.from_pretrained(model_dir, dtype="float32").eval()

    def answer(self, prompt: list[int], new_tokens: int) -> tuple[float, float]:
        import torch
        from transformers import GenerationConfig

        class Clock:  # generate() hands a streamer the prompt first, then each new token as it is chosen
            def __init__(self) -> None:
                self.times: list[float] = []

            def put(self, value: Any) -> None:
                self.times.append(time.perf_counter())

            def end(self) -> None:
                pass

        pad_id = self.model.generation_config.pad_token_id
        config = GenerationConfig(
            max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False, pad_token_id=pad_id
        )
        clock = Clock()
        started = time.perf_counter()
        with torch.no_grad():
            self.model.generate(input_ids=torch.tensor([prompt]), generation_config=config, streamer=clock)
        return clock.times[1] - started, clock.times[-1] - clock.times[1]


def run(options: Options) -> Result:
    import os

    import torch

    from ta.models import load_tokenizer

    workspace = options.workspace
    threads = options.extra.get("threads") or len(os.sched_getaffinity(0))
    new_tokens = options.extra.get("max_new_tokens") or (8 if options.smoke else 64)
    tokenizer = load_tokenizer(workspace / paths.MERGED_DIR)
    prompts = held_out_prompts(workspace, tokenizer, options.extra.get("prompts") or (1 if options.smoke else 8))
    torch.set_num_threads(threads)
    files = {
        "gguf q4_k_m": workspace / paths.GGUF_DIR / f"{paths.GGUF_STEM}-q4_k_m.gguf",
        "gguf f16": workspace / paths.GGUF_DIR / f"{paths.GGUF_STEM}-f16.gguf",
        "hf merged": workspace / paths.MERGED_DIR,
    }
    n_ctx = max(len(p) for p in prompts) + new_tokens + 8
    answerers, load_s = {}, {}
    for name, path in files.items():
        started = time.perf_counter()
        answerers[name] = HFAnswerer(path) if name == "hf merged" else LlamaCppAnswerer(path, n_ctx, threads)
        load_s[name] = time.perf_counter() - started
        answerers[name].answer(prompts[0], min(new_tokens, 8))  # warm-up, untimed
    runs = [measure_round(answerers, prompts, new_tokens, round_) for round_ in range(options.repeat)]
    for answerer in answerers.values():
        if isinstance(answerer, LlamaCppAnswerer):
            answerer.llm.close()
    by_variant = {name: [r[name] for r in runs] for name in VARIANTS}
    medians = {name: {key: median(r[key] for r in rounds) for key in RATES} for name, rounds in by_variant.items()}
    sizes = {name: _size_mib(path) for name, path in files.items()}
    intro = (
        f"{len(prompts)} held-out questions ({sum(len(p) for p in prompts)} prompt tokens), {new_tokens} new "
        f"tokens each, greedy, {threads} threads; the runtimes take turns prompt by prompt, {options.repeat} "
        "rounds, medians of the rounds' rates.\n\n"
    )
    figures = {
        "prompts": len(prompts),
        "prompt_tokens": sum(len(p) for p in prompts),
        "new_tokens": new_tokens,
        "threads": threads,
        "load_s": load_s,
        "medians": medians,
        "rounds": by_variant,
    }
    return Result(intro + markdown(medians, by_variant, sizes, load_s), figures)


RATES = ("first_token_ms", "prompt_tok_s", "generation_tok_s")


def measure_round(answerers: dict[str, Any], prompts: list[list[int]], new_tokens: int, round_: int) -> dict:
    """Every runtime answers every prompt, taking turns prompt by prompt (each starting in turn, so a slow
    phase of the machine falls on all of them); their rates over the round."""
    timings: dict[str, list[tuple[float, float]]] = {name: [] for name in VARIANTS}
    for i, prompt in enumerate(prompts):
        for name in rotated(VARIANTS, round_ + i):
            timings[name].append(answerers[name].answer(prompt, new_tokens))
    rates = {}
    for name, answers in timings.items():
        first_s, rest_s = sum(t[0] for t in answers), sum(t[1] for t in answers)
        rates[name] = {
            "first_token_ms": 1000 * first_s / len(prompts),
            "prompt_tok_s": sum(len(p) for p in prompts) / first_s,
            "generation_tok_s": len(prompts) * (new_tokens - 1) / rest_s,
        }
        log.info("round %d %s: %s", round_, name, {k: round(v, 1) for k, v in rates[name].items()})
    return rates


def markdown(medians: dict, rounds: dict, sizes: dict[str, float], load_s: dict[str, float]) -> str:
    hf = medians["hf merged"]
    rows = [
        (
            name,
            f"{sizes[name]:.2f}",
            f"{load_s[name]:.2f}",
            f"{m['first_token_ms']:.1f}",
            f"**{m['prompt_tok_s']:,.0f}**",
            f"{ratio(m['prompt_tok_s'], hf['prompt_tok_s']):.2f}×",
            f"**{m['generation_tok_s']:,.1f}**",
            f"{ratio(m['generation_tok_s'], hf['generation_tok_s']):.2f}×",
            ", ".join(f"{r['generation_tok_s']:.0f}" for r in rounds[name]),
        )
        for name, m in medians.items()
    ]
    columns = (
        "runtime",
        "size (MiB)",
        "load (s)",
        "first token (ms)",
        "prompt tok/s",
        "vs HF",
        "generation tok/s",
        "vs HF",
        "generation tok/s per round",
    )
    q4, f16 = medians["gguf q4_k_m"], medians["gguf f16"]
    return (
        table(columns, rows)
        + f"\nq4_k_m vs f16: prompt {ratio(q4['prompt_tok_s'], f16['prompt_tok_s']):.2f}×, generation "
        f"{ratio(q4['generation_tok_s'], f16['generation_tok_s']):.2f}×.\n"
    )


def _size_mib(path: Path) -> float:
    files = [path] if path.is_file() else [p for p in path.iterdir() if p.suffix == ".safetensors"]
    return sum(p.stat().st_size for p in files) / 2**20
