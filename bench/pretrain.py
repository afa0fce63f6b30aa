"""Benchmark `pretrain`: what the tiny base's pretraining recipe buys per second of `base`.

Reads  params.yaml (base.tiny, prepare) of this checkout; <workspace>/data/raw (the rows base pretrains on, as
       the stage reads them) and <workspace>/data/prepared/sft_eval.jsonl (held-out conversations)

Variants, each a whole `build_tiny` (tokenizer, corpus, pretraining) into a temporary folder, with the params'
model shape, learning rate, batch and seed:
- `now`: ta/train/tiny.py's RECIPE (warmup-stable-decay schedule, Adam beta2 0.95) at the params' steps;
- `cosine`: the recipe before it (cosine schedule, beta2 0.999) at the same steps;
- `now, 400 steps` and `cosine, 400 steps`: both at the budget before this recipe.
Quality is the base's held-out perplexity: every token of the eval conversations' user and assistant text, a
conversation at a time (at most 512 tokens). The corpus the tokenizer is trained on grows with the steps, so
perplexities compare recipes at one step count exactly and across step counts roughly. A build is deterministic
(same seed): the rounds repeat it for its seconds. The builds run with this process's kernels, not the
`reproducibility` params a stage applies, so a variant's perplexity differs by a few percent from the same
recipe built by `base`; the variants compare side by side under the same kernels.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.report import REPO, Options, Result, alternate, median, table
from ta import paths


def held_out_perplexity(model_dir: Path, conversations: list[list[dict[str, str]]]) -> float:
    import torch
    from transformers import AutoModelForCausalLM

    from ta.train.tiny import hf_tokenizer

    tokenizer = hf_tokenizer(model_dir / "tokenizer.model")
    model = AutoModelForCausalLM.from_pretrained(str(model_dir)).eval()
    nll, tokens = 0.0, 0
    with torch.no_grad():
        for turns in conversations:
            text = "\n".join(turn["content"] for turn in turns if turn["role"] != "system")
            ids = torch.tensor([tokenizer(text, add_special_tokens=False)["input_ids"][:512]])
            if ids.shape[1] < 2:
                continue
            nll += model(input_ids=ids, labels=ids).loss.item() * (ids.shape[1] - 1)
            tokens += ids.shape[1] - 1
    return math.exp(nll / tokens)


def run(options: Options) -> Result:
    from ta.config import load_params
    from ta.data.pretrain import pretrain_rows
    from ta.train.tiny import COSINE, RECIPE, build_tiny

    project = load_params(REPO / paths.PARAMS_FILE)
    cfg = project.base.tiny
    if options.smoke:
        cfg = dataclasses.replace(cfg, pretrain_steps=3, pretrain_batch_size=2, pretrain_seq_len=32)
        variants = {"now": (cfg, RECIPE), "cosine": (cfg, COSINE)}
    else:
        longer = dataclasses.replace(cfg, pretrain_steps=400)
        variants = {
            "now": (cfg, RECIPE),
            "cosine": (cfg, COSINE),
            "now, 400 steps": (longer, RECIPE),
            "cosine, 400 steps": (longer, COSINE),
        }
    with contextlib.chdir(options.workspace), tempfile.TemporaryDirectory(prefix="bench-pretrain-") as tmp:
        rows = pretrain_rows(project.prepare)
        with paths.SFT_EVAL.open(encoding="utf-8") as f:
            conversations = [json.loads(line)["messages"] for line in f if line.strip()]
        if options.smoke:
            conversations = conversations[:4]

        def run_once(name: str, round_: int) -> dict[str, Any]:
            variant_cfg, recipe = variants[name]
            out = Path(tmp) / f"{name}-{round_}".replace(" ", "").replace(",", "")
            started = time.perf_counter()
            build_tiny(variant_cfg, project.base.seed, rows, out, recipe)
            seconds = time.perf_counter() - started
            return {"seconds": seconds, "perplexity": held_out_perplexity(out, conversations)}

        runs = alternate(list(variants), options.repeat, run_once)
    rows_md = []
    for name, rounds in runs.items():
        variant_cfg, recipe = variants[name]
        schedule = f"{recipe.schedule} (decay {recipe.decay_share:.0%})" if recipe.decay_share else recipe.schedule
        rows_md.append(
            (
                name,
                str(variant_cfg.pretrain_steps),
                f"{schedule}, β2 {recipe.adam_beta2}",
                f"**{median(r['perplexity'] for r in rounds):.2f}**",
                f"{median(r['seconds'] for r in rounds):.1f}",
                ", ".join(f"{r['seconds']:.1f}" for r in rounds),
            )
        )
    markdown = (
        f"Model: the tiny base (params.yaml base.tiny: hidden {cfg.hidden_size}, {cfg.num_hidden_layers} layers, "
        f"vocabulary {cfg.vocab_size}), lr {cfg.pretrain_lr}, batches of {cfg.pretrain_batch_size} × "
        f"{cfg.pretrain_seq_len} tokens; held-out perplexity on {len(conversations)} eval conversations; "
        f"{options.repeat} alternating rounds, medians.\n\n"
        + table(("variant", "steps", "recipe", "held-out perplexity", "seconds to build", "seconds per round"), rows_md)
    )
    return Result(markdown, {name: rounds for name, rounds in runs.items()})
