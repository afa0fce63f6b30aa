"""Direct Preference Optimization on top of the SFT model: TRL DPOTrainer.

The reference policy is the SFT model itself, without a second copy of the base weights: given a
PeftModel whose trainable "default" adapter is the SFT adapter, TRL adds a frozen copy of it ("ref")
and switches adapters to compute the reference log-probs. After a full SFT, TRL loads a second copy of
models/sft as the reference. `dpo.ref_model` names another reference instead (a model dir, or an adapter
dir over the pinned base), like the guide's `--ref_model_name_or_path`. The stage is stages/dpo.py.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import sys
from pathlib import Path
from typing import Any

from ta import paths
from ta.base_model import BaseModelRef, read_base_ref
from ta.config import Dpo, Reproducibility
from ta.errors import MissingInputError, ParamsError
from ta.files import atomic_directory
from ta.models import (
    apply_liger_kernels,
    check_attn_implementation,
    check_liger_kernels,
    copy_tokenizer_files,
    load_base_model,
    load_tokenizer,
    save_model,
    torch_dtype,
)
from ta.train import checkpoints, launch
from ta.train.args import check_precision, shared_trainer_args

log = logging.getLogger("dpo")


def read_pairs(path: Path) -> list[dict[str, list[dict[str, str]]]]:
    with path.open(encoding="utf-8") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    return [{k: row[k] for k in ("prompt", "chosen", "rejected")} for row in rows]


def is_adapter(path: Path) -> bool:
    return (path / "adapter_config.json").is_file()


def check(params: Dpo) -> None:
    """Reject a config that cannot run here, before any process is launched or any weight loaded."""
    check_precision("dpo", params.precision)
    check_attn_implementation("dpo.attn_implementation", params.attn_implementation)
    check_liger_kernels("dpo.liger_kernels", params.liger_kernels)
    launch.check_deepspeed("dpo", params.num_processes, params.deepspeed_config)
    ref_model = Path(params.ref_model)
    if params.ref_model and not (ref_model / "config.json").is_file() and not is_adapter(ref_model):
        raise ParamsError(f"params.yaml: dpo.ref_model: {params.ref_model}: not a model or adapter directory")
    if not paths.SFT_DIR.is_dir():
        raise MissingInputError(f"{paths.SFT_DIR}: missing; run `dvc repro sft` first")


# The stage's code: its Python deps in dvc.yaml (tests/train/test_checkpoints.py checks the two agree).
CODE = (
    "stages/dpo.py",
    "ta/train/dpo.py",
    "ta/train/args.py",
    "ta/train/launch.py",
    "ta/train/checkpoints.py",
    "ta/train/tracking.py",
    "ta/train/fused_head.py",
    "ta/train/row_groups.py",
    "ta/files.py",
    "ta/models.py",
    "ta/base_model.py",
    "ta/reproducibility.py",
)


def fingerprint(params: Dpo, compute: Reproducibility) -> dict[str, Any]:
    """As sft's: the params (`reproducibility` too), the inputs and the code a resumable checkpoint was made with."""
    inputs = [paths.PREF_TRAIN, paths.PREF_EVAL, Path(params.deepspeed_config), *sorted(paths.BASE_DIR.glob("*"))]
    inputs += sorted(paths.SFT_DIR.glob("*.safetensors"))
    run_params = {"dpo": dataclasses.asdict(params), "reproducibility": dataclasses.asdict(compute)}
    return checkpoints.run_fingerprint(run_params, inputs, CODE)


def load_policy(ref: BaseModelRef, params: Dpo) -> Any:
    """The SFT model, trainable: its adapter over the base, or the fully fine-tuned model in fp32."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    attn = {"attn_implementation": params.attn_implementation}
    if is_adapter(paths.SFT_DIR):
        base = load_base_model(ref, torch_dtype(params.precision), **attn)
        return PeftModel.from_pretrained(base, str(paths.SFT_DIR), is_trainable=True)
    return AutoModelForCausalLM.from_pretrained(str(paths.SFT_DIR), dtype=torch_dtype("fp32"), **attn)


def load_reference(ref: BaseModelRef, params: Dpo) -> Any:
    """The explicit reference model of `dpo.ref_model` (frozen), or None for TRL's default."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    if not params.ref_model:
        return None
    attn = {"attn_implementation": params.attn_implementation}
    path = Path(params.ref_model)
    if is_adapter(path):
        base = load_base_model(ref, torch_dtype(params.precision), **attn)
        return PeftModel.from_pretrained(base, str(path)).merge_and_unload().eval()
    return AutoModelForCausalLM.from_pretrained(str(path), dtype=torch_dtype(params.precision), **attn).eval()


def pair_lengths(dataset: Any, max_length: int | None) -> list[int]:
    """Positions a pair takes in a DPO batch, whose chosen and rejected rows are padded to one length: the prompt
    and the longer answer, cut at max_length."""
    cap = max_length or sys.maxsize
    return [
        min(len(prompt) + max(len(chosen), len(rejected)), cap)
        for prompt, chosen, rejected in zip(
            dataset["prompt_ids"], dataset["chosen_ids"], dataset["rejected_ids"], strict=True
        )
    ]


