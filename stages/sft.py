"""Stage `sft`: supervised fine-tuning with LoRA on the assistant tokens (TRL SFTTrainer + PEFT).

Reads  params `lr` (the learning rate) and `sft`; models/base; data/prepared/sft_{train,eval}.jsonl
Writes models/sft/ (the LoRA adapter + tokenizer), dvclive/sft/ (loss, eval loss, lr, grad norm per step)

Loss is computed on assistant tokens only, turn by turn (transformers' assistant mask from the
`{% generation %}` markers of the training chat template; see stages/chat.py).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
from pathlib import Path

from stages import chat
from stages.models import copy_tokenizer_files, load_base_model, load_tokenizer, read_base_ref, torch_dtype
from stages.params import ParamsError, Sft, load_params

log = logging.getLogger("sft")

TRAIN_FILE = Path("data/prepared/sft_train.jsonl")
EVAL_FILE = Path("data/prepared/sft_eval.jsonl")
OUT_DIR = Path("models/sft")
LIVE_DIR = Path("dvclive/sft")
CHECKPOINT_DIR = Path("checkpoints/sft")  # trainer scratch space, outside the DVC output


def read_conversations(path: Path) -> list[list[dict[str, str]]]:
    with path.open(encoding="utf-8") as f:
        return [json.loads(line)["messages"] for line in f if line.strip()]


def lora_config(params: Sft):
    from peft import LoraConfig

    lora = params.lora
    return LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=lora.target_modules,
        task_type="CAUSAL_LM",
    )


def train(params: Sft, lr: float, out_dir: Path = OUT_DIR, live_dir: Path = LIVE_DIR) -> dict[str, float]:
    import torch
    from datasets import Dataset
    from transformers import set_seed
    from trl import SFTConfig, SFTTrainer

    from stages.tracking import dvclive_callback

    if params.precision == "fp16" and not torch.cuda.is_available():
        raise ParamsError("params.yaml: sft.precision: fp16 needs a GPU; use fp32 or bf16 on CPU")
    set_seed(params.seed)
    ref = read_base_ref()
    tokenizer = load_tokenizer(ref.name_or_path, ref)
    train_rows, eval_rows = read_conversations(TRAIN_FILE), read_conversations(EVAL_FILE)
    tokenizer.chat_template = chat.training_template(tokenizer, train_rows[:8])

    model = load_base_model(ref, torch_dtype(params.precision))
    config = SFTConfig(
        output_dir=str(CHECKPOINT_DIR),
        learning_rate=lr,
        num_train_epochs=params.num_epochs,
        per_device_train_batch_size=params.per_device_train_batch_size,
        per_device_eval_batch_size=params.per_device_train_batch_size,
        gradient_accumulation_steps=params.gradient_accumulation_steps,
        warmup_steps=params.warmup_ratio,  # transformers 5: a float < 1 is a ratio of the total steps
        lr_scheduler_type=params.lr_scheduler_type,
        weight_decay=params.weight_decay,
        max_grad_norm=params.max_grad_norm,
        max_length=params.max_seq_len,
        assistant_only_loss=True,
        gradient_checkpointing=params.gradient_checkpointing,
        train_sampling_strategy=params.train_sampling_strategy,
        bf16=params.precision == "bf16",
        fp16=params.precision == "fp16",
        eval_strategy="steps",
        eval_steps=params.eval_steps,
        logging_steps=params.logging_steps,
        save_strategy="no",
        report_to="none",
        seed=params.seed,
        data_seed=params.seed,
        use_cpu=not torch.cuda.is_available(),
        dataloader_num_workers=0,
    )
    trainer = SFTTrainer(
        model=model,
        args=config,
        train_dataset=Dataset.from_list([{"messages": m} for m in train_rows]),
        eval_dataset=Dataset.from_list([{"messages": m} for m in eval_rows]),
        processing_class=tokenizer,
        peft_config=lora_config(params),
        callbacks=[dvclive_callback(live_dir, {"lr": lr, "sft": dataclasses.asdict(params)})],
    )
    trainer.train()
    # The last eval step may not fall on the last step; evaluate the final adapter once more if not.
    last_eval = next((log for log in reversed(trainer.state.log_history) if "eval_loss" in log), {})
    metrics = last_eval if last_eval.get("step") == trainer.state.global_step else trainer.evaluate()
    trainer.model.save_pretrained(str(out_dir), safe_serialization=True)
    copy_tokenizer_files(ref.name_or_path, out_dir)
    return metrics


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        params = load_params()
        metrics = train(params.sft, params.lr)
    except (ParamsError, FileNotFoundError, chat.ChatTemplateError) as err:
        print(f"sft: error: {err}", file=sys.stderr)
        return 2
    log.info("final eval loss %.4f; adapter in %s", metrics["eval_loss"], OUT_DIR)
    return 0


if __name__ == "__main__":
    sys.exit(main())
