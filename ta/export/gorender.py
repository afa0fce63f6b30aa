"""Go's own text/template, the engine Ollama fills a Modelfile TEMPLATE with (tools/gotemplate/main.go).

The Go program is built once per environment, on first use, into the venv's bin/ (`go build`; about 13 s,
rebuilt when its source is newer), where Go is installed — Debian's `golang-go`, which `.ci/services.sh`
installs for the tests. `available()` says whether it can run here; quantize's check of the TEMPLATE it
writes uses it and, without Go, says that it skipped the check (the tests always run it).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from ta.errors import ExportError

SOURCE = Path(__file__).resolve().parents[2] / "tools" / "gotemplate"
BINARY = Path(sys.prefix) / "bin" / "ta-gotemplate"


class GoTemplateError(ExportError):
    """A template Go's text/template refuses to parse or execute (its own message, one line)."""


def _stale() -> bool:
    newest = max((p.stat().st_mtime for p in SOURCE.iterdir() if p.suffix in (".go", ".mod")), default=0.0)
    return not BINARY.is_file() or BINARY.stat().st_mtime < newest


def binary() -> Path | None:
    """The built renderer, building it first if needed; None where Go or the source is not there."""
    if not SOURCE.is_dir():
        return BINARY if BINARY.is_file() else None
    if not _stale():
        return BINARY
    go = shutil.which("go")
    if go is None:
        return None
    partial = BINARY.with_name(f".{BINARY.name}.{os.getpid()}")  # renamed whole: parallel builds never clash
    env = {**os.environ, "GOFLAGS": "-mod=mod", "GOTOOLCHAIN": "local", "CGO_ENABLED": "0"}
    env.setdefault("GOCACHE", str(Path(sys.prefix) / "share" / "go-build"))
    built = subprocess.run(
        [go, "build", "-o", str(partial), "."], cwd=SOURCE, env=env, capture_output=True, text=True, check=False
    )
    if built.returncode != 0:
        partial.unlink(missing_ok=True)
        raise GoTemplateError(f"{SOURCE}: go build failed: {built.stderr.strip().splitlines()[-1:]}")
    os.replace(partial, BINARY)
    return BINARY


def available() -> bool:
    return binary() is not None


def render(template: str, data: dict[str, Any]) -> str:
    """The text Go's text/template renders from `template` with `data` (missing keys are errors)."""
    program = binary()
    if program is None:
        raise GoTemplateError("Go is not installed (`apt-get install golang-go`): cannot render a Go template")
    request = json.dumps({"template": template, "data": data})
    result = subprocess.run([program], input=request, capture_output=True, text=True, timeout=60, check=False)
    if result.returncode != 0:
        raise GoTemplateError(result.stderr.strip().removeprefix("gotemplate: "))
    return result.stdout
