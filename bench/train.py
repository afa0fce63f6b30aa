"""Benchmark `train`: how much of an SFT step's work is useful, ours vs a plain TRL SFTTrainer.

Reads  params.yaml (lr, sft) of this checkout; <workspace>/data/prepared/sft_{train,eval}.jsonl; a model:
       --train-model DIR, else a Qwen2.5-shaped one built offline by tools/qwen_shaped.py (the tests' shape:
       2 layers, hidden 256, Qwen2's 151,936-token vocabulary) — the smoke run trains <workspace>/models/base

Variants, each trained for the same steps on the same conversations with the same batch size, max length,
learning rate, seed and LoRA adapter:
- `ours`: the trainer as stages/sft.py builds it (ta/train/sft.py's load_model, sft_config and lora_config,
  the training chat template) with params.yaml's sft defaults; only checkpoints and early stopping are off;
- `ours padding_free` and `ours packing`: the same with sft.padding_free / sft.packing set;
- `plain TRL`: SFTConfig's defaults (TRL's own: bf16 autocast, gradient checkpointing, loss on every token)
  with the held-equal knobs above, on the tokenizer's own chat template.
Useful tokens are the assistant tokens of the conversations in a batch (counted from the conversations
themselves, the same way for every variant, not from the trainer's labels); pad share is the pad tokens'
share of the positions a batch feeds the model; loss tokens are the labels the loss is taken on. Timed: from
the end of the first step to the end of the last (data, forward, backward, optimizer; no evaluation).
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import json
import logging
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.report import REPO, Options, Result, alternate, median, ratio, table
from ta import paths

log = logging.getLogger("bench.train")

VARIANTS = {  # name: sft params changed from params.yaml's (None: the plain TRL trainer)
    "ours": {},
    "ours padding_free": {"padding_free": True},
    "ours packing": {"packing": True},
    "plain TRL": None,
}


class AssistantTokens:
    """Assistant tokens of a tokenized conversation, looked up by its ids (or a truncated prefix of them)."""

    def __init__(self, tokenizer: Any, conversations: list[list[dict[str, str]]]) -> None:
        self.known: dict[tuple[int, ...], list[int]] = {}
        for messages in conversations:
            encoded = tokenizer.apply_chat_template(
                messages, tokenize=True, return_dict=True, return_assistant_tokens_mask=True
            )
            self.known[tuple(encoded["input_ids"])] = list(encoded["assistant_masks"])

    def count(self, ids: list[int]) -> int:
        mask = self.known.get(tuple(ids))
        if mask is not None:
            return sum(mask)
        for full, mask in self.known.items():  # truncated to max_length
            if len(full) > len(ids) and list(full[: len(ids)]) == ids:
                return sum(mask[: len(ids)])
        raise ValueError(f"a batch holds a sequence of {len(ids)} tokens that is no training conversation")


def batch_counts(batch: dict[str, Any], assistant: AssistantTokens) -> dict[str, int]:
    """Positions fed to the model, real (non-pad) tokens, assistant tokens and loss labels of one batch."""
    input_ids = batch["input_ids"]
    if "attention_mask" in batch:  # padded: one row per conversation
        rows = [row[mask.bool()].tolist() for row, mask in zip(input_ids, batch["attention_mask"], strict=True)]
    else:  # padding-free: one flattened row, each conversation starting at position 0
        flat, positions = input_ids[0].tolist(), batch["position_ids"][0].tolist()
        starts = [i for i, p in enumerate(positions) if p == 0] + [len(flat)]
        rows = [flat[a:b] for a, b in zip(starts, starts[1:], strict=False)]
    return {
        "positions": input_ids.numel(),
        "real": sum(len(row) for row in rows),
        "useful": sum(assistant.count(row) for row in rows),
        "loss": int((batch["labels"] != -100).sum()),
        "conversations": len(rows),
    }


def metered(trainer: Any, count: Callable[[dict[str, Any]], dict[str, int]]) -> tuple[list[dict], list[float]]:
    """Count (`count(batch)`) every batch the trainer collates for training and clock every step's end (lists
    filled as it trains)."""
    from transformers import TrainerCallback

    counts: list[dict[str, int]] = []
    step_ends: list[float] = []
    collate = trainer.data_collator

    def counting_collator(examples: list[dict[str, Any]]) -> dict[str, Any]:
        batch = collate(examples)
        if trainer.model.training:  # not the evaluation after the last step
            counts.append(count(batch))
        return batch

    class StepClock(TrainerCallback):
        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            step_ends.append(time.perf_counter())

    trainer.data_collator = counting_collator
    trainer.add_callback(StepClock())
    return counts, step_ends


def timed_totals(counts: list[dict[str, int]], step_ends: list[float]) -> tuple[dict[str, int], float]:
    """Each count summed over steps 2..N (the first pays for warm-up), and the seconds those steps took."""
    timed = counts[1 : len(step_ends)]
    return {key: sum(c[key] for c in timed) for key in timed[0]}, step_ends[-1] - step_ends[0]


def build_ours(model_dir: Path, params: Any, lr: float, rows: list, eval_rows: list, out: Path) -> Any:
    """The trainer as ta/train/sft.py's train() builds it, from its own functions."""
    from datasets import Dataset
    from trl import SFTTrainer

    from ta import chat
    from ta.base_model import BaseModelRef
    from ta.models import load_tokenizer
    from ta.train import sft

    tokenizer = load_tokenizer(model_dir)
    tokenizer.chat_template = chat.training_template(tokenizer, rows[:8])
    return SFTTrainer(
        model=sft.load_model(BaseModelRef(str(model_dir), None, False), params),
        args=sft.sft_config(params, lr, out),
        train_dataset=Dataset.from_list([{"messages": m} for m in rows]),
        eval_dataset=Dataset.from_list([{"messages": m} for m in eval_rows]),
        processing_class=tokenizer,
        peft_config=sft.lora_config(params),
    )


