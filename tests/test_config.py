"""The params loader: types, YAML 1.1 float strings, and errors that name the key."""

from pathlib import Path

import pytest

from stages.params import ParamsError, load_params

REPO = Path(__file__).resolve().parent.parent


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "params.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def test_shipped_params_load_with_documented_tiny_defaults():
    params = load_params(REPO / "params.yaml")
    assert params.base.model == "tiny"
    assert params.sft.method == "lora"
    assert params.quantize.types == ["q4_k_m"]
    assert params.base.tiny.hidden_size % 256 == 0
    assert params.base.tiny.intermediate_size % 256 == 0


def test_exp_run_style_float_string_is_a_float(tmp_path):
    # `dvc exp run -S lr=1e-4` writes `lr: 1e-4`, which PyYAML reads as the string '1e-4'.
    params = load_params(write(tmp_path, "lr: 1e-4\n"))
    assert params.lr == pytest.approx(0.0001)
    assert isinstance(params.lr, float)


def test_nested_override_keeps_other_defaults(tmp_path):
    params = load_params(write(tmp_path, "sft:\n  lora:\n    r: 4\n"))
    assert params.sft.lora.r == 4
    assert params.sft.lora.alpha == 32


def test_unknown_key_is_reported_with_its_path(tmp_path):
    with pytest.raises(ParamsError, match=r"unknown key sft\.lora\.rank"):
        load_params(write(tmp_path, "sft:\n  lora:\n    rank: 4\n"))


def test_wrong_type_is_reported_with_its_path(tmp_path):
    with pytest.raises(ParamsError, match=r"sft\.lora\.r: expected int, got 'sixteen'"):
        load_params(write(tmp_path, "sft:\n  lora:\n    r: sixteen\n"))


def test_bool_is_not_accepted_as_int(tmp_path):
    with pytest.raises(ParamsError, match=r"sft\.eval_steps"):
        load_params(write(tmp_path, "sft:\n  eval_steps: true\n"))


def test_target_modules_accepts_a_string_or_a_list(tmp_path):
    params = load_params(write(tmp_path, "sft:\n  lora:\n    target_modules: [q_proj, v_proj]\n"))
    assert params.sft.lora.target_modules == ["q_proj", "v_proj"]


def test_missing_file_and_bad_yaml_name_the_file(tmp_path):
    with pytest.raises(ParamsError, match="nope.yaml: not found"):
        load_params(tmp_path / "nope.yaml")
    with pytest.raises(ParamsError, match="params.yaml: not valid YAML"):
        load_params(write(tmp_path, "sft: [unclosed\n"))
