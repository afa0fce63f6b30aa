"""Writing outputs whole or not at all."""

from __future__ import annotations

import os
from pathlib import Path


def write_atomically(path: Path, text: str) -> None:
    """Write `path` whole or not at all (a temp file renamed over it), for a file a resumed run reads back.
    The temp name is fixed, so one a killed run leaves behind is taken up by the next write."""
    temp = path.with_name(f"{path.name}.tmp")
    temp.write_text(text, encoding="utf-8")
    os.replace(temp, path)