def build_plain(model_dir: Path, params: Any, lr: float, rows: list, out: Path) -> Any:
    """TRL's SFTTrainer with SFTConfig's defaults but for the knobs every variant shares."""
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM
    from trl import SFTConfig, SFTTrainer

    from ta.models import load_tokenizer
    from ta.train import sft

    config = SFTConfig(
        output_dir=str(out),
        max_steps=params.max_steps,
        per_device_train_batch_size=params.per_device_train_batch_size,
        max_length=params.max_seq_len,
        learning_rate=lr,
        seed=params.seed,
        save_strategy="no",
        report_to="none",
        use_cpu=not torch.cuda.is_available(),
    )
    return SFTTrainer(
        model=AutoModelForCausalLM.from_pretrained(model_dir, dtype="float32"),
        args=config,
        train_dataset=Dataset.from_list([{"messages": m} for m in rows]),
        processing_class=load_tokenizer(model_dir),
        peft_config=sft.lora_config(params),
    )


def train_once(name: str, model_dir: Path, params: Any, lr: float, data: dict[str, list], out: Path) -> dict:
    from transformers import set_seed

    from ta.train.fused_head import label_positions_only

    set_seed(params.seed)
    overrides = VARIANTS[name]
    if overrides is None:
        trainer = build_plain(model_dir, params, lr, data["train"], out)
    else:
        trainer = build_ours(model_dir, dataclasses.replace(params, **overrides), lr, data["train"], data["eval"], out)
    counts, step_ends = metered(trainer, lambda batch: batch_counts(batch, data["assistant"]))
    with contextlib.nullcontext() if overrides is None else label_positions_only():  # as ta/train/sft.py trains
        trainer.train()
    total, seconds = timed_totals(counts, step_ends)
    del trainer
    gc.collect()
    result = {
        **total,
        "seconds": seconds,
        "useful_tok_s": total["useful"] / seconds,
        "real_tok_s": total["real"] / seconds,
        "pad_share": 1 - total["real"] / total["positions"],
    }
    log.info("%s: %.1f useful tok/s, pad share %.3f", name, result["useful_tok_s"], result["pad_share"])
    return result


