"""Stage dpo (stages/dpo.py, ta/train/dpo.py) on a throwaway workspace whose SFT adapter has random weights (so
the SFT model differs from the base). At step 1 the policy equals its reference, which fixes the first
logged numbers by hand: rewards 0, sigmoid loss ln 2, IPO loss (1 / (2β))²."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import pytest

from stages import dpo
from tests.helpers import pref_rows, run_module, set_params, tsv_steps, tsv_values

PLOTS = Path("dvclive/dpo/plots/metrics")


def first_value(tsv: Path) -> float:
    return tsv_values(tsv)[0]


def test_dpo_trains_the_sft_adapter_against_its_frozen_copy(dpo_training_workspace: Path) -> None:
    from safetensors.torch import load_file

    assert dpo.main([]) == 0
    for name in ("chosen", "rejected", "margins", "accuracies"):
        assert tsv_steps(PLOTS / f"rewards/{name}.tsv") == [1, 2]
        assert tsv_steps(PLOTS / f"eval/rewards/{name}.tsv") == [2]
    assert first_value(PLOTS / "rewards/margins.tsv") == pytest.approx(0.0, abs=1e-6)
    assert first_value(PLOTS / "loss.tsv") == pytest.approx(math.log(2), abs=1e-4)
    assert tsv_steps(PLOTS / "learning_rate.tsv") == [1, 2] and tsv_steps(PLOTS / "grad_norm.tsv") == [1, 2]

    trained = load_file(str(dpo_training_workspace / "models/dpo/adapter_model.safetensors"))
    sft = load_file(str(dpo_training_workspace / "models/sft/adapter_model.safetensors"))
    assert set(trained) == set(sft)  # the "default" adapter only, no frozen "ref" copy saved
    assert any(not trained[name].equal(sft[name]) for name in sft)
    assert (dpo_training_workspace / "models/dpo/tokenizer.json").is_file()
    assert not any((dpo_training_workspace / "checkpoints/dpo").iterdir())


def test_ipo_loss_type_reaches_the_trainer(dpo_training_workspace: Path) -> None:
    set_params(dpo_training_workspace, dpo={"loss_type": "ipo", "beta": 0.1, "max_steps": 1})
    assert dpo.main([]) == 0
    # IPO: (margin - 1/(2β))² with margin 0 at step 1 = (1/0.2)² = 25
    assert first_value(PLOTS / "loss.tsv") == pytest.approx(25.0, abs=1e-3)


def test_an_explicit_reference_model_replaces_the_sft_copy(dpo_training_workspace: Path) -> None:
    # Against the base (not the SFT model) the policy's implicit rewards are not 0 at step 1.
    set_params(dpo_training_workspace, dpo={"ref_model": "models/base", "max_steps": 1})
    assert dpo.main([]) == 0
    assert abs(first_value(PLOTS / "rewards/margins.tsv")) > 1e-4
    assert first_value(PLOTS / "loss.tsv") != pytest.approx(math.log(2), abs=1e-4)


def test_dpo_after_full_sft_trains_the_whole_model(dpo_training_workspace: Path) -> None:
    shutil.rmtree(dpo_training_workspace / "models/sft")
    shutil.copytree(dpo_training_workspace / "models/base", dpo_training_workspace / "models/sft")
    set_params(dpo_training_workspace, dpo={"max_steps": 1})
    assert dpo.main([]) == 0
    assert (dpo_training_workspace / "models/dpo/model.safetensors").is_file()
    assert not (dpo_training_workspace / "models/dpo/adapter_config.json").exists()
    assert first_value(PLOTS / "loss.tsv") == pytest.approx(math.log(2), abs=1e-4)


@pytest.mark.parametrize(
    ("dpo_params", "remove_sft", "message"),
    [
        (
            {"ref_model": "models/nowhere"},
            False,
            "params.yaml: dpo.ref_model: models/nowhere: not a model or adapter directory",
        ),
        ({}, True, "models/sft: missing; run `dvc repro sft` first"),
        ({"precision": "fp16"}, False, "params.yaml: dpo.precision: fp16 needs a GPU; use fp32 or bf16 on CPU"),
    ],
)
def test_what_cannot_run_is_one_line_before_any_weight_loads(
    dpo_workspace: Path, capsys: pytest.CaptureFixture[str], dpo_params: dict, remove_sft: bool, message: str
) -> None:
    import torch

    if "fp16" in message and torch.cuda.is_available():
        pytest.skip("fp16 runs where there is a GPU")
    if remove_sft:
        shutil.rmtree(dpo_workspace / "models/sft")
    set_params(dpo_workspace, dpo=dpo_params)
    assert dpo.main([]) == 2
    assert capsys.readouterr().err == f"dpo: error: {message}\n"
    assert not (dpo_workspace / "models/dpo").exists()


def test_two_processes_train_under_deepspeed_zero2(dpo_training_workspace: Path) -> None:
    # split_rows_min_saving 1: each rank forwards its batch's rows in length groups, as ZeRO-2 must allow
    set_params(
        dpo_training_workspace,
        dpo={"num_processes": 2, "max_steps": 2, "save_steps": 0, "split_rows_min_saving": 1},
    )
    result = run_module("stages.dpo", dpo_training_workspace)
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-3000:]
    assert "--nproc_per_node=2" in log
    assert "DeepSpeed ZeRO stage 2 over 2 process(es) (optimizer DeepSpeedZeroOptimizer, gloo backend)" in log
    assert (dpo_training_workspace / "models/dpo/adapter_model.safetensors").is_file()
    assert tsv_steps(dpo_training_workspace / PLOTS / "loss.tsv") == [1, 2]  # rank 0 alone logs
    assert first_value(dpo_training_workspace / PLOTS / "loss.tsv") == pytest.approx(math.log(2), abs=1e-4)


def pad_positions(trainer: object, rows: object, order: list[int], batch_size: int) -> int:
    """Pad positions of the batches TRL's own collator makes of `rows` taken in `order`."""
    total = 0
    for start in range(0, len(order), batch_size):
        batch = trainer.data_collator([rows[i] for i in order[start : start + batch_size]])
        total += batch["input_ids"].numel() - int(batch["attention_mask"].sum())
    return total


