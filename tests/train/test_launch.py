"""How a training stage runs (ta/train/launch.py): which ZeRO stage, which DeepSpeed configs are refused,
whether it was started by a launcher, and the command it relaunches itself with."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from ta.errors import ParamsError
from ta.train import launch
from tests.helpers import REPO


def test_zero_stage_is_the_configs_only_under_several_processes(tmp_path: Path) -> None:
    config = REPO / "ds_config_zero2.json"
    assert launch.zero_stage(2, str(config)) == 2
    assert launch.zero_stage(1, str(config)) == 0  # one process: no DeepSpeed
    assert launch.zero_stage(4, "") == 0  # plain DDP


def test_deepspeed_configs_that_cannot_work_are_refused(tmp_path: Path) -> None:
    (tmp_path / "zero3.json").write_text(json.dumps({"zero_optimization": {"stage": 3}}))
    with pytest.raises(ParamsError, match=r"^params.yaml: sft.deepspeed_config: nowhere.json: file not found$"):
        launch.check_deepspeed("sft", 2, "nowhere.json")
    with pytest.raises(ParamsError, match=r"zero3.json: zero_optimization.stage 3 is not supported here; use stage 2"):
        launch.check_deepspeed("dpo", 2, str(tmp_path / "zero3.json"))
    launch.check_deepspeed("sft", 1, "nowhere.json")  # unused with one process: no error


def test_launched_and_rank_come_from_the_launchers_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    monkeypatch.delenv("RANK", raising=False)
    assert not launch.launched() and launch.rank() == 0
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setenv("RANK", "3")
    assert launch.launched() and launch.rank() == 3


def test_relaunch_runs_torchrun_on_the_module(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    def fake_run(cmd: list[str]) -> subprocess.CompletedProcess:
        calls.append(cmd)
        return subprocess.CompletedProcess(cmd, 7)

    monkeypatch.setattr(subprocess, "run", fake_run)
    assert launch.relaunch("stages.sft", 4) == 7
    assert calls == [
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=4", "--module", "stages.sft"]
    ]
