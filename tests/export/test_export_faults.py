"""gguf and eval under kill -9: whenever the stage dies, each of its outputs is either the complete file a whole
run writes or absent — never part of one — and the next run finishes and leaves no temp file behind.

The workspace holds the chain's artifacts (conftest's `chain`) with short budgets; a first, undisturbed run
gives the complete outputs and the stage's wall time, then the stage is killed at fractions of that time,
first over the complete outputs (a rerun must not truncate them on its way), then from none.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from tests.helpers import repo_env, write_params

OUTPUTS = {
    "gguf": ["models/gguf/teachingassistant-f16.gguf", "metrics/gguf.json"],
    "eval": [
        "metrics/eval.json",
        "metrics/eval_intervals.json",
        "metrics/eval_timing.json",
        "metrics/samples.md",
        "metrics/samples.json",
    ],
}
FRACTIONS = (0.2, 0.5, 0.85)
# Seconds differ run to run: whole means valid JSON of the same shape (every artifact, load and measure), not
# the same bytes. A half-written file fails to parse.
TIMINGS = {"metrics/eval_timing.json"}


def shape(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: shape(item) for key, item in value.items()}
    return type(value).__name__


def content(work: Path, path: Path) -> bytes | None:
    if not path.is_file():
        return None
    if str(path.relative_to(work)) in TIMINGS:
        return json.dumps(shape(json.loads(path.read_bytes()))).encode()
    return path.read_bytes()


def outputs(work: Path, stage: str) -> dict[str, bytes | None]:
    files = [work / name for name in OUTPUTS[stage]]
    if stage == "eval":
        files += sorted((work / "metrics/eval_plots").glob("*"))
    return {str(p.relative_to(work)): content(work, p) for p in files}


def start(work: Path, stage: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", f"stages.{stage}"],
        cwd=work,
        env=repo_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group: the kill takes llama.cpp's converter with it
    )


def kill(proc: subprocess.Popen) -> None:
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def kill_while_writing(work: Path, stage: str, timeout: float) -> bool:
    """Start the stage and kill it the moment a file of its outputs' directories is being written (a new file,
    or a .tmp one, with bytes in it); False when none was seen before the stage ended."""
    dirs = {(work / name).parent for name in OUTPUTS[stage]}
    before = {p: p.stat().st_mtime_ns for d in dirs for p in d.glob("*") if p.is_file()}
    proc = start(work, stage)
    deadline = time.monotonic() + timeout
    while proc.poll() is None and time.monotonic() < deadline:
        for d in dirs:
            for p in d.glob("*"):
                try:
                    stat = p.stat()
                except FileNotFoundError:
                    continue
                if stat.st_size and before.get(p) != stat.st_mtime_ns:
                    kill(proc)
                    return True
        time.sleep(0.001)
    if proc.poll() is None:
        kill(proc)
    return False


def finish(work: Path, stage: str) -> None:
    proc = start(work, stage)
    _, err = proc.communicate(timeout=900)
    assert proc.returncode == 0, err[-3000:]


def remove_outputs(work: Path, stage: str) -> None:
    for name in outputs(work, stage):
        (work / name).unlink(missing_ok=True)


@pytest.fixture(scope="module")
def workspace(chain: SimpleNamespace, tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("export_faults")
    for name in ("models/base", "models/sft", "models/dpo", "models/merged", "data/prepared"):
        shutil.copytree(chain.repo / name, work / name)
    (work / "models/gguf").mkdir()
    shutil.copy(chain.q4, work / "models/gguf" / chain.q4.name)  # eval scores it; quantize is not under test
    write_params(
        work,
        gguf={"parity_samples": 2, "parity_max_tokens": 64},
        eval={"max_samples": 4, "max_generations": 2, "max_new_tokens": 16, "sample_prompts": ["你好"]},
    )
    return work


@pytest.mark.parametrize("stage", ["gguf", "eval"])
def test_a_kill_at_any_point_leaves_each_output_whole_or_absent(workspace: Path, stage: str) -> None:
    if stage == "eval" and not (workspace / OUTPUTS["gguf"][0]).is_file():
        finish(workspace, "gguf")  # eval scores the f16 GGUF too
    started = time.monotonic()
    finish(workspace, stage)
    seconds = time.monotonic() - started
    complete = outputs(workspace, stage)
    assert all(data is not None for data in complete.values()), complete.keys()
    for over_complete in (True, False):
        if not over_complete:
            remove_outputs(workspace, stage)
        for fraction in FRACTIONS:
            proc = start(workspace, stage)
            time.sleep(seconds * fraction)
            kill(proc)
            for name, data in outputs(workspace, stage).items():
                allowed = (complete.get(name),) if over_complete else (complete.get(name), None)
                assert data in allowed, f"{name} after a kill at {fraction:.0%} of a run ({seconds:.0f} s)"
        # and at the moment an output (or its temp file) is being written
        assert kill_while_writing(workspace, stage, timeout=seconds * 3), "no output was seen being written"
        for name, data in outputs(workspace, stage).items():
            allowed = (complete.get(name),) if over_complete else (complete.get(name), None)
            assert data in allowed, f"{name} after a kill while it was written"
    finish(workspace, stage)  # the next run takes up whatever a kill left behind
    assert outputs(workspace, stage) == complete
    assert not [p for p in workspace.rglob("*") if p.name.endswith(".tmp") or ".tmp." in p.name]