def test_pairs_are_batched_by_length(dpo_workspace: Path, tmp_path: Path) -> None:
    """Half the pairs have 4-character answers, half 100-character ones. Sorted megabatches of 16 pairs (64 pairs,
    batches of 2: transformers takes 8 batches a megabatch) can mix the two kinds in at most one batch each, so
    whatever the shuffle, at most 4 batches pad a short pair's two rows (chosen and rejected) to a long one;
    random order mixes about half of the 32 batches."""
    import torch
    from datasets import Dataset
    from torch.utils.data import RandomSampler

    from ta.base_model import read_base_ref
    from ta.config import load_params
    from ta.models import load_tokenizer
    from ta.train import dpo as train_dpo

    set_params(dpo_workspace, dpo={"max_length": 512})
    params = load_params().dpo
    pairs = []
    for i in range(64):
        size = 4 if i % 2 else 100  # chosen and rejected alike: no pair pads one answer to the other
        answers = {"chosen": "1" * size, "rejected": "2" * size}
        pairs.append({**pref_rows(1, i)[0], **{k: [{"role": "assistant", "content": v}] for k, v in answers.items()}})
    trainer = train_dpo.trainer_class()(
        model=train_dpo.load_policy(read_base_ref(), params),
        args=train_dpo.dpo_config(params, tmp_path),
        train_dataset=Dataset.from_list(pairs),
        eval_dataset=Dataset.from_list(pairs[:2]),
        processing_class=load_tokenizer(Path("models/sft")),
    )
    rows = trainer.train_dataset
    # Each pair's length, as the sampler reads it, is the width TRL's collator gives the pair alone.
    widths = [trainer.data_collator([row])["input_ids"].shape[1] for row in rows]
    assert train_dpo.pair_lengths(rows, params.max_length) == widths
    long_short = max(widths) - min(widths)
    assert long_short >= 90

    mixed_batch = 2 * (long_short + 10)  # + the few tokens the prompts differ by
    torch.manual_seed(0)  # the bound holds for any shuffle; the seed makes the random order's figure repeatable
    grouped = pad_positions(trainer, rows, list(trainer._get_train_sampler()), 2)
    random_order = pad_positions(trainer, rows, list(RandomSampler(rows)), 2)
    assert grouped <= 4 * mixed_batch
    assert random_order > 8 * mixed_batch


def test_a_batch_runs_in_row_groups_with_the_loss_of_one_forward(dpo_workspace: Path, tmp_path: Path) -> None:
    """dpo.split_rows_min_saving reaches both models TRL gave its fused head, the policy and an explicit reference:
    the long and the short rows of a batch reach each decoder apart, and the loss (not ln 2: the reference is the
    base) is that of whole batches."""
    import torch
    from datasets import Dataset

    from ta.base_model import read_base_ref
    from ta.config import load_params
    from ta.models import load_tokenizer
    from ta.train import dpo as train_dpo

    set_params(dpo_workspace, dpo={"max_length": 512, "ref_model": "models/base"})
    params = load_params().dpo
    pairs = []
    for i, size in enumerate((4, 120)):
        answers = {"chosen": "1" * size, "rejected": "2" * 4}  # one long answer: three short rows, one long
        pairs.append({**pref_rows(1, i)[0], **{k: [{"role": "assistant", "content": v}] for k, v in answers.items()}})

    def loss_and_widths(min_saving: int) -> tuple[float, list[int]]:
        torch.manual_seed(0)
        trainer = train_dpo.trainer_class(min_saving)(
            model=train_dpo.load_policy(read_base_ref(), params),
            ref_model=train_dpo.load_reference(read_base_ref(), params),
            args=train_dpo.dpo_config(params, tmp_path),
            train_dataset=Dataset.from_list(pairs),
            eval_dataset=Dataset.from_list(pairs),
            processing_class=load_tokenizer(Path("models/sft")),
        )
        widths: list[int] = []
        for model in (trainer.model.get_base_model(), trainer.ref_model):
            model.model.register_forward_pre_hook(
                lambda module, args, kwargs: widths.append(kwargs["input_ids"].shape[1]), with_kwargs=True
            )
        batch = trainer.data_collator(list(trainer.train_dataset))
        with torch.no_grad():
            return float(trainer.compute_loss(trainer.model, batch)), widths

    whole_loss, whole_widths = loss_and_widths(0)
    split_loss, split_widths = loss_and_widths(1)
    assert len(set(whole_widths)) == 1 and len(whole_widths) == 2  # policy and reference, each one padded batch
    assert len(split_widths) == 4 and max(split_widths) == whole_widths[0] > 2 * min(split_widths)
    assert abs(whole_loss - math.log(2)) > 1e-3
    assert split_loss == pytest.approx(whole_loss, abs=1e-5)
