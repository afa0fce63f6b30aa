"""The params loader (ta/config.py): params.yaml is the only source of defaults; types, enums, ranges and the
rules between fields are checked on load, with the key path in a one-line message, before any model loads."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from ta.config import Params, PrepareSource, choices, load_params, validated
from ta.errors import ParamsError
from tests.helpers import REPO, params_dict, repo_env, write_params


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "params.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def test_shipped_params_load_with_documented_tiny_defaults() -> None:
    params = load_params(REPO / "params.yaml")
    assert isinstance(params, Params)
    assert params.base.model == "tiny"
    assert params.sft.method == "lora"
    assert params.quantize.types == ["q4_k_m"]
    assert params.base.tiny.hidden_size % 256 == 0
    assert params.base.tiny.intermediate_size % 256 == 0


def test_params_yaml_holds_every_field_and_the_code_no_default() -> None:
    """No defaults in code: each section's dataclass fields are exactly the shipped file's keys, none with a
    default (a source mapping's own optional fields aside: they are a schema, not params)."""
    import dataclasses
    import typing

    def check(cls: type, data: dict, where: str) -> None:
        fields = {f.name: f for f in dataclasses.fields(cls)}
        assert set(fields) == set(data), where
        hints = typing.get_type_hints(cls)
        for name, f in fields.items():
            assert f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING, f"{where}{name}"
            if dataclasses.is_dataclass(hints[name]):
                check(hints[name], data[name], f"{where}{name}.")

    check(Params, params_dict(), "")


@pytest.mark.parametrize("key", ["lr", "base.tiny.pretrain_lr", "sft.qlora.compute_dtype", "serve.repeat_penalty"])
def test_a_missing_key_is_named(tmp_path: Path, key: str) -> None:
    partial = params_dict()
    *parents, last = key.split(".")
    node = partial
    for parent in parents:
        node = node[parent]
    del node[last]
    path = write(tmp_path, yaml.safe_dump(partial, allow_unicode=True))
    with pytest.raises(ParamsError, match=re.escape(f"{path}: missing key {key} (see the project's params.yaml")):
        load_params(path)


def test_exp_run_style_float_string_is_a_float(tmp_path: Path) -> None:
    # `dvc exp run -S lr=1e-4` writes `lr: 1e-4`, which PyYAML reads as the string '1e-4'.
    text = (REPO / "params.yaml").read_text(encoding="utf-8").replace("lr: 2.0e-3 ", "lr: 1e-4 ")
    params = load_params(write(tmp_path, text))
    assert params.lr == pytest.approx(0.0001)
    assert isinstance(params.lr, float)


@pytest.mark.parametrize(
    ("sections", "message"),
    [
        ({"sft": {"lora": {"rank": 4}}}, r"unknown key sft\.lora\.rank \(known: alpha, dropout, "),
        ({"sft": {"lora": {"r": "sixteen"}}}, r"sft\.lora\.r: expected int, got 'sixteen'"),
        ({"sft": {"eval_steps": True}}, r"sft\.eval_steps: expected int, got True"),
        ({"sft": {"method": "dora"}}, r"sft\.method: 'dora' is not one of lora, qlora, full"),
        ({"sft": {"lora": {"r": 0}}}, r"sft\.lora\.r: must be >= 1, got 0"),
        ({"sft": {"lora": {"dropout": 1.0}}}, r"sft\.lora\.dropout: must be < 1, got 1\.0"),
        ({"prepare": {"eval_fraction": -0.1}}, r"prepare\.eval_fraction: must be > 0, got -0\.1"),
        ({"prepare": {"eval_fraction": 0}}, r"prepare\.eval_fraction: must be > 0, got 0"),
        ({"serve": {"port": 70000}}, r"serve\.port: must be <= 65535, got 70000"),
        ({"quantize": {"types": ["q4_k_m", "q3_zz"]}}, r"quantize\.types\[1\]: 'q3_zz' is not one of q4_k_m, "),
        ({"quantize": {"types": []}}, r"quantize\.types: empty; list at least one type"),
        ({"eval": {"artifacts": ["base", "gguf_q8"]}}, r"eval\.artifacts\[1\]: 'gguf_q8' is not one of base, "),
        ({"eval": {"gate_action": "block"}}, r"eval\.gate_action: 'block' is not one of warn, fail"),
        ({"eval": {"gate_evidence": "strict"}}, r"eval\.gate_evidence: 'strict' is not one of interval, point"),
        ({"eval": {"bootstrap_samples": 10}}, r"eval\.bootstrap_samples: must be >= 100, got 10"),
        ({"eval": {"bootstrap_samples": 10**6}}, r"eval\.bootstrap_samples: must be <= 100000, got 1000000"),
        ({"eval": {"bootstrap_samples": 1.5e3}}, r"eval\.bootstrap_samples: expected int, got 1500\.0"),
        ({"eval": {"bootstrap_seed": -1}}, r"eval\.bootstrap_seed: must be >= 0, got -1"),
        ({"eval": {"bootstrap_confidence": 95}}, r"eval\.bootstrap_confidence: must be < 1, got 95\.0"),
        ({"eval": {"bootstrap_confidence": 0.3}}, r"eval\.bootstrap_confidence: must be >= 0\.5, got 0\.3"),
        ({"gguf": {"outtype": "f8"}}, r"gguf\.outtype: 'f8' is not one of f16, bf16, q8_0"),
        ({"base": {"tiny": {"intermediate_size": 300}}}, r"base\.tiny\.intermediate_size: must be a multiple of 256"),
        ({"base": {"tiny": {"num_attention_heads": 3}}}, r"base\.tiny: num_attention_heads must divide hidden_size"),
        ({"base": {"model": " "}}, r"base\.model: empty; use tiny, a hub id or a local path"),
        ({"prepare": {"min_tokens": 600}}, r"prepare\.min_tokens: 600 exceeds max_tokens 512"),
        (
            {"sft": {"early_stopping_patience": 1, "eval_steps": 2, "save_steps": 3}},
            r"sft\.save_steps: 3 must be a positive multiple of sft\.eval_steps \(2\) with early stopping on",
        ),
        (
            {"sft": {"padding_free": True, "max_seq_len": 256}},
            r"prepare\.max_tokens: 512 exceeds sft\.max_seq_len 256 with sft\.padding_free on",
        ),
        ({"prepare": {"sft_sources": [{"hub": "x", "colums": {}}]}}, r"unknown key prepare\.sft_sources\[0\]\.colums"),
        (
            {"prepare": {"sft_sources": [{"path": "a", "hub": "b"}]}},
            r"prepare\.sft_sources\[0\]: give exactly one of path or hub",
        ),
    ],
)
def test_a_bad_value_is_one_line_naming_the_file_and_key(tmp_path: Path, sections: dict, message: str) -> None:
    path = write_params(tmp_path, **sections)
    with pytest.raises(ParamsError, match=rf"^{re.escape(str(path))}: {message}") as err:
        load_params(path)
    assert "\n" not in str(err.value)


def test_a_cross_field_rule_holds_only_when_it_applies(tmp_path: Path) -> None:
    # padding-free batches may be longer than prepare.max_tokens once packing cuts them to max_seq_len
    load_params(write_params(tmp_path, sft={"padding_free": True, "packing": True, "max_seq_len": 256}))
    # without early stopping, checkpoints need not line up with evals
    load_params(write_params(tmp_path, sft={"early_stopping_patience": 0, "save_steps": 7}))


def test_a_retired_key_still_loads_with_a_warning_naming_its_replacement(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = write_params(tmp_path, eval={"n_threads": 4})
    params = load_params(path)
    assert not hasattr(params.eval, "n_threads")
    assert f"{path}: eval.n_threads is ignored: reproducibility.threads" in caplog.text
    caplog.clear()
    load_params(REPO / "params.yaml")
    assert caplog.text == ""


def test_target_modules_accepts_a_string_or_a_list(tmp_path: Path) -> None:
    params = load_params(write_params(tmp_path, sft={"lora": {"target_modules": ["q_proj", "v_proj"]}}))
    assert params.sft.lora.target_modules == ["q_proj", "v_proj"]
    assert load_params(REPO / "params.yaml").sft.lora.target_modules == "all-linear"


def test_sources_are_plain_paths_or_mappings_with_their_own_defaults(tmp_path: Path) -> None:
    firefly = {"hub": "YeungNLP/firefly-train-1.1M", "format": "alpaca", "columns": {"instruction": "input"}}
    params = load_params(write_params(tmp_path, prepare={"sft_sources": ["data/raw/sft_stem.jsonl", firefly]}))
    plain, mapped = params.prepare.sft_sources
    assert plain == "data/raw/sft_stem.jsonl"
    assert isinstance(mapped, PrepareSource) and mapped.columns.instruction == "input" and mapped.columns.output == ""
    assert (mapped.split, mapped.weight, mapped.max_rows) == ("train", 1.0, 0)
    assert [s.path or s.hub for s in params.prepare.sources("sft")] == [plain, "YeungNLP/firefly-train-1.1M"]


def test_missing_file_and_bad_yaml_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(ParamsError, match="nope.yaml: not found"):
        load_params(tmp_path / "nope.yaml")
    with pytest.raises(ParamsError, match="params.yaml: not valid YAML"):
        load_params(write(tmp_path, "sft: [unclosed\n"))
    with pytest.raises(ParamsError, match=r"params.yaml: sft: expected a mapping, got \[1, 2\]"):
        load_params(write_params(tmp_path, sft=[1, 2]))


def test_a_section_changed_in_code_is_checked_again() -> None:
    import dataclasses

    prepare = load_params(REPO / "params.yaml").prepare
    with pytest.raises(ParamsError, match=r"^command line: prepare\.on_error: 'ignore' is not one of stop, skip$"):
        validated(dataclasses.replace(prepare, on_error="ignore"), "command line", "prepare")
    assert validated(prepare, "command line", "prepare") == prepare


def test_choices_lists_a_literal() -> None:
    from ta.config import Precision

    assert choices(Precision) == ("auto", "fp32", "bf16", "fp16")


def test_the_checker_command(tmp_path: Path) -> None:
    ok = subprocess.run(
        [sys.executable, "-m", "ta.config", "--file", str(REPO / "params.yaml")],
        capture_output=True,
        text=True,
        env=repo_env(),
    )
    assert (ok.returncode, ok.stdout) == (0, f"{REPO / 'params.yaml'}: ok\n")
    bad = write_params(tmp_path, sft={"method": "dora"})
    result = subprocess.run(
        [sys.executable, "-m", "ta.config", "--file", str(bad)], capture_output=True, text=True, env=repo_env()
    )
    assert result.returncode == 2
    assert result.stderr == f"params: error: {bad}: sft.method: 'dora' is not one of lora, qlora, full\n"


# --------------------------------------------------------------------------- through the stages, fast

PROBE = """
import json, sys, time
started = time.monotonic()
import importlib
code = importlib.import_module("stages." + sys.argv[1]).main([])
print(json.dumps({"code": code, "torch": "torch" in sys.modules, "seconds": time.monotonic() - started}))
"""
BAD = [
    ("enum", {"sft": {"method": "dora"}, "gguf": {"outtype": "f8"}}, "is not one of"),
    ("range", {"sft": {"lora": {"r": 0}}, "eval": {"max_samples": 0}}, "must be >= 1, got 0"),
    ("cross-field", {"prepare": {"min_tokens": 600}}, "prepare.min_tokens: 600 exceeds max_tokens 512"),
]
STAGES = ["base", "prepare", "sft", "dpo", "merge", "gguf", "quantize", "eval"]


@pytest.mark.parametrize("stage", STAGES)
@pytest.mark.parametrize(("kind", "sections", "message"), BAD, ids=[kind for kind, _, _ in BAD])
def test_bad_params_stop_every_stage_in_seconds_without_torch(
    tmp_path: Path, stage: str, kind: str, sections: dict, message: str
) -> None:
    """`python -m stages.<stage>` with a bad params.yaml: exit code 2 and one line naming the key, before
    torch is imported, well under five seconds."""
    write_params(tmp_path, **sections)
    result = subprocess.run(
        [sys.executable, "-c", PROBE, stage], cwd=tmp_path, capture_output=True, text=True, env=repo_env(), timeout=60
    )
    probe = json.loads(result.stdout.strip().splitlines()[-1])
    assert probe["code"] == 2, result.stderr
    assert result.stderr.startswith(f"{stage}: error: params.yaml: ") and message in result.stderr
    assert result.stderr.count("\n") == 1
    assert not probe["torch"], f"stages.{stage} imported torch before checking params"
    assert probe["seconds"] < 5
