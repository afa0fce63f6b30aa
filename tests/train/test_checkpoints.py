"""Resumable training (ta/train/checkpoints.py): a stage killed with SIGKILL after a checkpoint picks up from it
on the next run and ends where an uninterrupted run ends; half-written checkpoints and those of a run with
other params or data are never resumed."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ta.train import checkpoints
from tests.helpers import copy_workspace, repo_env, run_module, set_params, tsv_steps

RESUME = {"max_steps": 6, "save_steps": 2, "eval_steps": 2, "logging_steps": 1}


def final_loss(workspace: Path, stage: str) -> tuple[int, float]:
    """(step, train loss) of the last row DVCLive logged."""
    last = (workspace / f"dvclive/{stage}/plots/metrics/loss.tsv").read_text(encoding="utf-8").splitlines()[-1]
    step, loss = last.split("\t")[:2]
    return int(step), float(loss)


def kill_after_first_checkpoint(workspace: Path, stage: str) -> None:
    with (workspace / "killed.log").open("w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", f"stages.{stage}"], cwd=workspace, stdout=log, stderr=log, env=repo_env()
        )
        deadline = time.monotonic() + 600
        # Complete, not merely there: the trainer state exists, empty, from the moment the Trainer opens it.
        while proc.poll() is None and checkpoints.last_checkpoint(workspace / f"checkpoints/{stage}") is None:
            assert time.monotonic() < deadline, "no checkpoint within 600 s"
            time.sleep(0.05)
        proc.kill()  # SIGKILL: no cleanup runs
        proc.wait()
    assert proc.returncode == -9, f"the run ended by itself before it could be killed ({proc.returncode})"


def killed_run_resumes_and_ends_like_an_uninterrupted_one(stage: str, workspace: Path, tmp_path: Path) -> None:
    set_params(workspace, **{stage: RESUME})
    uninterrupted, interrupted = workspace, copy_workspace(workspace, tmp_path / "interrupted")

    result = run_module(f"stages.{stage}", uninterrupted)
    assert result.returncode == 0, result.stderr[-3000:]

    kill_after_first_checkpoint(interrupted, stage)
    assert not (interrupted / f"models/{stage}").exists()
    assert checkpoints.last_checkpoint(interrupted / f"checkpoints/{stage}") is not None
    result = run_module(f"stages.{stage}", interrupted)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Resuming from checkpoint-" in result.stderr

    step, loss = final_loss(interrupted, stage)
    expected_step, expected_loss = final_loss(uninterrupted, stage)
    assert step == expected_step == 6
    assert loss == pytest.approx(expected_loss, abs=1e-3)
    # The resumed run's curve holds each step once, as the uninterrupted one does.
    assert tsv_steps(interrupted / f"dvclive/{stage}/plots/metrics/loss.tsv") == [1, 2, 3, 4, 5, 6]
    assert not any((interrupted / f"checkpoints/{stage}").iterdir())


def test_a_killed_sft_run_resumes_and_ends_like_an_uninterrupted_one(training_workspace: Path, tmp_path: Path) -> None:
    killed_run_resumes_and_ends_like_an_uninterrupted_one("sft", training_workspace, tmp_path)


def test_a_killed_dpo_run_resumes_and_ends_like_an_uninterrupted_one(
    dpo_training_workspace: Path, tmp_path: Path
) -> None:
    killed_run_resumes_and_ends_like_an_uninterrupted_one("dpo", dpo_training_workspace, tmp_path)


def test_incomplete_checkpoints_are_not_resumed(tmp_path: Path) -> None:
    for step, complete in ((2, True), (4, True), (6, False)):
        checkpoint = tmp_path / f"checkpoint-{step}"
        checkpoint.mkdir()
        if complete:
            (checkpoint / checkpoints.COMPLETE_MARKER).write_text("{}")
    (tmp_path / "checkpoint-best").mkdir()
    (tmp_path / "checkpoint-10.tmp").mkdir()
    assert checkpoints.last_checkpoint(tmp_path) == tmp_path / "checkpoint-4"
    assert checkpoints.last_checkpoint(tmp_path / "absent") is None


def test_the_newest_is_found_by_number_not_by_name(tmp_path: Path) -> None:
    for step in (9, 10, 100):
        (tmp_path / f"checkpoint-{step}").mkdir()
        (tmp_path / f"checkpoint-{step}" / checkpoints.COMPLETE_MARKER).write_text("{}")
    assert checkpoints.last_checkpoint(tmp_path) == tmp_path / "checkpoint-100"


@pytest.mark.parametrize("written", [0, 0.5], ids=["empty", "cut-short"])
def test_a_checkpoint_killed_while_its_trainer_state_was_written_is_not_resumed(tmp_path: Path, written) -> None:
    # The Trainer opens trainer_state.json, then writes it: a SIGKILL in between leaves it empty or partial,
    # and the Trainer, resuming from that checkpoint, would fail to decode it.
    state = json.dumps({"global_step": 4, "log_history": [{"loss": 1.5, "step": 4}]}, indent=2) + "\n"
    for step, text in ((2, state), (4, state[: int(len(state) * written)])):
        (tmp_path / f"checkpoint-{step}").mkdir()
        (tmp_path / f"checkpoint-{step}" / checkpoints.COMPLETE_MARKER).write_text(text)
    assert checkpoints.last_checkpoint(tmp_path) == tmp_path / "checkpoint-2"


def test_a_checkpoint_where_the_run_stopped_is_passed_over_for_the_one_before(tmp_path: Path) -> None:
    # Saved at the last step (or early stopping's) with should_training_stop set: the run was killed while it
    # saved the model. transformers, resuming from it, would train, log and evaluate a step past the end.
    for step, stopped in ((2, False), (4, True)):
        control = {"args": {"should_save": True, "should_training_stop": stopped}, "attributes": {}}
        state = {"global_step": step, "max_steps": 4, "stateful_callbacks": {"TrainerControl": control}}
        (tmp_path / f"checkpoint-{step}").mkdir()
        (tmp_path / f"checkpoint-{step}" / checkpoints.COMPLETE_MARKER).write_text(json.dumps(state))
    assert checkpoints.last_checkpoint(tmp_path) == tmp_path / "checkpoint-2"
    shutil.rmtree(tmp_path / "checkpoint-2")
    assert checkpoints.last_checkpoint(tmp_path) is None  # none before it: the run starts afresh


def test_checkpoints_of_other_params_or_data_are_cleared(tmp_path: Path) -> None:
    directory = tmp_path / "checkpoints"
    data = tmp_path / "train.jsonl"
    data.write_text('{"messages": []}\n')
    checkpoints.prepare_resume(directory, checkpoints.run_fingerprint({"lr": 1.0e-3}, [data]))
    (directory / "checkpoint-2").mkdir()

    checkpoints.prepare_resume(directory, checkpoints.run_fingerprint({"lr": 1.0e-3}, [data]))
    assert (directory / "checkpoint-2").is_dir()  # same params, same data: kept for resuming

    data.write_text('{"messages": [1]}\n')
    checkpoints.prepare_resume(directory, checkpoints.run_fingerprint({"lr": 1.0e-3}, [data]))
    assert not (directory / "checkpoint-2").exists()  # other data: cleared

    (directory / "checkpoint-2").mkdir()
    checkpoints.prepare_resume(directory, checkpoints.run_fingerprint({"lr": 2.0e-3}, [data]))
    assert not (directory / "checkpoint-2").exists()  # other params: cleared
    stamp = json.loads((directory / checkpoints.RUN_STAMP).read_text())
    assert stamp["params"] == {"lr": 2.0e-3}
    assert sorted(path.name for path in directory.iterdir()) == [checkpoints.RUN_STAMP]  # no temp file left


def test_checkpoints_made_with_other_compute_settings_are_cleared(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Threads, CPU kernels and determinism (params `reproducibility`) choose the bytes a run writes: a checkpoint
    made under other settings is not resumed, by sft or by dpo."""
    import dataclasses

    from ta.config import load_params
    from ta.train import dpo, sft

    shipped = load_params(checkpoints.PROJECT_ROOT / "params.yaml")
    monkeypatch.chdir(tmp_path)  # no data or models here: their absence is fingerprinted alike each time
    settings = shipped.reproducibility
    others = [
        dataclasses.replace(settings, threads=settings.threads + 1),
        dataclasses.replace(settings, cpu_capability="native" if settings.cpu_capability == "avx2" else "avx2"),
        dataclasses.replace(settings, deterministic=not settings.deterministic),
    ]
    stages = {
        "sft": lambda compute: sft.fingerprint(shipped.sft, shipped.lr, compute),
        "dpo": lambda compute: dpo.fingerprint(shipped.dpo, compute),
    }
    for name, fingerprint in stages.items():
        directory = tmp_path / name
        for other in others:
            checkpoints.prepare_resume(directory, fingerprint(settings))
            (directory / "checkpoint-2").mkdir()
            checkpoints.prepare_resume(directory, fingerprint(settings))
            assert (directory / "checkpoint-2").is_dir(), name  # the same settings: kept for resuming
            checkpoints.prepare_resume(directory, fingerprint(other))
            assert not (directory / "checkpoint-2").exists(), (name, other)


