"""Stage dpo on the throwaway workspace of test_sft, over an SFT adapter whose weights are random (so the
SFT model differs from the base). At step 1 the policy equals its reference, which fixes the first
logged numbers by hand: rewards 0, sigmoid loss ln 2, IPO loss (1 / (2β))²."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import pytest
from test_sft import make_workspace, set_params, tsv_steps


def first_value(tsv: Path) -> float:
    return float(tsv.read_text(encoding="utf-8").splitlines()[1].split("\t")[1])


def make_sft_adapter(workspace: Path) -> None:
    """A LoRA adapter over the base with random A and B (PEFT's zero-B init would equal the base)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from stages.models import copy_tokenizer_files

    base = AutoModelForCausalLM.from_pretrained(str(workspace / "models/base"))
    config = LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False, task_type="CAUSAL_LM")
    get_peft_model(base, config).save_pretrained(str(workspace / "models/sft"))
    copy_tokenizer_files(workspace / "models/base", workspace / "models/sft")


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    workspace = make_workspace(tmp_path_factory.mktemp("dpo_template"))
    make_sft_adapter(workspace)
    return workspace


@pytest.fixture
def workspace(template: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    ws = tmp_path / "ws"
    shutil.copytree(template, ws)
    monkeypatch.chdir(ws)
    return ws


def test_dpo_trains_the_sft_adapter_against_its_frozen_copy(workspace: Path) -> None:
    from safetensors.torch import load_file

    from stages import dpo

    assert dpo.main([]) == 0
    plots = workspace / "dvclive/dpo/plots/metrics"
    for name in ("chosen", "rejected", "margins", "accuracies"):
        assert tsv_steps(plots / f"rewards/{name}.tsv") == [1, 2]
        assert tsv_steps(plots / f"eval/rewards/{name}.tsv") == [2]
    assert first_value(plots / "rewards/margins.tsv") == pytest.approx(0.0, abs=1e-6)
    assert first_value(plots / "loss.tsv") == pytest.approx(math.log(2), abs=1e-4)
    assert tsv_steps(plots / "learning_rate.tsv") == [1, 2] and tsv_steps(plots / "grad_norm.tsv") == [1, 2]

    trained = load_file(str(workspace / "models/dpo/adapter_model.safetensors"))
    sft = load_file(str(workspace / "models/sft/adapter_model.safetensors"))
    assert set(trained) == set(sft)  # the "default" adapter only, no frozen "ref" copy saved
    assert any(not trained[name].equal(sft[name]) for name in sft)
    assert not any((workspace / "checkpoints/dpo").iterdir())


def test_ipo_loss_type_reaches_the_trainer(workspace: Path) -> None:
    from stages import dpo

    set_params(workspace, dpo={"loss_type": "ipo", "beta": 0.1, "max_steps": 1})
    assert dpo.main([]) == 0
    # IPO: (margin - 1/(2β))² with margin 0 at step 1 = (1/0.2)² = 25
    assert first_value(workspace / "dvclive/dpo/plots/metrics/loss.tsv") == pytest.approx(25.0, abs=1e-3)


def test_an_explicit_reference_model_replaces_the_sft_copy(workspace: Path) -> None:
    from stages import dpo

    # Against the base (not the SFT model) the policy's implicit rewards are not 0 at step 1.
    set_params(workspace, dpo={"ref_model": "models/base", "max_steps": 1})
    assert dpo.main([]) == 0
    margin = first_value(workspace / "dvclive/dpo/plots/metrics/rewards/margins.tsv")
    assert abs(margin) > 1e-4
    assert first_value(workspace / "dvclive/dpo/plots/metrics/loss.tsv") != pytest.approx(math.log(2), abs=1e-4)


def test_dpo_after_full_sft_trains_the_whole_model(workspace: Path) -> None:
    from stages import dpo

    shutil.rmtree(workspace / "models/sft")
    shutil.copytree(workspace / "models/base", workspace / "models/sft")
    set_params(workspace, dpo={"max_steps": 1})
    assert dpo.main([]) == 0
    assert (workspace / "models/dpo/model.safetensors").is_file()
    assert not (workspace / "models/dpo/adapter_config.json").exists()
    assert first_value(workspace / "dvclive/dpo/plots/metrics/loss.tsv") == pytest.approx(math.log(2), abs=1e-4)


def test_missing_reference_dir_is_a_params_error(workspace: Path, capsys) -> None:
    from stages import dpo

    set_params(workspace, dpo={"ref_model": "models/nowhere"})
    assert dpo.main([]) == 2
    assert capsys.readouterr().err.strip() == (
        "dpo: error: params.yaml: dpo.ref_model: models/nowhere: not a model or adapter directory"
    )
