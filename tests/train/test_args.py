"""The trainer arguments sft and dpo share (ta/train/args.py), built from a params section."""

from __future__ import annotations

import dataclasses

import pytest

from ta.config import load_params
from ta.errors import ParamsError
from ta.train.args import check_precision, shared_trainer_args
from tests.helpers import REPO

SHIPPED = load_params(REPO / "params.yaml")


def test_the_sft_section_becomes_trainer_arguments(tmp_path) -> None:
    args = shared_trainer_args(SHIPPED.sft, SHIPPED.lr, tmp_path)
    sft = SHIPPED.sft
    assert args["output_dir"] == str(tmp_path) and args["learning_rate"] == SHIPPED.lr
    assert (args["max_steps"], args["num_train_epochs"]) == (sft.max_steps, sft.num_epochs)
    assert args["per_device_train_batch_size"] == args["per_device_eval_batch_size"] == sft.per_device_train_batch_size
    assert args["warmup_steps"] == sft.warmup_ratio  # transformers 5: a float below 1 is a ratio
    assert (args["eval_steps"], args["save_steps"], args["save_strategy"]) == (sft.eval_steps, sft.save_steps, "steps")
    assert args["seed"] == args["data_seed"] == sft.seed
    assert args["report_to"] == "none" and args["deepspeed"] is None  # one process: no DeepSpeed
    assert not args["bf16"] and not args["fp16"]


def test_no_checkpoints_and_deepspeed_only_over_several_processes(tmp_path) -> None:
    section = dataclasses.replace(SHIPPED.dpo, save_steps=0, num_processes=2, precision="bf16")
    args = shared_trainer_args(section, 1e-5, tmp_path)
    assert args["save_strategy"] == "no"
    assert args["deepspeed"] == SHIPPED.dpo.deepspeed_config
    assert args["bf16"] and not args["fp16"]
    plain_ddp = shared_trainer_args(dataclasses.replace(section, deepspeed_config=""), 1e-5, tmp_path)
    assert plain_ddp["deepspeed"] is None


def test_fp16_needs_a_gpu() -> None:
    import torch

    if torch.cuda.is_available():
        check_precision("sft", "fp16")
        return
    with pytest.raises(ParamsError, match=r"^params.yaml: dpo.precision: fp16 needs a GPU; use fp32 or bf16 on CPU$"):
        check_precision("dpo", "fp16")
    check_precision("dpo", "bf16")
