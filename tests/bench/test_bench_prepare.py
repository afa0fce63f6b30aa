"""The prepare benchmark (bench/bench_prepare.py) keeps working: a smoke run on 2,500 generated rows (its figures
go to BENCHMARKS.md; none are asserted here)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.helpers import REPO, repo_env


def test_prepare_benchmark_reports_every_generated_row(reduced_repo: Path) -> None:
    result = subprocess.run(
        [sys.executable, str(REPO / "bench/bench_prepare.py"), "--rows", "2500", "--num-proc", "2"],
        cwd=reduced_repo,
        env=repo_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout)
    this = report["this"]
    assert this["summary"][0].startswith("rows in 2500 = kept ")
    kept, rejected = (int(x) for x in this["summary"][0].split("kept ")[1].split(" + rejected "))
    assert kept + rejected == 2500 and rejected > 0  # the generator damages about 4 % of the rows
    assert this["rows_per_s_median"] > 0 and this["peak_rss_sum_mib"] > 0
