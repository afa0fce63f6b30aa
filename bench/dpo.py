"""Benchmark `dpo`: how much of a DPO step's work is useful, ours vs a plain TRL DPOTrainer.

Reads  params.yaml (dpo) of this checkout; <workspace>/data/prepared/pref_train.jsonl, <workspace>/models/base and
       <workspace>/models/sft (the policy both variants start from: the SFT adapter over the base)

Variants, each trained for the same steps on the same pairs with the same batch size, learning rate, beta and
seed, from the same SFT adapter (trainable), with the SFT model as the reference:
- `ours`: the trainer as stages/dpo.py builds it (ta/train/dpo.py's load_policy and dpo_config) with params.yaml's
  dpo defaults; only checkpoints are off;
- `ours, whole batches`: the same with `dpo.split_rows_min_saving: 0`, each batch forwarded whole (TRL's way);
- `plain TRL`: DPOConfig's defaults (TRL's own: gradient checkpointing and bf16 on, max_length 1024) for
  everything the variants do not share.
Useful tokens are the completion tokens (chosen and rejected answers) of a batch, the ones DPO's loss is on; pad
share is the pad tokens' share of the positions fed to the model's decoder (every forward of a step: the
policy's and the reference's, whole batches or ours' row groups). Both variants run in this one process,
so both get what every stage sets up first (ta/allocator.py). Timed: from the end of the first step to the end of
the last.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import logging
import tempfile
from pathlib import Path
from typing import Any

from bench.report import REPO, Options, Result, alternate, median, ratio, table
from bench.train import metered, timed_totals
from ta import paths

log = logging.getLogger("bench.dpo")

VARIANTS = ("ours", "ours, whole batches", "plain TRL")


def batch_counts(batch: dict[str, Any]) -> dict[str, int]:
    """Completion tokens and pairs of one collated batch."""
    return {"useful": int(batch["completion_mask"].sum()), "pairs": batch["input_ids"].shape[0] // 2}


def fed_to_decoder(trainer: Any) -> list[dict[str, int]]:
    """Positions and real (non-pad) tokens fed to the decoder in each training step (a list filled as it trains)."""
    from transformers import TrainerCallback

    steps: list[dict[str, int]] = []
    current = {"positions": 0, "real": 0}
    model = trainer.model.get_base_model() if hasattr(trainer.model, "get_base_model") else trainer.model

    def count(module: Any, args: Any, kwargs: dict[str, Any]) -> None:
        if trainer.model.training:  # not the evaluation after the last step
            current["positions"] += kwargs["input_ids"].numel()
            current["real"] += int(kwargs["attention_mask"].sum())

    class StepEnd(TrainerCallback):
        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            steps.append(dict(current))
            current.update(positions=0, real=0)

    model.base_model.register_forward_pre_hook(count, with_kwargs=True)
    trainer.add_callback(StepEnd())
    return steps


def build(name: str, params: Any, pairs: list[dict], out: Path) -> Any:
    """Ours evaluates as the stage does (once, after the last, timed step) on a few held-out pairs."""
    import torch
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    from ta.base_model import read_base_ref
    from ta.models import load_tokenizer
    from ta.train import dpo

    eval_pairs = None
    split_rows_min_saving = params.split_rows_min_saving if name == "ours" else 0
    if name != "plain TRL":
        config = dpo.dpo_config(params, out)
        eval_pairs = Dataset.from_list(dpo.read_pairs(paths.PREF_EVAL)[:8])
    else:
        config = DPOConfig(
            output_dir=str(out),
            max_steps=params.max_steps,
            per_device_train_batch_size=params.per_device_train_batch_size,
            learning_rate=params.learning_rate,
            beta=params.beta,
            seed=params.seed,
            save_strategy="no",
            report_to="none",
            use_cpu=not torch.cuda.is_available(),
        )
    trainer_class = DPOTrainer if name == "plain TRL" else dpo.trainer_class(split_rows_min_saving)
    return trainer_class(
        model=dpo.load_policy(read_base_ref(), params),
        args=config,
        train_dataset=Dataset.from_list(pairs),
        eval_dataset=eval_pairs,
        processing_class=load_tokenizer(paths.SFT_DIR),
    )


def train_once(name: str, params: Any, pairs: list[dict], out: Path) -> dict[str, float]:
    from transformers import set_seed

    from ta.train.fused_head import label_positions_only

    set_seed(params.seed)
    trainer = build(name, params, pairs, out)
    counts, step_ends = metered(trainer, batch_counts)
    fed = fed_to_decoder(trainer)
    with label_positions_only() if name != "plain TRL" else contextlib.nullcontext():  # as ta/train/dpo.py trains
        trainer.train()
    total, seconds = timed_totals(counts, step_ends)
    total.update(timed_totals(fed, step_ends)[0])
    result = {
        **total,
        "seconds": seconds,
        "useful_tok_s": total["useful"] / seconds,
        "pad_share": 1 - total["real"] / total["positions"],
    }
    log.info("%s: %.1f useful tok/s, pad share %.3f", name, result["useful_tok_s"], result["pad_share"])
    return result


def run(options: Options) -> Result:
    from ta.config import load_params
    from ta.train.dpo import read_pairs

    project = load_params(REPO / paths.PARAMS_FILE)
    steps = options.extra.get("train_steps") or (2 if options.smoke else 20)
    batch = 2 if options.smoke else project.dpo.per_device_train_batch_size
    params = dataclasses.replace(
        project.dpo,
        max_steps=steps + 1,  # + the untimed first step
        per_device_train_batch_size=batch,
        save_steps=0,
        eval_steps=steps + 1,
        logging_steps=steps + 1,
    )
    with contextlib.chdir(options.workspace), tempfile.TemporaryDirectory(prefix="bench-dpo-") as tmp:
        pairs = read_pairs(paths.PREF_TRAIN)[: batch * (steps + 1)]

        def run_once(name: str, _round: int) -> dict[str, float]:
            result = train_once(name, params, pairs, Path(tmp))
            gc.collect()  # the last trainer's model, before the next one loads
            return result

        runs = alternate(list(VARIANTS), options.repeat, run_once)
    medians = {
        name: {key: median(r[key] for r in rounds) for key in ("useful_tok_s", "pad_share", "seconds")}
        for name, rounds in runs.items()
    }
    ours = medians["ours"]["useful_tok_s"]
    rows = [
        (
            name,
            f"**{m['useful_tok_s']:,.0f}**",
            f"{ratio(m['useful_tok_s'], ours):.2f}×",
            f"{m['pad_share']:.1%}",
            f"{m['seconds'] / steps:.2f}",
            ", ".join(f"{r['useful_tok_s']:.0f}" for r in runs[name]),
        )
        for name, m in medians.items()
    ]
    markdown = (
        f"Model: {options.workspace / paths.SFT_DIR} over {options.workspace / paths.BASE_DIR}; {steps} timed steps "
        f"of {batch} pairs (after one untimed), beta {params.beta}, lr {params.learning_rate}; {options.repeat} "
        "alternating rounds, medians.\n\n"
        + table(("variant", "useful tok/s", "vs ours", "pad share", "s per step", "useful tok/s per round"), rows)
    )
    return Result(markdown, {"steps": steps, "medians": medians, "rounds": runs})
