"""Checkpoints a training stage can resume from, and the atomic writes that make resuming safe.

Checkpoints go to a directory that dvc.yaml declares `persist: true`, so a killed `dvc repro` leaves them
for the next run to resume from; a finished run empties it so they never reach the DVC cache. `run.json`
beside them records the params and input digests of the run that wrote them: a run with other params or
data starts afresh instead of resuming someone else's optimizer state.
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


def last_checkpoint(checkpoint_dir: Path) -> Path | None:
    """The newest complete `checkpoint-N` in `checkpoint_dir`, or None."""
    if not checkpoint_dir.is_dir():
        return None
    complete = [
        path
        for path in checkpoint_dir.glob(f"{CHECKPOINT_PREFIX}*")
        if path.name[len(CHECKPOINT_PREFIX) :].isdigit() and is_complete(path)
    ]
    return max(complete, key=lambda path: int(path.name[len(CHECKPOINT_PREFIX) :]), default=None)


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


def run_fingerprint(params: dict[str, Any], inputs: list[Path]) -> dict[str, Any]:
    """What a checkpoint is only valid for: the stage's params and the digests of its input files."""
    return {"params": params, "inputs": {str(path): file_digest(path) for path in inputs if path.is_file()}}


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
