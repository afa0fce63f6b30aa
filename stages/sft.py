"""Stage `sft`: supervised fine-tuning, LoRA / QLoRA / full, on the assistant tokens (TRL SFTTrainer + PEFT).

Reads  params `lr` (the learning rate) and `sft`; models/base; data/prepared/sft_{train,eval}.jsonl;
       ds_config_zero2.json when sft.num_processes > 1
Writes models/sft/ (the LoRA adapter + tokenizer; for `method: full` the whole model), dvclive/sft/
       (loss, eval loss, lr, grad norm per step); checkpoints/sft/ while it runs (empty once it finishes)

Loss is computed on assistant tokens only, turn by turn (transformers' assistant mask from the
`{% generation %}` markers of the training chat template; see stages/chat.py).

`sft.num_processes: N` > 1 reruns this module as N workers under DeepSpeed with `sft.deepspeed_config`
(the guide's `deepspeed --num_gpus=N ... --deepspeed ds_config_zero2.json`); see stages/launch.py.
A run killed after a checkpoint resumes from it on the next `dvc repro` ("Resuming from checkpoint-N").
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
from pathlib import Path
from typing import Any

from stages import chat, launch
from stages.models import (
    BASE_DIR,
    BaseModelRef,
    copy_tokenizer_files,
    load_base_model,
    load_tokenizer,
    read_base_ref,
    save_model,
    torch_dtype,
)
from stages.params import ParamsError, Sft, load_params

log = logging.getLogger("sft")

TRAIN_FILE = Path("data/prepared/sft_train.jsonl")
EVAL_FILE = Path("data/prepared/sft_eval.jsonl")
OUT_DIR = Path("models/sft")
LIVE_DIR = Path("dvclive/sft")
CHECKPOINT_DIR = Path("checkpoints/sft")  # persisted DVC output: survives a killed run, empty after a finished one
METHODS = ("lora", "qlora", "full")
PRECISIONS = ("fp32", "bf16", "fp16")


def read_conversations(path: Path) -> list[list[dict[str, str]]]:
    with path.open(encoding="utf-8") as f:
        return [json.loads(line)["messages"] for line in f if line.strip()]


def check(params: Sft, ref: BaseModelRef) -> None:
    """Reject a config that cannot run here, before any process is launched or any weight loaded."""
    import torch

    where = "params.yaml: sft"
    if params.method not in METHODS:
        raise ParamsError(f"{where}.method: {params.method!r} is not one of {', '.join(METHODS)}")
    for key, value in (("precision", params.precision), ("qlora.compute_dtype", params.qlora.compute_dtype)):
        if value not in PRECISIONS:
            raise ParamsError(f"{where}.{key}: {value!r} is not one of {', '.join(PRECISIONS)}")
    if params.precision == "fp16" and not torch.cuda.is_available():
        raise ParamsError(f"{where}.precision: fp16 needs a GPU; use fp32 or bf16 on CPU")
    if params.early_stopping_patience > 0 and (params.save_steps <= 0 or params.save_steps % params.eval_steps):
        raise ParamsError(
            f"{where}.save_steps: {params.save_steps} must be a positive multiple of sft.eval_steps "
            f"({params.eval_steps}) with early stopping on: the best checkpoint is kept and loaded at the end"
        )
    launch.check_deepspeed("sft", params.num_processes, params.deepspeed_config)
    check_memory(params, ref)


def check_memory(params: Sft, ref: BaseModelRef) -> None:
    """Fail fast when the estimated peak memory exceeds the GPUs' (sft.gpu_memory_gb, or the detected GPU's)."""
    import torch

    from stages import estimate

    if params.gpu_memory_gb > 0:
        available = params.gpu_memory_gb
    elif torch.cuda.is_available():
        available = torch.cuda.get_device_properties(0).total_memory / estimate.GIB
    else:
        return  # CPU training: host memory is not what this estimates
    config_file = Path(ref.name_or_path, "config.json")
    if not config_file.is_file():
        log.warning("%s: not found; skipping the GPU memory estimate", config_file)
        return
    shape = estimate.ModelShape.from_config(ref.name_or_path, json.loads(config_file.read_text(encoding="utf-8")))
    run = estimate.Run(
        method=params.method,
        precision=params.precision,
        seq_len=params.max_seq_len,
        batch_size=params.per_device_train_batch_size,
        zero_stage=launch.zero_stage(params.num_processes, params.deepspeed_config),
        num_gpus=params.num_processes,
        gradient_checkpointing=params.gradient_checkpointing,
        lora_r=params.lora.r,
        lora_dropout=params.lora.dropout,
        lora_targets=params.lora.target_modules,
    )
    need = estimate.peak_gib(shape, run)
    log.info("estimated peak GPU memory %.1f GiB per GPU of %.1f GiB", need, available)
    if need > available:
        raise ParamsError(
            f"params.yaml: sft: estimated peak GPU memory {need:.1f} GiB per GPU exceeds the {available:.1f} GiB "
            f"available ({estimate.breakdown(shape, run).splitlines()[0]}); try sft.method: qlora, "
            "sft.gradient_checkpointing: true, a smaller sft.per_device_train_batch_size or max_seq_len, "
            "or more sft.num_processes with ZeRO (see `python -m stages.estimate --help`)"
        )


def fingerprint(params: Sft, lr: float) -> dict[str, Any]:
    inputs = [TRAIN_FILE, EVAL_FILE, Path(params.deepspeed_config), *sorted(BASE_DIR.glob("*"))]
    return launch.run_fingerprint({"lr": lr, "sft": dataclasses.asdict(params)}, inputs)


def lora_config(params: Sft) -> Any:
    from peft import LoraConfig

    lora = params.lora
    return LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=lora.target_modules,
        modules_to_save=lora.modules_to_save or None,
        task_type="CAUSAL_LM",
    )


def load_model(ref: BaseModelRef, params: Sft) -> Any:
    """The base to train: 4-bit NF4 for qlora; fp32 master weights for full (AMP/DeepSpeed cast on the fly)."""
    if params.method == "qlora":
        from transformers import BitsAndBytesConfig

        quantization = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type=params.qlora.quant_type,
            bnb_4bit_use_double_quant=params.qlora.double_quant,
            bnb_4bit_compute_dtype=torch_dtype(params.qlora.compute_dtype),
        )
        return load_base_model(ref, torch_dtype(params.precision), quantization_config=quantization)
    return load_base_model(ref, torch_dtype("fp32" if params.method == "full" else params.precision))


def sft_config(params: Sft, lr: float, checkpoint_dir: Path) -> Any:
    import torch
    from trl import SFTConfig

    early_stopping = params.early_stopping_patience > 0
    use_deepspeed = params.num_processes > 1 and params.deepspeed_config
    return SFTConfig(
        output_dir=str(checkpoint_dir),
        learning_rate=lr,
        num_train_epochs=params.num_epochs,
        max_steps=params.max_steps,
        per_device_train_batch_size=params.per_device_train_batch_size,
        per_device_eval_batch_size=params.per_device_train_batch_size,
        gradient_accumulation_steps=params.gradient_accumulation_steps,
        warmup_steps=params.warmup_ratio,  # transformers 5: a float < 1 is a ratio of the total steps
        lr_scheduler_type=params.lr_scheduler_type,
        weight_decay=params.weight_decay,
        max_grad_norm=params.max_grad_norm,
        # Padding-free batches without packing cannot truncate; prepare already dropped the samples longer
        # than prepare.max_tokens (<= sft.max_seq_len), so none needs it.
        max_length=None if params.padding_free and not params.packing else params.max_seq_len,
        assistant_only_loss=True,
        packing=params.packing,
        padding_free=params.padding_free,
        activation_checkpointing=params.gradient_checkpointing,  # transformers 5 name of gradient checkpointing
        activation_checkpointing_kwargs={"use_reentrant": False} if params.gradient_checkpointing else None,
        train_sampling_strategy=params.train_sampling_strategy,
        bf16=params.precision == "bf16",
        fp16=params.precision == "fp16",
        eval_strategy="steps",
        eval_steps=params.eval_steps,
        logging_steps=params.logging_steps,
        save_strategy="steps" if params.save_steps > 0 else "no",
        save_steps=params.save_steps if params.save_steps > 0 else 500,
        save_total_limit=params.save_total_limit,
        load_best_model_at_end=early_stopping,
        metric_for_best_model="eval_loss" if early_stopping else None,
        greater_is_better=False if early_stopping else None,
        deepspeed=params.deepspeed_config if use_deepspeed else None,
        report_to="none",
        seed=params.seed,
        data_seed=params.seed,
        use_cpu=not torch.cuda.is_available(),
        dataloader_num_workers=0,
    )


def train(
    params: Sft,
    lr: float,
    out_dir: Path = OUT_DIR,
    live_dir: Path = LIVE_DIR,
    checkpoint_dir: Path = CHECKPOINT_DIR,
) -> dict[str, float]:
    from datasets import Dataset
    from transformers import EarlyStoppingCallback, set_seed
    from trl import SFTTrainer

    from stages.tracking import dvclive_callbacks

    set_seed(params.seed)
    ref = read_base_ref()
    tokenizer = load_tokenizer(ref.name_or_path, ref)
    train_rows, eval_rows = read_conversations(TRAIN_FILE), read_conversations(EVAL_FILE)
    tokenizer.chat_template = chat.training_template(tokenizer, train_rows[:8])

    resume_from = launch.last_checkpoint(checkpoint_dir)
    callbacks = [launch.engine_report()]
    callbacks += dvclive_callbacks(
        live_dir,
        {"lr": lr, "sft": dataclasses.asdict(params)},
        resume_step=int(resume_from.name.split("-")[-1]) if resume_from else None,
    )
    if params.early_stopping_patience > 0:
        callbacks.append(EarlyStoppingCallback(params.early_stopping_patience, params.early_stopping_threshold))
    trainer = SFTTrainer(
        model=load_model(ref, params),
        args=sft_config(params, lr, checkpoint_dir),
        train_dataset=Dataset.from_list([{"messages": m} for m in train_rows]),
        eval_dataset=Dataset.from_list([{"messages": m} for m in eval_rows]),
        processing_class=tokenizer,
        peft_config=None if params.method == "full" else lora_config(params),
        callbacks=callbacks,
    )
    if resume_from:
        log.info("Resuming from %s", resume_from.name)
    trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    state = trainer.state
    if params.early_stopping_patience > 0:  # the best checkpoint was loaded back
        log.info("best eval loss %.4f at step %d of %d", state.best_metric, state.best_global_step, state.global_step)
        metrics = {"eval_loss": state.best_metric, "global_step": state.global_step}
    else:  # the Trainer evaluates the last step too
        last_eval = next(entry for entry in reversed(state.log_history) if "eval_loss" in entry)
        metrics = {**last_eval, "global_step": state.global_step}
    if trainer.is_world_process_zero():
        save_model(trainer.model, out_dir)
        copy_tokenizer_files(ref.name_or_path, out_dir)
        launch.clear_checkpoints(checkpoint_dir)
    return metrics


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--local_rank", "--local-rank", type=int, help=argparse.SUPPRESS)  # deepspeed launcher
    parser.parse_args(argv)
    launch.setup_logging()
    try:
        params = load_params()
        if not launch.launched():
            check(params.sft, read_base_ref())
            launch.prepare_resume(CHECKPOINT_DIR, fingerprint(params.sft, params.lr))
            if params.sft.num_processes > 1:
                return launch.relaunch("stages.sft", params.sft.num_processes)
        metrics = train(params.sft, params.lr)
    except (ParamsError, FileNotFoundError, chat.ChatTemplateError) as err:
        print(f"sft: error: {err}", file=sys.stderr)
        return 2
    log.info("final eval loss %.4f after %d steps; model in %s", metrics["eval_loss"], metrics["global_step"], OUT_DIR)
    return 0


if __name__ == "__main__":
    sys.exit(main())
