"""Supervised fine-tuning, LoRA / QLoRA / full, on the assistant tokens: TRL SFTTrainer + PEFT.

Loss is computed on assistant tokens only, turn by turn (transformers' assistant mask from the
`{% generation %}` markers of the training chat template; see ta/chat.py). The stage entry point is
stages/sft.py; launching several processes and resuming are ta/train/launch.py and checkpoints.py.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Any

from ta import chat, paths
from ta.base_model import BaseModelRef, read_base_ref
from ta.config import Reproducibility, Sft
from ta.errors import ParamsError
from ta.files import atomic_directory
from ta.models import (
    apply_liger_kernels,
    check_attn_implementation,
    check_liger_kernels,
    copy_tokenizer_files,
    load_base_model,
    load_tokenizer,
    resolve_precision,
    save_model,
    torch_dtype,
)
from ta.train import checkpoints, launch, memory
from ta.train.args import check_precision, shared_trainer_args

log = logging.getLogger("sft")


def read_conversations(path: Path) -> list[list[dict[str, str]]]:
    with path.open(encoding="utf-8") as f:
        return [json.loads(line)["messages"] for line in f if line.strip()]


def check(params: Sft, ref: BaseModelRef) -> None:
    """Reject a config that cannot run here, before any process is launched or any weight loaded."""
    check_precision("sft", params.precision)
    check_attn_implementation("sft.attn_implementation", params.attn_implementation)
    check_liger_kernels("sft.liger_kernels", params.liger_kernels)
    launch.check_deepspeed("sft", params.num_processes, params.deepspeed_config)
    check_memory(params, ref)


def check_memory(params: Sft, ref: BaseModelRef) -> None:
    """Fail fast when the estimated peak memory exceeds the GPUs' (sft.gpu_memory_gb, or the detected GPU's)."""
    import torch

    if params.gpu_memory_gb > 0:
        available = params.gpu_memory_gb
    elif torch.cuda.is_available():
        available = torch.cuda.get_device_properties(0).total_memory / memory.GIB
    else:
        return  # CPU training: host memory is not what this estimates
    config = json.loads((paths.BASE_DIR / "config.json").read_text(encoding="utf-8"))  # there for every model
    shape, run = memory.ModelShape.from_config(ref.name_or_path, config), memory_run(params)
    need = memory.peak_gib(shape, run)
    log.info("estimated peak GPU memory %.1f GiB per GPU of %.1f GiB", need, available)
    if need > available:
        raise ParamsError(
            f"params.yaml: sft: estimated peak GPU memory {need:.1f} GiB per GPU exceeds the {available:.1f} GiB "
            f"available ({memory.breakdown(shape, run).splitlines()[0]}); try sft.method: qlora, "
            "sft.gradient_checkpointing: true, a smaller sft.per_device_train_batch_size or max_seq_len, "
            "or more sft.num_processes with ZeRO (see `python -m tools.estimate --help`)"
        )


def memory_run(params: Sft) -> memory.Run:
    """The knobs of this run that the memory estimate (ta/train/memory.py) depends on."""
    return memory.Run(
        method=params.method,
        precision=resolve_precision(params.precision),
        seq_len=params.max_seq_len,
        batch_size=params.per_device_train_batch_size,
        zero_stage=launch.zero_stage(params.num_processes, params.deepspeed_config),
        num_gpus=launch.world_size(params.num_processes),
        gradient_checkpointing=params.gradient_checkpointing,
        lora_r=params.lora.r,
        lora_dropout=params.lora.dropout,
        lora_targets=params.lora.target_modules,
    )


# The stage's code: its Python deps in dvc.yaml (tests/train/test_checkpoints.py checks the two agree).
CODE = (
    "stages/sft.py",
    "ta/train/sft.py",
    "ta/train/args.py",
    "ta/train/launch.py",
    "ta/train/checkpoints.py",
    "ta/train/tracking.py",
    "ta/train/fused_head.py",
    "ta/train/memory.py",
    "ta/files.py",
    "ta/chat.py",
    "ta/models.py",
    "ta/base_model.py",
    "ta/reproducibility.py",
)


def fingerprint(params: Sft, lr: float, compute: Reproducibility) -> dict[str, Any]:
    """What a checkpoint must have been trained with to be resumed: the params (how it computes too: threads,
    CPU kernels and determinism choose the bytes), the inputs and the code."""
    inputs = [paths.SFT_TRAIN, paths.SFT_EVAL, Path(params.deepspeed_config), *sorted(paths.BASE_DIR.glob("*"))]
    run_params = {"lr": lr, "sft": dataclasses.asdict(params), "reproducibility": dataclasses.asdict(compute)}
    return checkpoints.run_fingerprint(run_params, inputs, CODE)


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
    attn = {"attn_implementation": params.attn_implementation}
    if params.method == "qlora":
        from transformers import BitsAndBytesConfig

        quantization = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type=params.qlora.quant_type,
            bnb_4bit_use_double_quant=params.qlora.double_quant,
            bnb_4bit_compute_dtype=torch_dtype(params.qlora.compute_dtype),
        )
        return load_base_model(ref, torch_dtype(params.precision), quantization_config=quantization, **attn)
    return load_base_model(ref, torch_dtype("fp32" if params.method == "full" else params.precision), **attn)


def sft_config(params: Sft, lr: float, checkpoint_dir: Path) -> Any:
    from trl import SFTConfig

    early_stopping = params.early_stopping_patience > 0
    return SFTConfig(
        **shared_trainer_args(params, lr, checkpoint_dir),
        weight_decay=params.weight_decay,
        # Padding-free batches without packing cannot truncate; prepare already dropped the samples longer
        # than prepare.max_tokens (<= sft.max_seq_len), so none needs it.
        max_length=None if params.padding_free and not params.packing else params.max_seq_len,
        assistant_only_loss=True,
        packing=params.packing,
        padding_free=params.padding_free,
        load_best_model_at_end=early_stopping,
        metric_for_best_model="eval_loss" if early_stopping else None,
        greater_is_better=False if early_stopping else None,
    )


def train(
    params: Sft,
    lr: float,
    out_dir: Path = paths.SFT_DIR,
    live_dir: Path = paths.SFT_LIVE,
    checkpoint_dir: Path = paths.SFT_CHECKPOINTS,
) -> dict[str, float]:
    from datasets import Dataset
    from transformers import EarlyStoppingCallback, set_seed
    from trl import SFTTrainer

    from ta.train.fused_head import label_positions_only
    from ta.train.tracking import dvclive_callbacks

    set_seed(params.seed)
    ref = read_base_ref()
    tokenizer = load_tokenizer(paths.BASE_DIR)
    train_rows, eval_rows = read_conversations(paths.SFT_TRAIN), read_conversations(paths.SFT_EVAL)
    tokenizer.chat_template = chat.training_template(tokenizer, train_rows[:8])

    resume_from = checkpoints.last_checkpoint(checkpoint_dir)
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
    if params.liger_kernels:
        apply_liger_kernels(trainer.model)
    if resume_from:
        log.info("Resuming from %s", resume_from.name)
    with label_positions_only():
        trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    state = trainer.state
    if params.early_stopping_patience > 0:  # the best checkpoint was loaded back
        log.info("best eval loss %.4f at step %d of %d", state.best_metric, state.best_global_step, state.global_step)
        metrics = {"eval_loss": state.best_metric, "global_step": state.global_step}
    else:  # the Trainer evaluates the last step too
        last_eval = next(entry for entry in reversed(state.log_history) if "eval_loss" in entry)
        metrics = {**last_eval, "global_step": state.global_step}
    if trainer.is_world_process_zero():
        with atomic_directory(out_dir) as staging:  # models/sft whole or not at all
            save_model(trainer.model, staging)
            copy_tokenizer_files(paths.BASE_DIR, staging)
        checkpoints.clear_checkpoints(checkpoint_dir)
    return metrics
