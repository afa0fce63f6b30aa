"""Benchmark `turnaround`: how long a user waits for `dvc repro` of the default, stage by stage.

Reads  the repository's last commit (cloned with git into a temporary folder; uncommitted changes are not in it)

Each round runs, in the clone, a forced `dvc repro --force` (every stage reruns) and then the no-op
`dvc repro` (nothing changed: every stage skipped). A stage's time runs from DVC's "Running stage" line to the
next one (or to the end of the command), so it includes DVC's hashing and caching of that stage's outputs;
lines are timed as they arrive (DVC and the stages run unbuffered). The smoke run does the same for the one
stage `selfinstruct` (off by default: it passes its review file through) with `--single-item`.
"""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.report import REPO, Options, Result, median, table

log = logging.getLogger("bench.turnaround")

RUNNING = re.compile(r"Running stage '([^']+)'")
SMOKE_TARGET = ["--single-item", "selfinstruct"]


def timed_repro(clone: Path, args: list[str]) -> dict[str, float]:
    """Run `dvc repro ARGS` in the clone; seconds per stage that ran, and "total"."""
    bin_dir = Path(sys.executable).parent  # the stages' `python` must be this venv's
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "PYTHONUNBUFFERED": "1", "DVC_NO_ANALYTICS": "1"}
    env.pop("PYTHONPATH", None)  # the clone's own code, not the checkout's that started the benchmark
    command = [str(bin_dir / "dvc"), "repro", *args]
    started = time.perf_counter()
    marks: list[tuple[str, float]] = []
    tail: list[str] = []
    process = subprocess.Popen(command, cwd=clone, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert process.stdout is not None
    for line in process.stdout:
        tail = [*tail[-40:], line]
        if match := RUNNING.search(line):
            marks.append((match[1], time.perf_counter()))
    ended = time.perf_counter()
    if process.wait() != 0:
        sys.exit(f"`{' '.join(command)}` failed in {clone}:\n{''.join(tail)}")
    stages = {name: (marks[i + 1][1] if i + 1 < len(marks) else ended) - at for i, (name, at) in enumerate(marks)}
    return {**stages, "total": ended - started}


def run(options: Options) -> Result:
    target = SMOKE_TARGET if options.smoke else []
    with tempfile.TemporaryDirectory(prefix="bench-turnaround-") as tmp:
        clone = Path(tmp) / "repo"
        subprocess.run(["git", "clone", "--quiet", str(REPO), str(clone)], check=True)
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=clone, capture_output=True, text=True, check=True
        ).stdout.strip()
        forced: list[dict[str, float]] = []
        no_op: list[float] = []
        for round_ in range(options.repeat):
            forced.append(timed_repro(clone, ["--force", *target]))
            no_op.append(timed_repro(clone, target)["total"])
            log.info("round %d: forced %.1f s, no-op %.1f s", round_, forced[-1]["total"], no_op[-1])
    stages = [name for name in forced[0] if name != "total"]
    rows = []
    for name in stages:
        seconds = [r.get(name, 0.0) for r in forced]
        rows.append((f"`{name}`", f"**{median(seconds):.1f}**", ", ".join(f"{s:.1f}" for s in seconds)))
    total = median(r["total"] for r in forced)
    rows.append(("**total**", f"**{total:.1f}**", ", ".join(f"{r['total']:.1f}" for r in forced)))
    rows.append(("no-op `dvc repro`", f"**{median(no_op):.1f}**", ", ".join(f"{s:.1f}" for s in no_op)))
    what = f"`dvc repro --force {' '.join(target)}`" if target else "`dvc repro --force`"
    markdown = (
        f"{what} in a fresh `git clone` of commit {commit}, then the no-op repro, {options.repeat} round(s); "
        "seconds, median (each round).\n\n" + table(("stage", "seconds (median)", "rounds"), rows)
    )
    figures = {"commit": commit, "forced": forced, "no_op": no_op, "total_median_s": total}
    return Result(markdown, figures)
