"""The trainer arguments sft and dpo share, built once from their params sections.

Both sections spell these knobs the same way (`sft.*`, `dpo.*`); each trainer adds its own (TRL's
SFTConfig: packing, assistant-only loss ...; DPOConfig: beta, loss type ...) in ta/train/sft.py and dpo.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ta.config import Dpo, Sft


def shared_trainer_args(params: Sft | Dpo, learning_rate: float, checkpoint_dir: Path) -> dict[str, Any]:
    """transformers TrainingArguments common to SFTConfig and DPOConfig."""
    import torch

    from ta.models import resolve_precision
    from ta.train.launch import world_size

    precision = resolve_precision(params.precision)
    use_deepspeed = world_size(params.num_processes) > 1 and params.deepspeed_config
    return {
        "output_dir": str(checkpoint_dir),
        "learning_rate": learning_rate,
        "num_train_epochs": params.num_epochs,
        "max_steps": params.max_steps,
        "per_device_train_batch_size": params.per_device_train_batch_size,
        "per_device_eval_batch_size": params.per_device_train_batch_size,
        "gradient_accumulation_steps": params.gradient_accumulation_steps,
        "warmup_steps": params.warmup_ratio,  # transformers 5: a float < 1 is a ratio of the total steps
        "lr_scheduler_type": params.lr_scheduler_type,
        "max_grad_norm": params.max_grad_norm,
        "activation_checkpointing": params.gradient_checkpointing,  # transformers 5's name for it
        "activation_checkpointing_kwargs": {"use_reentrant": False} if params.gradient_checkpointing else None,
        "train_sampling_strategy": params.train_sampling_strategy,
        "bf16": precision == "bf16",
        "fp16": precision == "fp16",
        "eval_strategy": "steps",
        "eval_steps": params.eval_steps,
        "logging_steps": params.logging_steps,
        "save_strategy": "steps" if params.save_steps > 0 else "no",
        "save_steps": params.save_steps if params.save_steps > 0 else 500,
        "save_total_limit": params.save_total_limit,
        "deepspeed": params.deepspeed_config if use_deepspeed else None,
        "report_to": "none",  # DVCLive is added as an explicit callback on rank 0 (ta/train/tracking.py)
        "seed": params.seed,
        "data_seed": params.seed,
        "use_cpu": not torch.cuda.is_available(),
        "dataloader_num_workers": 0,
    }


def check_precision(section: str, precision: str) -> None:
    """fp16 needs a GPU (its loss scaler has no CPU kernels); say so before anything loads."""
    import torch

    from ta.errors import ParamsError

    if precision == "fp16" and not torch.cuda.is_available():
        raise ParamsError(f"params.yaml: {section}.precision: fp16 needs a GPU; use fp32 or bf16 on CPU")
