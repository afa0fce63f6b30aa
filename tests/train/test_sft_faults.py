"""sft under kill -9: whenever the stage dies, models/sft is the complete adapter a whole run writes or absent —
never part of one —, every DVCLive file reads back, and the next run finishes, resuming from the newest whole
checkpoint where there is one, with models/sft whole, checkpoints/sft empty and no temp file left.

A first, undisturbed run gives the complete adapter and the stage's wall time; then the stage is killed at
fractions of that time and at the moment a checkpoint or models/sft is being written or renamed into place, first
over the complete adapter, then from none. Each kill's run takes up what the kill before it left. Training on the
CPU is deterministic, resumed or not, so every run that finishes writes the very same adapter.
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

import yaml

from ta.train import checkpoints
from tests.helpers import repo_env, set_params

RUN = {"max_steps": 4, "save_steps": 1, "eval_steps": 2, "logging_steps": 1}  # a checkpoint at every step

# The stage, killed by itself the first time it opens for writing (audit event "open") or renames (audit event
# "os.rename", os.replace's too) a path matching a glob. An outside poll is too slow for this: the adapter is
# written in milliseconds. The weights are written by safetensors' and torch's native code, which Python does
# not audit: a model or checkpoint dir is cut after its weights, at its first config file.
KILL_AT_EVENT = """
import fnmatch, os, runpy, signal, sys

event_name, pattern = sys.argv[1:3]
del sys.argv[1:3]


def kill_at(event, args):
    if event != event_name or not isinstance(args[0], (str, bytes, os.PathLike)):
        return
    if event == "open" and not args[2] & (os.O_WRONLY | os.O_RDWR):
        return
    if fnmatch.fnmatch(os.path.relpath(os.fsdecode(args[0])), pattern):
        os.killpg(0, signal.SIGKILL)


sys.addaudithook(kill_at)
runpy.run_module("stages.sft", run_name="__main__", alter_sys=True)
"""
EVENTS = {
    "a checkpoint is written": ("open", "checkpoints/sft/checkpoint-*/*"),
    "models/sft is written": ("open", "models/sft*/*"),  # its temp dir, or models/sft itself were it written in place
    "models/sft is renamed into place": ("os.rename", "models/sft.tmp"),  # over the old one: after it moved aside
}
# The kills, in order: at a fraction of a whole run's wall time, or at one of EVENTS. Over the complete adapter,
# then from none; checkpoints do not depend on models/sft: killed there once. The events cover the moments that
# matter (writes and renames); one mid-run kill a phase covers the rest (20/85 % were dropped for CI's time budget).
KILLS = {
    "over the complete adapter": (
        "a checkpoint is written",
        0.5,
        "models/sft is written",
        "models/sft is renamed into place",
    ),
    "from none": (0.5, "models/sft is written"),
}


def model_files(work: Path) -> dict[str, bytes] | None:
    """models/sft's files and their bytes; None when there is no models/sft."""
    model = work / "models/sft"
    if not model.is_dir():
        return None
    return {str(p.relative_to(model)): p.read_bytes() for p in sorted(model.rglob("*")) if p.is_file()}


def start(work: Path, *kill_at: str) -> subprocess.Popen:
    """The stage; `kill_at`: an event and a glob, to kill it at (KILL_AT_EVENT)."""
    command = ["-c", KILL_AT_EVENT, *kill_at] if kill_at else ["-m", "stages.sft"]
    return subprocess.Popen(
        [sys.executable, *command],
        cwd=work,
        env=repo_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # its own process group: the kill takes any worker with it
    )


def kill(proc: subprocess.Popen) -> None:
    os.killpg(proc.pid, signal.SIGKILL)  # a run that already ended is a zombie until waited for: still there
    proc.wait()


def finish(work: Path) -> str:
    """Run the stage to its end; its log."""
    resumable = checkpoints.last_checkpoint(work / "checkpoints/sft")
    result = subprocess.run(
        [sys.executable, "-m", "stages.sft"], cwd=work, env=repo_env(), capture_output=True, text=True, timeout=900
    )
    assert result.returncode == 0, result.stderr[-3000:]
    if resumable:
        assert f"Resuming from {resumable.name}" in result.stderr
    else:
        assert "Resuming from" not in result.stderr
    return result.stderr


