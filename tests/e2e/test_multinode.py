"""The guide's profile on several machines: torchrun's own multi-node launch (ta/train/launch.node_command), here
two "machines" of one process each on 127.0.0.1, each with its own copy of the workspace, talking over gloo.

The run is the profile's (DeepSpeed ZeRO-2, gradient checkpointing, 8 accumulation steps) with what a CPU
cannot do replaced: the tiny model instead of Qwen2.5-7B, the shipped data instead of hub sets, fp32, a few
short steps, one process per machine."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from ta.train.launch import node_command
from tools.profile import applied

pytestmark = pytest.mark.pipeline

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
GUIDE = REPO / "profiles/qwen2.5-7b-guide.yaml"
CPU_INSTEAD = {  # of the profile's values, what two CPU "machines" in a test can run
    "base": {"model": "tiny", "tiny": {"pretrain_steps": 10}},
    "prepare": {
        "max_tokens": 128,
        "sft_sources": ["data/raw/sft_persona.jsonl", "data/raw/sft_drill.jsonl"],
        "preference_sources": ["data/raw/preference.jsonl"],
    },
    "sft": {
        "num_processes": 1,  # per machine
        "precision": "auto",
        "max_steps": 2,
        "per_device_train_batch_size": 2,
        "max_seq_len": 128,
        "eval_steps": 2,
        "save_steps": 0,
        "early_stopping_patience": 0,
        "logging_steps": 1,
    },
}


def env() -> dict[str, str]:
    return {
        **os.environ,
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "DVC_NO_ANALYTICS": "1",
        "PYTHONPATH": str(REPO),  # machine 1 runs the stage without dvc
    }


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def machines(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Two workspaces after `dvc repro prepare` with the profile (+ CPU_INSTEAD) applied: what each machine holds
    after `git clone` + `dvc pull` of a run prepared elsewhere."""
    root = tmp_path_factory.mktemp("nodes")
    first = root / "machine0"
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=REPO,
        check=True,
        capture_output=True,
    ).stdout.decode()
    for rel in filter(None, listed.split("\0")):
        if (REPO / rel).is_file() and rel != "dvc.lock" and rel.split("/")[0] not in ("metrics", "dvclive"):
            (first / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / rel, first / rel)
    params = applied(
        yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8")), yaml.safe_load(GUIDE.read_text())
    )
    for section, values in CPU_INSTEAD.items():
        for key, value in values.items():
            params[section][key] = {**params[section][key], **value} if isinstance(value, dict) else value
    (first / "params.yaml").write_text(yaml.safe_dump(params, allow_unicode=True, sort_keys=False), encoding="utf-8")
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@example.com"]
    for cmd in (  # .dvc/ is tracked: no dvc init
        ["git", "init", "-q"],
        ["git", "add", "-A"],
        [*git, "commit", "-qm", "x"],
    ):
        subprocess.run(cmd, cwd=first, env=env(), check=True, capture_output=True)
    prepared = subprocess.run(
        [str(BIN / "dvc"), "repro", "prepare"], cwd=first, env=env(), capture_output=True, text=True
    )
    assert prepared.returncode == 0, prepared.stderr[-3000:]
    second = root / "machine1"
    shutil.copytree(first, second)
    return first, second


def test_two_machines_train_one_run_under_zero2(machines: tuple[Path, Path]) -> None:
    port = free_port()
    workers = []
    for rank, workspace in enumerate(machines):
        cmd = node_command("stages.sft", 1, 2, rank, f"127.0.0.1:{port}")
        cmd[0:1] = [sys.executable, "-m", "torch.distributed.run"]  # torchrun of this venv
        workers.append(
            subprocess.Popen(cmd, cwd=workspace, env=env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        )
    logs = []
    for worker in workers:
        out, _ = worker.communicate(timeout=1200)
        logs.append(out.decode(errors="replace"))
    assert [w.returncode for w in workers] == [0, 0], "\n".join(log[-3000:] for log in logs)

    params = yaml.safe_load((machines[0] / "params.yaml").read_text(encoding="utf-8"))["sft"]
    assert (params["deepspeed_config"], params["gradient_checkpointing"]) == ("ds_config_zero2.json", True)
    assert params["gradient_accumulation_steps"] == 8  # the profile's
    assert "DeepSpeed ZeRO stage 2 over 2 process(es)" in logs[0]  # one run: world size 2, across the machines
    assert "gloo backend" in logs[0]
    # global rank 0, on machine 0, wrote the adapter and the curves; machine 1 only trained
    assert (machines[0] / "models/sft/adapter_config.json").is_file()
    assert (machines[0] / "dvclive/sft/metrics.json").is_file()
    assert not (machines[1] / "models/sft").exists() and not (machines[1] / "dvclive/sft").exists()
