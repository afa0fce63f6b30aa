"""The vLLM launch (serve/vllm.py): LoRA rank rounding, base model and revision, host, API key handling, the
install hint. vLLM itself needs a GPU, so the command is checked against vLLM's documented constraints."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
from pathlib import Path

import pytest

from serve import vllm
from serve.vllm import adapter_rank, max_lora_rank, vllm_command
from ta.config import Serve, load_params
from ta.errors import ServeError
from tests.helpers import REPO, write_params

SHIPPED = load_params(REPO / "params.yaml").serve


def serve_params(**changes: object) -> Serve:
    return dataclasses.replace(SHIPPED, **changes)


def make_inputs(tmp_path: Path, rank: int = 16, base: dict | None = None, **adapter: object) -> tuple[Serve, Path]:
    adapter_dir = tmp_path / "models" / "dpo"
    adapter_dir.mkdir(parents=True)
    config = {"peft_type": "LORA", "r": rank, "lora_alpha": 2 * rank, **adapter}
    (adapter_dir / "adapter_config.json").write_text(json.dumps(config))
    base_json = tmp_path / "base.json"
    base_json.write_text(json.dumps(base or {"model": "tiny", "revision": "abc123", "path": "models/base"}))
    return serve_params(adapter_dir=str(adapter_dir)), base_json


def flag(argv: list[str], name: str) -> str:
    return argv[argv.index(name) + 1]


@pytest.mark.parametrize(("rank", "expected"), [(1, 1), (2, 8), (8, 8), (16, 16), (17, 32), (64, 64), (300, 320)])
def test_max_lora_rank_rounds_up_to_a_vllm_value(rank: int, expected: int) -> None:
    assert max_lora_rank(rank) == expected


def test_rank_beyond_vllm_limit_is_a_clear_error() -> None:
    with pytest.raises(ServeError, match="rank 513 exceeds vLLM's largest --max-lora-rank 512"):
        max_lora_rank(513)


def test_rank_pattern_can_raise_the_rank(tmp_path: Path) -> None:
    params, _ = make_inputs(tmp_path, rank=16, rank_pattern={"q_proj": 48})
    assert adapter_rank(Path(params.adapter_dir)) == 48


def test_command_serves_adapter_on_local_base_snapshot(tmp_path: Path) -> None:
    params, base_json = make_inputs(tmp_path, rank=24)
    argv = vllm_command(params, base_json)
    assert argv[:3] == ["vllm", "serve", str(base_json.parent)]  # the snapshot base.json sits in
    assert "--revision" not in argv  # a local snapshot is already the pinned revision
    assert "--enable-lora" in argv
    assert flag(argv, "--lora-modules") == f"ta-lora={tmp_path}/models/dpo"
    assert flag(argv, "--max-lora-rank") == "32"
    assert flag(argv, "--host") == "127.0.0.1"
    assert flag(argv, "--port") == "8000"
    assert flag(argv, "--dtype") == "auto"
    assert flag(argv, "--max-model-len") == "1024"
    assert "--api-key" not in argv


def test_hub_base_is_pinned_to_its_revision(tmp_path: Path) -> None:
    params, base_json = make_inputs(tmp_path, base={"model": "Qwen/Qwen2.5-7B-Instruct", "revision": "a09a3545"})
    argv = vllm_command(params, base_json)
    assert argv[2] == "Qwen/Qwen2.5-7B-Instruct"
    assert flag(argv, "--revision") == "a09a3545"


def test_bad_dtype_and_missing_adapter_are_errors(tmp_path: Path) -> None:
    params, base_json = make_inputs(tmp_path)
    with pytest.raises(ServeError, match="serve.dtype: 'fp8'"):
        vllm_command(dataclasses.replace(params, dtype="fp8"), base_json)
    with pytest.raises(ServeError, match="nowhere/adapter_config.json: not found"):
        vllm_command(serve_params(adapter_dir="nowhere"), base_json)


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A working dir with params.yaml pointing serve at a rank-16 adapter; TA_API_KEY unset."""
    make_inputs(tmp_path, rank=16)
    write_params(tmp_path, serve={"adapter_dir": "models/dpo"})
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("TA_API_KEY", raising=False)
    return tmp_path


FAKE_KEY = "fake-key-7f3a9c"  # planted, then searched for in everything the launch shows or hands over


def test_dry_run_takes_api_key_from_env_and_masks_it(project: Path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("TA_API_KEY", FAKE_KEY)
    assert vllm.main(["--dry-run", "--base-json", "base.json"]) == 0
    out = capsys.readouterr().out
    assert FAKE_KEY not in out
    assert out.startswith("VLLM_API_KEY=**** vllm serve ")
    assert "--api-key" not in out
    assert "--lora-modules ta-lora=models/dpo --max-lora-rank 16" in out


@pytest.fixture
def launched(project: Path, monkeypatch: pytest.MonkeyPatch) -> dict:
    """Run `python -m serve.vllm` for real up to the process start, which is recorded instead of run."""
    started: dict = {}

    def call(argv: list[str], env: dict[str, str]) -> int:
        started.update(argv=argv, env=env)
        return 0

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: name == "vllm" or real_find_spec(name, *a))
    monkeypatch.setattr(vllm.subprocess, "call", call)
    return started


def test_api_key_reaches_vllm_through_its_environment_not_argv(launched: dict, monkeypatch, caplog) -> None:
    monkeypatch.setenv("TA_API_KEY", FAKE_KEY)
    with caplog.at_level("INFO"):
        assert vllm.main(["--base-json", "base.json"]) == 0
    assert not [arg for arg in launched["argv"] if FAKE_KEY in arg]  # what `ps` and vLLM's start-up log show
    assert "--api-key" not in launched["argv"]
    assert launched["env"]["VLLM_API_KEY"] == FAKE_KEY
    assert FAKE_KEY not in caplog.text
    assert "VLLM_API_KEY=****" in caplog.text


def test_without_a_key_an_inherited_vllm_api_key_is_not_passed_on(launched: dict, monkeypatch) -> None:
    monkeypatch.setenv("VLLM_API_KEY", "left-over")
    assert vllm.main(["--base-json", "base.json"]) == 0
    assert "VLLM_API_KEY" not in launched["env"]


def test_public_host_without_api_key_is_refused(project: Path, capsys) -> None:
    write_params(project, serve={"adapter_dir": "models/dpo", "host": "0.0.0.0"})
    assert vllm.main(["--dry-run", "--base-json", "base.json"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "serve.host is 0.0.0.0 but $TA_API_KEY is not set" in err


def test_without_vllm_run_says_how_to_install(project: Path, monkeypatch, capsys) -> None:
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "vllm" else real_find_spec(name, *a)
    )
    assert vllm.main(["--base-json", "base.json"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "pip install -r requirements-gpu.txt" in err
