"""What every benchmark reports with its figures, and how its section of BENCHMARKS.md is rewritten.

A benchmark's section sits between `<!-- bench:NAME -->` and `<!-- /bench:NAME -->`; a run replaces what is
between the two markers and nothing else (a file without them gets the pair appended at its end).
"""

from __future__ import annotations

import os
import platform
import re
import statistics
import subprocess
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent


@dataclass
class Options:
    """What `python -m bench` was asked for; each benchmark reads the part it needs."""

    workspace: Path  # where the pipeline's outputs are: models/, data/prepared/
    repeat: int
    smoke: bool
    command: str  # the command line as typed, for the report
    extra: dict[str, Any] = field(default_factory=dict)  # one benchmark's own options (--rows, --train-model ...)


@dataclass
class Result:
    """One benchmark's run: its markdown section body and the figures behind it (printed as JSON)."""

    markdown: str
    figures: dict[str, Any]


def median(values: Iterable[float]) -> float:
    return statistics.median(list(values))


def ratio(a: float, b: float) -> float:
    return a / b if b else float("nan")


def rotated(variants: Sequence[str], turn: int) -> list[str]:
    """The variants in order, starting with the `turn`-th (modulo their number)."""
    return [variants[(turn + i) % len(variants)] for i in range(len(variants))]


def alternate(variants: Sequence[str], repeat: int, run_one: Callable[[str, int], Any]) -> dict[str, list[Any]]:
    """Run every variant once per round, `repeat` rounds, starting each round with the next variant, so a
    slow phase of a shared machine falls on each variant in turn rather than on one."""
    runs: dict[str, list[Any]] = {name: [] for name in variants}
    for round_ in range(repeat):
        for name in rotated(variants, round_):
            runs[name].append(run_one(name, round_))
    return runs


def machine() -> dict[str, Any]:
    """CPU model, cores this process may use, RAM, software versions and the load when the run started."""
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
        meminfo = Path("/proc/meminfo").read_text().splitlines()
        mem_kib = next(int(line.split()[1]) for line in meminfo if line.startswith("MemTotal"))
    except (OSError, StopIteration):
        mem_kib = 0
    return {
        "cpu": cpu,
        "cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "ram_gib": round(mem_kib / 2**20, 1),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "load_average": round(os.getloadavg()[0], 2),
        "commit": _commit(),
        "date": time.strftime("%Y-%m-%d %H:%M %Z"),
    }


def _commit() -> str:
    result = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True)
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO, capture_output=True)
    return result.stdout.strip() + ("+changes" if dirty.stdout.strip() else "") if result.returncode == 0 else "?"


def header(options: Options, info: dict[str, Any]) -> str:
    """The lines every section starts with: when, on what, and the exact command."""
    gpu = f", GPU {info['gpu']}" if info["gpu"] else ", no GPU"
    smoke = " **Smoke run: minimal sizes, not a measurement.**" if options.smoke else ""
    return (
        f"Run {info['date']} at commit {info['commit']}: `{options.command}`.{smoke}\n"
        f"Machine: {info['cpu']}, {info['cores']} cores, {info['ram_gib']} GiB RAM{gpu}, torch {info['torch']}, "
        f"Python {info['python']}; load average {info['load_average']} as the run started.\n"
    )


def table(columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def rewrite_section(path: Path, name: str, body: str) -> None:
    """Replace the text between this benchmark's markers in `path` (append the pair if the file has none)."""
    begin, end = f"<!-- bench:{name} -->", f"<!-- /bench:{name} -->"
    text = path.read_text(encoding="utf-8") if path.exists() else ""
    block = f"{begin}\n{body.rstrip()}\n{end}"
    pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end), re.S)
    if pattern.search(text):
        text = pattern.sub(lambda _: block, text, count=1)
    else:
        text = text.rstrip("\n") + ("\n\n" if text else "") + block + "\n"
    path.write_text(text, encoding="utf-8")
