"""The response cache: every reply the endpoint gave, keyed by the full request, so that a rerun or a run
resumed after a kill sends nothing it already paid for.

The key is the SHA-256 of the endpoint URL and the exact request body (model, messages, sampling settings,
the request's seed, response format, extra fields) — never the API key. The file is JSON lines, appended
and flushed as each reply arrives: a killed run loses at most the replies still in flight, and a line
half-written at the kill is cut off on the next load. At the end of a run the file is rewritten sorted
by key, so the same replies always make the same bytes.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from ta.errors import SelfInstructError
from ta.selfinstruct.filters import Reply


def request_key(endpoint: str, request: dict[str, Any]) -> str:
    canonical = json.dumps({"endpoint": endpoint, "request": request}, ensure_ascii=False, sort_keys=True)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


class ResponseCache:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.entries: dict[str, dict[str, Any]] = {}
        self._file: Any = None

    def load(self) -> ResponseCache:
        """Read the file (missing: empty); a broken last line (a kill mid-write) is cut off."""
        if not self.path.is_file():
            return self
        lines = self.path.read_bytes().split(b"\n")
        offset = 0  # where the current line starts
        for number, line in enumerate(lines, 1):
            if line.strip():
                try:
                    entry = json.loads(line)
                    Reply(**entry["reply"])
                    key = entry["key"]
                except (json.JSONDecodeError, KeyError, TypeError, UnicodeDecodeError) as err:
                    if not any(rest.strip() for rest in lines[number:]):  # the last line, cut off by a kill
                        with open(self.path, "r+b") as f:
                            f.truncate(offset)
                        break
                    raise SelfInstructError(
                        f"{self.path}:{number}: not a cache entry ({type(err).__name__}); delete the line"
                    ) from None
                self.entries[key] = entry
            offset += len(line) + 1
        return self

    def get(self, key: str) -> Reply | None:
        entry = self.entries.get(key)
        return Reply(**entry["reply"]) if entry else None

    def put(self, key: str, endpoint: str, request: dict[str, Any], reply: Reply) -> None:
        entry = {"key": key, "endpoint": endpoint, "request": request, "reply": reply.__dict__}
        self.entries[key] = entry
        if self._file is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = open(self.path, "a", encoding="utf-8")
        self._file.write(json.dumps(entry, ensure_ascii=False) + "\n")
        self._file.flush()

    def write_sorted(self) -> None:
        """Rewrite the file sorted by key (atomically): the same entries, the same bytes."""
        self.close()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            for key in sorted(self.entries):
                f.write(json.dumps(self.entries[key], ensure_ascii=False) + "\n")
        os.replace(tmp, self.path)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