def trainer_class(split_rows_min_saving: int = 0) -> type:
    """TRL's DPOTrainer, with `train_sampling_strategy: group_by_length` honoured and, given
    `split_rows_min_saving` > 0, each batch's rows forwarded in length-sorted groups (ta/train/row_groups.py).

    transformers' length-grouped sampler reads an `input_ids` or length column, and DPOTrainer's tokenized pairs
    have neither (it drops any other column before the sampler is built): this sampler reads the lengths from the
    `prompt_ids`/`chosen_ids`/`rejected_ids` it keeps. Random order padded 36 % of the positions on the shipped
    pairs, grouping 20 %, grouping and row groups 4 % (BENCHMARKS.md "Training efficiency: useful tokens per
    second of DPO").
    """
    from accelerate.utils import is_peft_model
    from transformers.trainer_pt_utils import LengthGroupedSampler
    from trl import DPOTrainer

    from ta.train.row_groups import split_rows

    class LengthGroupedDPOTrainer(DPOTrainer):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            if split_rows_min_saving > 0:  # the models TRL gave its fused LM head: the policy's and the reference's
                policy = self.model.get_base_model() if is_peft_model(self.model) else self.model
                for model in (policy, self.ref_model):
                    if model is not None:
                        model.forward = split_rows(model.forward, split_rows_min_saving)

        def _grouped(self, dataset: Any, batch_size: int, generator: Any = None) -> Any:
            if self.args.train_sampling_strategy != "group_by_length" or "prompt_ids" not in dataset.column_names:
                return None
            lengths = pair_lengths(dataset, self.args.max_length)
            return LengthGroupedSampler(batch_size, lengths=lengths, generator=generator)

        def _get_train_sampler(self, train_dataset: Any = None) -> Any:
            dataset = self.train_dataset if train_dataset is None else train_dataset
            batch_size = self.args.train_batch_size * self.args.gradient_accumulation_steps
            sampler = self._grouped(dataset, batch_size)
            return super()._get_train_sampler(train_dataset) if sampler is None else sampler

        def _get_eval_sampler(self, eval_dataset: Any) -> Any:
            import torch

            seed = self.args.data_seed if self.args.data_seed is not None else self.args.seed  # as transformers
            generator = torch.Generator().manual_seed(seed)
            sampler = self._grouped(eval_dataset, self.args.eval_batch_size, generator)
            return super()._get_eval_sampler(eval_dataset) if sampler is None else sampler

    return LengthGroupedDPOTrainer


def dpo_config(params: Dpo, checkpoint_dir: Path) -> Any:
    from trl import DPOConfig

    return DPOConfig(
        **shared_trainer_args(params, params.learning_rate, checkpoint_dir),
        beta=params.beta,
        loss_type=params.loss_type,
        max_length=params.max_length,
    )


def train(
    params: Dpo,
    out_dir: Path = paths.DPO_DIR,
    live_dir: Path = paths.DPO_LIVE,
    checkpoint_dir: Path = paths.DPO_CHECKPOINTS,
) -> dict[str, float]:
    from datasets import Dataset
    from transformers import set_seed

    from ta.train.fused_head import label_positions_only
    from ta.train.tracking import dvclive_callbacks

    set_seed(params.seed)
    ref = read_base_ref()
    tokenizer = load_tokenizer(paths.SFT_DIR)
    resume_from = checkpoints.last_checkpoint(checkpoint_dir)
    callbacks = [launch.engine_report()]
    callbacks += dvclive_callbacks(
        live_dir,
        {"dpo": dataclasses.asdict(params)},
        resume_step=int(resume_from.name.split("-")[-1]) if resume_from else None,
    )
    trainer = trainer_class(params.split_rows_min_saving)(
        model=load_policy(ref, params),
        ref_model=load_reference(ref, params),
        args=dpo_config(params, checkpoint_dir),
        train_dataset=Dataset.from_list(read_pairs(paths.PREF_TRAIN)),
        eval_dataset=Dataset.from_list(read_pairs(paths.PREF_EVAL)),
        processing_class=tokenizer,
        callbacks=callbacks,
    )
    if params.liger_kernels:  # the policy, and an explicit reference (TRL's own is the policy's frozen adapter)
        for model in (trainer.model, trainer.ref_model):
            if model is not None:
                apply_liger_kernels(model)
    if resume_from:
        log.info("Resuming from %s", resume_from.name)
    with label_positions_only():
        trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    state = trainer.state
    last_eval = next(entry for entry in reversed(state.log_history) if "eval_loss" in entry)  # the last step's
    metrics = {**last_eval, "global_step": state.global_step}
    if trainer.is_world_process_zero():
        model = trainer.model
        with atomic_directory(out_dir) as staging:  # models/dpo whole or not at all
            if is_adapter(paths.SFT_DIR):
                save_model(model, staging, selected_adapters=["default"])
            else:
                save_model(model, staging)
            copy_tokenizer_files(paths.SFT_DIR, staging)
        checkpoints.clear_checkpoints(checkpoint_dir)
    return metrics