def test_checkpoints_without_a_stamp_are_not_trusted(tmp_path: Path) -> None:
    (tmp_path / "checkpoint-2").mkdir(parents=True)
    checkpoints.prepare_resume(tmp_path, checkpoints.run_fingerprint({}, []))
    assert sorted(p.name for p in tmp_path.iterdir()) == [checkpoints.RUN_STAMP]


def test_large_files_are_fingerprinted_by_size_and_time(tmp_path: Path) -> None:
    import hashlib
    import os

    small = tmp_path / "small.json"
    small.write_text("{}")
    assert checkpoints.file_digest(small) == hashlib.sha256(b"{}").hexdigest()
    big = tmp_path / "model.safetensors"
    with big.open("wb") as f:
        f.truncate((64 << 20) + 1)
    os.utime(big, ns=(1, 2))
    assert checkpoints.file_digest(big) == f"size {(64 << 20) + 1}, mtime 2"
    assert checkpoints.run_fingerprint({"p": 1}, [small, tmp_path / "absent"]) == {
        "params": {"p": 1},
        "inputs": {str(small): hashlib.sha256(b"{}").hexdigest()},
        "code": {},
        "libraries": checkpoints.library_versions(),
    }


def test_clearing_leaves_the_directory_empty_not_gone(tmp_path: Path) -> None:
    (tmp_path / "c" / "checkpoint-1").mkdir(parents=True)
    checkpoints.clear_checkpoints(tmp_path / "c")
    assert (tmp_path / "c").is_dir() and not any((tmp_path / "c").iterdir())


