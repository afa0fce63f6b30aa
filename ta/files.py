"""Writing outputs whole or not at all.

An output is written to a temp file beside it (same directory, so same file system) and renamed over it
(`os.replace`, atomic on POSIX) only once it is complete — and, for a file a check must pass first (a GGUF's
parity, a quantized file's tensor types), only once the check passed. A run killed or failed half-way
leaves the old complete file (or none), never part of a new one. The temp name is fixed (`<name>.tmp`), so
one a killed run leaves behind is taken up by the next write.
"""

from __future__ import annotations

import errno
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any


def temp_path(path: Path) -> Path:
    return path.with_name(f"{path.name}.tmp")


@contextmanager
def atomic_output(path: Path) -> Iterator[Path]:
    """A temp path to write `path`'s new content to: renamed over `path` when the block ends normally,
    removed when it raises (a failed check included)."""
    temp = temp_path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        yield temp
    except OSError as err:
        temp.unlink(missing_ok=True)
        if err.errno == errno.ENOSPC and not err.filename:  # a buffered write says not which file: name it
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path)) from err
        raise
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    os.replace(temp, path)


@contextmanager
def open_atomically(path: Path, mode: str = "wb", **kwargs: Any) -> Iterator[IO[Any]]:
    """open() for writing `path` whole or not at all (atomic_output around it)."""
    with atomic_output(path) as temp, open(temp, mode, **kwargs) as f:
        yield f


@contextmanager
def atomic_directory(path: Path) -> Iterator[Path]:
    """A temp directory beside `path` to write a whole directory output into (a model: weights, config,
    tokenizer files). When the block ends normally it takes `path`'s place: the old one is moved aside
    (`<name>.old`), the new one renamed in, the old one deleted; a kill between those renames leaves no
    directory at `path`, never a mix of the two. Removed when the block raises."""
    temp, old = temp_path(path), path.with_name(f"{path.name}.old")
    for leftover in (temp, old):  # of a run killed before
        shutil.rmtree(leftover, ignore_errors=True)
    temp.mkdir(parents=True)
    try:
        yield temp
    except BaseException:
        shutil.rmtree(temp, ignore_errors=True)
        raise
    if path.exists():
        os.replace(path, old)
    os.replace(temp, path)
    shutil.rmtree(old, ignore_errors=True)


def write_atomically(path: Path, text: str) -> None:
    """Write `path` whole or not at all, for a file a resumed run or a reader may read back."""
    with atomic_output(path) as temp:
        temp.write_text(text, encoding="utf-8")