def assert_dvclive_reads_back(work: Path, when: str) -> None:
    """Every DVCLive file parses; a plot may end in a row the kill cut short (the next run drops it)."""
    live = work / "dvclive/sft"
    if (live / "metrics.json").exists():
        assert isinstance(json.loads((live / "metrics.json").read_text(encoding="utf-8")), dict), when
    if (live / "params.yaml").exists():
        params = yaml.safe_load((live / "params.yaml").read_text(encoding="utf-8"))
        assert isinstance(params, dict) and "sft" in params, when
    for tsv in live.rglob("*.tsv"):
        lines = tsv.read_text(encoding="utf-8").split("\n")
        if len(lines) < 2:  # cut inside the header: the next run writes the file afresh
            continue
        header, rows = lines[0].split("\t"), lines[1:-1]  # lines[-1]: "" after a whole row, else a cut one
        assert "step" in header, f"{tsv} {when}"
        for row in rows:
            fields = row.split("\t")
            assert len(fields) == len(header), f"{tsv}: {row!r} {when}"
            [float(field) for field in fields]


def curves(work: Path) -> dict[str, bytes]:
    plots = work / "dvclive/sft/plots/metrics"
    return {str(tsv.relative_to(plots)): tsv.read_bytes() for tsv in sorted(plots.rglob("*.tsv"))}


# What a resumed run logs otherwise than an uninterrupted one, by transformers' and TRL's design: the final train
# loss is the mean over the resumed run's steps, and TRL's token count starts again from zero.
RESUME_COUNTED = ("train/loss.tsv", "num_tokens.tsv", "eval/num_tokens.tsv")


def assert_finished(work: Path, complete: dict[str, bytes], complete_curves: dict[str, bytes]) -> None:
    assert model_files(work) == complete
    assert not any((work / "checkpoints/sft").iterdir())
    assert not [p for p in work.rglob("*") if p.name.endswith((".tmp", ".old")) or ".tmp." in p.name]
    assert_dvclive_reads_back(work, "after a whole run")
    # The resumed runs' curves read as the uninterrupted run's: each step once, none past the end, same values.
    found = curves(work)
    assert found.keys() == complete_curves.keys()
    for name, data in found.items():
        if name in RESUME_COUNTED:
            assert steps_of(data) == steps_of(complete_curves[name]), name
        else:
            assert data == complete_curves[name], name


def steps_of(tsv: bytes) -> list[int]:
    return [int(row.split("\t")[0]) for row in tsv.decode("utf-8").splitlines()[1:]]


def test_a_kill_at_any_point_leaves_models_sft_whole_or_absent(training_workspace: Path) -> None:
    from safetensors import safe_open

    work = training_workspace
    set_params(work, sft=RUN)
    started = time.monotonic()
    finish(work)
    seconds = time.monotonic() - started
    complete, complete_curves = model_files(work), curves(work)
    assert steps_of(complete_curves["loss.tsv"]) == [1, 2, 3, 4]
    assert complete and json.loads(complete["adapter_config.json"])["peft_type"] == "LORA"
    with safe_open(str(work / "models/sft/adapter_model.safetensors"), framework="pt") as f:
        assert list(f.keys())
    assert_finished(work, complete, complete_curves)

    for phase, kills in KILLS.items():
        if phase == "from none":
            shutil.rmtree(work / "models/sft")
        for point in kills:
            if isinstance(point, float):
                when = f"{phase}, after a kill at {point:.0%} of a run ({seconds:.0f} s)"
                proc = start(work)
                time.sleep(seconds * point)
                kill(proc)
            else:
                when = f"{phase}, after a kill when {point}"
                assert start(work, *EVENTS[point]).wait(timeout=900) == -signal.SIGKILL, f"{when}: never reached"
            # Absent is allowed over the complete adapter too: a kill between atomic_directory's two renames.
            assert model_files(work) in (complete, None), f"models/sft {when}"
            assert_dvclive_reads_back(work, when)
        finish(work)  # takes up whatever the kills left behind
        assert_finished(work, complete, complete_curves)