def run(options: Options) -> Result:
    from ta import chat
    from ta.config import load_params
    from ta.models import load_tokenizer
    from ta.train.sft import read_conversations

    project = load_params(REPO / paths.PARAMS_FILE)
    steps = options.extra.get("train_steps") or (2 if options.smoke else 20)
    workspace = options.workspace
    rows = read_conversations(workspace / paths.SFT_TRAIN)
    eval_rows = read_conversations(workspace / paths.SFT_EVAL)[:8]
    batch = 2 if options.smoke else project.sft.per_device_train_batch_size
    if options.smoke:
        rows = rows[: batch * (steps + 1) * 2]
    params = dataclasses.replace(
        project.sft,
        max_steps=steps + 1,  # + the untimed first step
        per_device_train_batch_size=batch,
        save_steps=0,
        early_stopping_patience=0,
        eval_steps=steps + 1,
        logging_steps=steps + 1,
    )
    with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp:
        model_dir = options.extra.get("train_model") or (
            workspace / paths.BASE_DIR if options.smoke else qwen_shaped(Path(tmp) / "qwen2.5-shaped")
        )
        tokenizer = load_tokenizer(model_dir)
        tokenizer.chat_template = chat.training_template(tokenizer, rows[:8])
        data = {"train": rows, "eval": eval_rows, "assistant": AssistantTokens(tokenizer, rows)}
        runs = alternate(
            list(VARIANTS),
            options.repeat,
            lambda name, round_: train_once(name, Path(model_dir), params, project.lr, data, Path(tmp) / "out"),
        )
        shape = json.loads((Path(model_dir) / "config.json").read_text(encoding="utf-8"))  # before tmp goes
    built = not options.smoke and not options.extra.get("train_model")
    name = "Qwen2.5-shaped (tools/qwen_shaped.py)" if built else str(model_dir)
    return report(runs, name, shape, params, steps, options)


def qwen_shaped(out: Path) -> Path:
    from tools import qwen_shaped

    return qwen_shaped.build(out)


def report(
    runs: dict[str, list[dict]], model_name: str, shape: dict, params: Any, steps: int, options: Options
) -> Result:
    medians = {
        name: {key: median(r[key] for r in rounds) for key in ("useful_tok_s", "real_tok_s", "pad_share", "seconds")}
        for name, rounds in runs.items()
    }
    ours = medians["ours"]["useful_tok_s"]
    rows = []
    for name, rounds in runs.items():
        m, last = medians[name], rounds[-1]
        rows.append(
            (
                name,
                f"**{m['useful_tok_s']:,.0f}**",
                f"{ratio(m['useful_tok_s'], ours):.2f}×",
                f"{m['real_tok_s']:,.0f}",
                f"{m['pad_share']:.1%}",
                f"{last['loss'] / last['real']:.0%}",
                f"{last['conversations'] / steps:.1f}",
                f"{m['seconds'] / steps:.2f}",
                ", ".join(f"{r['useful_tok_s']:.0f}" for r in rounds),
            )
        )
    best = max(medians, key=lambda name: medians[name]["useful_tok_s"])
    markdown = (
        f"Model: {model_name}, {shape['num_hidden_layers']} layers, hidden {shape['hidden_size']}, "
        f"vocabulary {shape['vocab_size']:,}; "
        f"LoRA r={params.lora.r} on {params.lora.target_modules}; {steps} timed steps of "
        f"{params.per_device_train_batch_size} (after one untimed), max length {params.max_seq_len}, lr from "
        f"params.yaml; {options.repeat} alternating rounds, medians. Most useful tokens/s: **{best}**.\n\n"
        + table(
            (
                "variant",
                "useful tok/s",
                "vs ours",
                "real tok/s",
                "pad share",
                "loss tokens / real",
                "conversations per step",
                "s per step",
                "useful tok/s per round",
            ),
            rows,
        )
    )
    return Result(markdown, {"steps": steps, "model": model_name, "medians": medians, "rounds": runs})
