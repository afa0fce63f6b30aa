"""Resume: a stage killed with SIGKILL after its first checkpoint picks up from it on the next run and ends
where an uninterrupted run ends; checkpoints of a run with other params are not resumed."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_sft import make_workspace, run_stage, set_params, stage_env, tsv_steps

from stages import launch

RESUME_PARAMS = {"max_steps": 6, "save_steps": 2, "eval_steps": 2, "logging_steps": 1}


def final_loss(workspace: Path) -> tuple[int, float]:
    """(step, train loss) of the last row DVCLive logged."""
    last = (workspace / "dvclive/sft/plots/metrics/loss.tsv").read_text(encoding="utf-8").splitlines()[-1]
    step, loss = last.split("\t")[:2]
    return int(step), float(loss)


def kill_after_first_checkpoint(workspace: Path) -> None:
    checkpoints = workspace / "checkpoints/sft"
    with (workspace / "killed.log").open("w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "stages.sft"], cwd=workspace, stdout=log, stderr=log, env=stage_env()
        )
        deadline = time.monotonic() + 300
        # Complete, not merely there: the trainer state exists, empty, from the moment the Trainer opens it.
        while proc.poll() is None and launch.last_checkpoint(checkpoints) is None:
            assert time.monotonic() < deadline, "no checkpoint within 300 s"
            time.sleep(0.05)
        proc.kill()  # SIGKILL: no cleanup runs
        proc.wait()
    assert proc.returncode == -9, f"the run ended by itself before it could be killed ({proc.returncode})"


def test_killed_run_resumes_and_ends_like_an_uninterrupted_one(tmp_path: Path) -> None:
    uninterrupted = make_workspace(tmp_path / "uninterrupted")
    set_params(uninterrupted, sft=RESUME_PARAMS)
    interrupted = tmp_path / "interrupted"
    shutil.copytree(uninterrupted, interrupted)

    result = run_stage("stages.sft", uninterrupted)
    assert result.returncode == 0, result.stderr[-3000:]

    kill_after_first_checkpoint(interrupted)
    assert not (interrupted / "models/sft").exists()
    assert launch.last_checkpoint(interrupted / "checkpoints/sft") is not None
    result = run_stage("stages.sft", interrupted)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Resuming from checkpoint-" in result.stderr

    step, loss = final_loss(interrupted)
    expected_step, expected_loss = final_loss(uninterrupted)
    assert step == expected_step == 6
    assert loss == pytest.approx(expected_loss, abs=1e-3)
    # The resumed run's curve holds each step once, as the uninterrupted one does.
    assert tsv_steps(interrupted / "dvclive/sft/plots/metrics/loss.tsv") == [1, 2, 3, 4, 5, 6]
    assert not any((interrupted / "checkpoints/sft").iterdir())


def test_incomplete_checkpoints_are_not_resumed(tmp_path: Path) -> None:
    for step, complete in ((2, True), (4, True), (6, False)):
        checkpoint = tmp_path / f"checkpoint-{step}"
        checkpoint.mkdir()
        if complete:
            (checkpoint / launch.COMPLETE_MARKER).write_text("{}")
    (tmp_path / "checkpoint-best").mkdir()
    assert launch.last_checkpoint(tmp_path) == tmp_path / "checkpoint-4"
    assert launch.last_checkpoint(tmp_path / "absent") is None


@pytest.mark.parametrize("written", [0, 0.5], ids=["empty", "cut-short"])
def test_a_checkpoint_killed_while_its_trainer_state_was_written_is_not_resumed(tmp_path: Path, written) -> None:
    # The Trainer opens trainer_state.json, then writes it: a SIGKILL in between leaves it empty or partial,
    # and the Trainer, resuming from that checkpoint, would fail to decode it.
    state = json.dumps({"global_step": 4, "log_history": [{"loss": 1.5, "step": 4}]}, indent=2) + "\n"
    for step, text in ((2, state), (4, state[: int(len(state) * written)])):
        (tmp_path / f"checkpoint-{step}").mkdir()
        (tmp_path / f"checkpoint-{step}" / launch.COMPLETE_MARKER).write_text(text)
    assert launch.last_checkpoint(tmp_path) == tmp_path / "checkpoint-2"


def test_checkpoints_of_other_params_are_cleared(tmp_path: Path) -> None:
    checkpoints = tmp_path / "checkpoints"
    data = tmp_path / "train.jsonl"
    data.write_text('{"messages": []}\n')
    first = launch.run_fingerprint({"lr": 1.0e-3}, [data])
    launch.prepare_resume(checkpoints, first)
    (checkpoints / "checkpoint-2").mkdir()

    launch.prepare_resume(checkpoints, launch.run_fingerprint({"lr": 1.0e-3}, [data]))
    assert (checkpoints / "checkpoint-2").is_dir()  # same params, same data: kept for resuming

    data.write_text('{"messages": [1]}\n')
    launch.prepare_resume(checkpoints, launch.run_fingerprint({"lr": 1.0e-3}, [data]))
    assert not (checkpoints / "checkpoint-2").exists()  # other data: cleared

    (checkpoints / "checkpoint-2").mkdir()
    launch.prepare_resume(checkpoints, launch.run_fingerprint({"lr": 2.0e-3}, [data]))
    assert not (checkpoints / "checkpoint-2").exists()  # other params: cleared
    stamp = json.loads((checkpoints / launch.RUN_STAMP).read_text())
    assert stamp["params"] == {"lr": 2.0e-3}
    assert sorted(path.name for path in checkpoints.iterdir()) == [launch.RUN_STAMP]  # no temp file left


def test_an_atomic_write_leaves_the_old_text_when_it_fails(tmp_path: Path) -> None:
    stamp = tmp_path / "run.json"
    launch.write_atomically(stamp, "old\n")
    with pytest.raises(UnicodeEncodeError):
        launch.write_atomically(stamp, "new\n\udc80")  # fails half-way through writing, like a killed run
    assert stamp.read_text() == "old\n"