def write_checkpoint(directory: Path, step: int) -> Path:
    """A checkpoint as the Trainer leaves it, in small: whole trainer state, adapter weights (safetensors),
    optimizer state (torch.save)."""
    import torch
    from safetensors.torch import save_file

    checkpoint = directory / f"checkpoint-{step}"
    checkpoint.mkdir(parents=True)
    (checkpoint / checkpoints.COMPLETE_MARKER).write_text(json.dumps({"global_step": step}))
    save_file({"lora_A": torch.ones(4, 8), "lora_B": torch.zeros(8, 4)}, str(checkpoint / "adapter_model.safetensors"))
    torch.save({"state": {0: {"exp_avg": torch.ones(8)}}}, checkpoint / "optimizer.pt")
    return checkpoint


@pytest.mark.parametrize("damaged", ["adapter_model.safetensors", "optimizer.pt"])
def test_a_checkpoint_with_damaged_weights_falls_back_to_the_one_before(
    tmp_path: Path, damaged: str, caplog: pytest.LogCaptureFixture
) -> None:
    import torch
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    older, newer = write_checkpoint(tmp_path, 2), write_checkpoint(tmp_path, 4)
    assert checkpoints.last_checkpoint(tmp_path) == newer
    data = (newer / damaged).read_bytes()
    (newer / damaged).write_bytes(data[: len(data) // 2])  # cut short: a full disk, an interrupted copy
    with pytest.raises((SafetensorError, RuntimeError)):  # what resuming from it would meet
        load_file(str(newer / damaged)) if damaged.endswith(".safetensors") else torch.load(newer / damaged)
    assert checkpoints.last_checkpoint(tmp_path) == older
    assert f"checkpoint-4: damaged ({damaged}: " in caplog.text and "trying the one before" in caplog.text
    (older / "adapter_model.safetensors").write_bytes(b"\x00" * 16)  # garbage, not a header
    assert checkpoints.last_checkpoint(tmp_path) is None


def test_checkpoints_of_other_code_or_libraries_are_cleared(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """After a fix to the stage's code or a library upgrade, DVC reruns the stage: it must not resume."""
    from ta.train import dpo, sft

    directory = tmp_path / "checkpoints"
    fingerprint = checkpoints.run_fingerprint({"lr": 1.0e-3}, [], sft.CODE)
    assert set(fingerprint["code"]) == set(sft.CODE) and fingerprint["libraries"]["torch"] is not None
    checkpoints.prepare_resume(directory, fingerprint)
    (directory / "checkpoint-2").mkdir()

    checkpoints.prepare_resume(directory, checkpoints.run_fingerprint({"lr": 1.0e-3}, [], sft.CODE))
    assert (directory / "checkpoint-2").is_dir()  # the same code and libraries: resumed

    code = tmp_path / "project"
    for name in sft.CODE + dpo.CODE:
        (code / name).parent.mkdir(parents=True, exist_ok=True)
        (code / name).write_bytes((checkpoints.PROJECT_ROOT / name).read_bytes())
    monkeypatch.setattr(checkpoints, "PROJECT_ROOT", code)
    checkpoints.prepare_resume(directory, checkpoints.run_fingerprint({"lr": 1.0e-3}, [], sft.CODE))
    assert (directory / "checkpoint-2").is_dir()  # a copy of the same code: the same digests
    with open(code / "ta/train/sft.py", "a", encoding="utf-8") as f:
        f.write("# a fix\n")
    checkpoints.prepare_resume(directory, checkpoints.run_fingerprint({"lr": 1.0e-3}, [], sft.CODE))
    assert not (directory / "checkpoint-2").exists()  # other code: cleared

    (directory / "checkpoint-2").mkdir()
    monkeypatch.setattr(checkpoints, "TRAINING_LIBRARIES", (*checkpoints.TRAINING_LIBRARIES, "pytest"))
    checkpoints.prepare_resume(directory, checkpoints.run_fingerprint({"lr": 1.0e-3}, [], sft.CODE))
    assert not (directory / "checkpoint-2").exists()  # another library set (as after an upgrade): cleared


@pytest.mark.parametrize("stage", ["sft", "dpo"])
def test_the_code_a_checkpoint_is_keyed_on_is_the_stages_code_in_dvc_yaml(stage: str) -> None:
    import importlib

    import yaml

    from tests.helpers import REPO

    deps = yaml.safe_load((REPO / "dvc.yaml").read_text(encoding="utf-8"))["stages"][stage]["deps"]
    module = importlib.import_module(f"ta.train.{stage}")
    assert sorted(module.CODE) == sorted(dep for dep in deps if dep.endswith(".py"))
