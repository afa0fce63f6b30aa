"""Benchmark `turnaround`: how long a user waits for `dvc repro` of the default, stage by stage.

Reads  the repository's last commit (cloned with git into a temporary folder; uncommitted changes are not in it)

Each round runs, in the clone, a forced `dvc repro --force` (every stage reruns) and then the no-op
`dvc repro` (nothing changed: every stage skipped). A stage's time runs from DVC's "Running stage" line to the
next one (or to the end of the command), so it includes DVC's hashing and caching of that stage's outputs;
lines are timed as they arrive (DVC and the stages run unbuffered). The smoke run does the same for the one
stage `selfinstruct` (off by default: it passes its review file through) with `--single-item`.

`--baseline REF` clones REF (a commit, branch or tag of this repository) as well and runs it round by round
alternating with the last commit, so the two compare within one run: a before/after of a change.
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

from bench.report import REPO, Options, Result, alternate, median, ratio, table

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


def clone(at: Path, ref: str) -> str:
    """A fresh `git clone` of this repository at `ref`; returns its short commit."""
    subprocess.run(["git", "clone", "--quiet", str(REPO), str(at)], check=True)
    subprocess.run(["git", "checkout", "--quiet", ref], cwd=at, check=True)
    git = ["git", "rev-parse", "--short", "HEAD"]
    return subprocess.run(git, cwd=at, capture_output=True, text=True, check=True).stdout.strip()


def seconds(values: list[float]) -> str:
    return f"**{median(values):.1f}**"


def run(options: Options) -> Result:
    target = SMOKE_TARGET if options.smoke else []
    baseline = options.extra.get("baseline")
    with tempfile.TemporaryDirectory(prefix="bench-turnaround-") as tmp:
        clones = {"HEAD": Path(tmp) / "head"} | ({"baseline": Path(tmp) / "baseline"} if baseline else {})
        commits = {name: clone(at, baseline if name == "baseline" else "HEAD") for name, at in clones.items()}

        def one_round(name: str, round_: int) -> tuple[dict[str, float], float]:
            forced = timed_repro(clones[name], ["--force", *target])
            no_op = timed_repro(clones[name], target)["total"]
            log.info("%s round %d: forced %.1f s, no-op %.1f s", commits[name], round_, forced["total"], no_op)
            return forced, no_op

        runs = alternate(list(clones), options.repeat, one_round)
    forced = {name: [f for f, _ in rounds] for name, rounds in runs.items()}
    no_op = {name: [n for _, n in rounds] for name, rounds in runs.items()}
    stages = list(dict.fromkeys(s for rounds in forced.values() for r in rounds for s in r if s != "total"))
    names = ["total", *stages]
    columns = [f"{commits['HEAD']} (s, median)", "rounds"]
    if baseline:
        columns += [f"baseline {commits['baseline']} (s)", "rounds", "ratio"]

    def row(label: str, head: list[float], base: list[float] | None) -> tuple[str, ...]:
        cells = (label, seconds(head), ", ".join(f"{v:.1f}" for v in head))
        if base is None:
            return cells
        return (*cells, seconds(base), ", ".join(f"{v:.1f}" for v in base), f"{ratio(median(head), median(base)):.2f}×")

    rows = []
    for name in names:
        label = "**total**" if name == "total" else f"`{name}`"
        head = [r.get(name, 0.0) for r in forced["HEAD"]]  # a stage one commit lacks took 0 s there
        base = [r.get(name, 0.0) for r in forced["baseline"]] if baseline else None
        rows.append(row(label, head, base))
    rows.append(row("no-op `dvc repro`", no_op["HEAD"], no_op.get("baseline")))
    what = f"`dvc repro --force {' '.join(target)}`" if target else "`dvc repro --force`"
    against = f" and of the baseline {baseline} ({commits['baseline']}), alternating," if baseline else ""
    markdown = (
        f"{what} in a fresh `git clone` of commit {commits['HEAD']}{against} then the no-op repro, "
        f"{options.repeat} round(s); seconds, median (each round).\n\n" + table(tuple(["stage", *columns]), rows)
    )
    total = median(r["total"] for r in forced["HEAD"])
    figures = {"commits": commits, "forced": forced, "no_op": no_op, "total_median_s": total}
    return Result(markdown, figures)
