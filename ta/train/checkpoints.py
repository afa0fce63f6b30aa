"""Checkpoints a training stage can resume from, and the atomic writes that make resuming safe.

Checkpoints go to a directory that dvc.yaml declares `persist: true`, so a killed `dvc repro` leaves them
for the next run to resume from; a finished run empties it so they never reach the DVC cache. `run.json`
beside them records the params, input and code digests and library versions of the run that wrote them: a
run with other params, data, code or libraries starts afresh instead of resuming someone else's optimizer
state. A checkpoint whose weights are damaged is passed over for the one before it, and so is one saved where the
run stopped (its last step, or early stopping's): transformers, resuming from it, trains one step past the end.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from pathlib import Path
from typing import Any

from ta.files import write_atomically

log = logging.getLogger("checkpoints")

CHECKPOINT_PREFIX = "checkpoint-"
COMPLETE_MARKER = "trainer_state.json"  # the Trainer writes it last: without it, whole, a checkpoint was cut short
RUN_STAMP = "run.json"


def is_complete(checkpoint: Path) -> bool:
    """The checkpoint's trainer state is there and whole. The Trainer writes it in place (open, then write),
    so a run killed in between leaves it empty or cut short, and resuming from it fails on a JSON decode."""
    try:
        json.loads((checkpoint / COMPLETE_MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return True


def damaged_file(checkpoint: Path) -> str | None:
    """What is wrong with the checkpoint's weights or optimizer state, or None. A file cut short (a full
    disk, a copy interrupted) is found from its own structure without reading the tensors: a safetensors
    header must account for the file's size exactly, a torch.save file is a zip whose directory is at its end."""
    import zipfile

    from safetensors import SafetensorError, safe_open

    for path in sorted(checkpoint.rglob("*")):
        try:
            if path.suffix == ".safetensors":
                with safe_open(str(path), framework="pt") as f:
                    f.keys()
            elif path.suffix in (".pt", ".pth", ".bin") and not zipfile.is_zipfile(path):
                return f"{path.name}: not a whole torch.save file"
        except (SafetensorError, OSError) as err:
            return f"{path.name}: {' '.join(str(err).split())}"
    return None


def stopped_there(checkpoint: Path) -> bool:
    """The run stopped at this (complete) checkpoint: the Trainer saved it with `should_training_stop` set. Resumed
    from it, transformers (5.x) trains a step before it checks that flag again: a step past `max_steps`, logged
    and evaluated, or past early stopping's end."""
    state = json.loads((checkpoint / COMPLETE_MARKER).read_text(encoding="utf-8"))
    control = state.get("stateful_callbacks", {}).get("TrainerControl", {})
    return bool(control.get("args", {}).get("should_training_stop"))


def last_checkpoint(checkpoint_dir: Path) -> Path | None:
    """The newest complete and undamaged `checkpoint-N` in `checkpoint_dir` where the run had not stopped, or
    None. A newer one whose weights are damaged is passed over with a warning: resuming from it would end the
    run in a traceback; one where the run stopped (killed while the model was saved) is passed over too: the
    steps from the one before are trained again, to the same end."""
    if not checkpoint_dir.is_dir():
        return None
    complete = [
        path
        for path in checkpoint_dir.glob(f"{CHECKPOINT_PREFIX}*")
        if path.name[len(CHECKPOINT_PREFIX) :].isdigit() and is_complete(path)
    ]
    for path in sorted(complete, key=lambda path: int(path.name[len(CHECKPOINT_PREFIX) :]), reverse=True):
        damage = damaged_file(path)
        if damage is not None:
            log.warning("%s: damaged (%s); not resuming from it, trying the one before", path, damage)
        elif stopped_there(path):
            log.info("%s: the run stopped there; resuming from the one before", path)
        else:
            return path
    return None


def file_digest(path: Path) -> str:
    """sha256 of a file; for one over 64 MiB (model weights), its size and mtime, which a rerun in the same
    workspace keeps and a rebuild or checkout changes."""
    stat = path.stat()
    if stat.st_size > 64 << 20:
        return f"size {stat.st_size}, mtime {stat.st_mtime_ns}"
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# The libraries whose versions decide what a checkpoint holds and how it is read back.
TRAINING_LIBRARIES = ("torch", "transformers", "trl", "peft", "accelerate")
PROJECT_ROOT = Path(__file__).resolve().parents[2]  # where stages/ and ta/ are: the code, not the workspace


def library_versions() -> dict[str, str | None]:
    from importlib.metadata import PackageNotFoundError, version

    versions: dict[str, str | None] = {}
    for name in TRAINING_LIBRARIES:
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            versions[name] = None
    return versions


def run_fingerprint(params: dict[str, Any], inputs: list[Path], code: tuple[str, ...] = ()) -> dict[str, Any]:
    """What a checkpoint is only valid for: the stage's params, the digests of its input files and of its
    code (`code`: files relative to the project, the stage's code deps in dvc.yaml), and the training
    libraries' versions. After a fix to the code or an upgrade, DVC reruns the stage: it must start afresh,
    not resume the old run."""
    return {
        "params": params,
        "inputs": {str(path): file_digest(path) for path in inputs if path.is_file()},
        "code": {name: file_digest(PROJECT_ROOT / name) for name in code},
        "libraries": library_versions(),
    }


def prepare_resume(checkpoint_dir: Path, fingerprint: dict[str, Any]) -> None:
    """Keep the checkpoints of an interrupted run with this very fingerprint; clear any others.
    Runs once, before any worker starts, so that all ranks see the same checkpoints."""
    stamp = checkpoint_dir / RUN_STAMP
    text = json.dumps(fingerprint, sort_keys=True, indent=1, ensure_ascii=False) + "\n"
    if checkpoint_dir.is_dir() and any(checkpoint_dir.iterdir()):
        if not stamp.is_file() or stamp.read_text(encoding="utf-8") != text:
            log.info("%s: checkpoints of a run with other params or data; starting afresh", checkpoint_dir)
            clear_checkpoints(checkpoint_dir)
    checkpoint_dir.mkdir(parents=True, exist_ok=True)
    write_atomically(stamp, text)


def clear_checkpoints(checkpoint_dir: Path) -> None:
    """Leave `checkpoint_dir` empty (it stays: DVC records the persisted output as an empty directory)."""
    if checkpoint_dir.is_dir():
        shutil.rmtree(checkpoint_dir)
    checkpoint_dir.mkdir(parents=True, exist_ok=True)
