"""Stage `dpo`: Direct Preference Optimization on top of the SFT adapter (TRL DPOTrainer).

Reads  params `dpo`; models/base; models/sft; data/prepared/pref_{train,eval}.jsonl
Writes models/dpo/ (a LoRA adapter over the base: the SFT adapter, further trained), dvclive/dpo/
       (loss, rewards chosen/rejected, margins, accuracies per step)

The reference policy is the SFT model itself, without a second copy of the base weights: given a
PeftModel whose trainable "default" adapter is the SFT adapter, TRL adds a frozen copy of it ("ref")
and switches adapters to compute the reference log-probs.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
from pathlib import Path

from stages.models import copy_tokenizer_files, load_base_model, load_tokenizer, read_base_ref, torch_dtype
from stages.params import Dpo, ParamsError, load_params

log = logging.getLogger("dpo")

SFT_DIR = Path("models/sft")
TRAIN_FILE = Path("data/prepared/pref_train.jsonl")
EVAL_FILE = Path("data/prepared/pref_eval.jsonl")
OUT_DIR = Path("models/dpo")
LIVE_DIR = Path("dvclive/dpo")
CHECKPOINT_DIR = Path("checkpoints/dpo")  # trainer scratch space, outside the DVC output


def read_pairs(path: Path) -> list[dict[str, list[dict[str, str]]]]:
    with path.open(encoding="utf-8") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    return [{k: row[k] for k in ("prompt", "chosen", "rejected")} for row in rows]


def train(params: Dpo, out_dir: Path = OUT_DIR, live_dir: Path = LIVE_DIR) -> dict[str, float]:
    import torch
    from datasets import Dataset
    from peft import PeftModel
    from transformers import set_seed
    from trl import DPOConfig, DPOTrainer

    from stages.tracking import dvclive_callback

    if params.precision == "fp16" and not torch.cuda.is_available():
        raise ParamsError("params.yaml: dpo.precision: fp16 needs a GPU; use fp32 or bf16 on CPU")
    set_seed(params.seed)
    ref = read_base_ref()
    tokenizer = load_tokenizer(SFT_DIR)
    base = load_base_model(ref, torch_dtype(params.precision))
    model = PeftModel.from_pretrained(base, str(SFT_DIR), is_trainable=True)

    config = DPOConfig(
        output_dir=str(CHECKPOINT_DIR),
        beta=params.beta,
        loss_type=params.loss_type,
        learning_rate=params.learning_rate,
        num_train_epochs=params.num_epochs,
        per_device_train_batch_size=params.per_device_train_batch_size,
        per_device_eval_batch_size=params.per_device_train_batch_size,
        gradient_accumulation_steps=params.gradient_accumulation_steps,
        max_length=params.max_length,
        bf16=params.precision == "bf16",
        fp16=params.precision == "fp16",
        eval_strategy="epoch",
        logging_steps=params.logging_steps,
        save_strategy="no",
        report_to="none",
        seed=params.seed,
        data_seed=params.seed,
        use_cpu=not torch.cuda.is_available(),
    )
    trainer = DPOTrainer(
        model=model,
        args=config,
        train_dataset=Dataset.from_list(read_pairs(TRAIN_FILE)),
        eval_dataset=Dataset.from_list(read_pairs(EVAL_FILE)),
        processing_class=tokenizer,
        callbacks=[dvclive_callback(live_dir, {"dpo": dataclasses.asdict(params)})],
    )
    trainer.train()
    metrics = trainer.evaluate()
    trainer.model.save_pretrained(str(out_dir), selected_adapters=["default"], safe_serialization=True)
    copy_tokenizer_files(SFT_DIR, out_dir)
    return metrics


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        metrics = train(load_params().dpo)
    except (ParamsError, FileNotFoundError) as err:
        print(f"dpo: error: {err}", file=sys.stderr)
        return 2
    log.info("eval reward accuracy %.3f; adapter in %s", metrics.get("eval_rewards/accuracies", float("nan")), OUT_DIR)
    return 0


if __name__ == "__main__":
    sys.exit(main())
