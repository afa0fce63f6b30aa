"""`python -m bench` (bench/__main__.py): each benchmark's smoke run rewrites its own section of a copy of
BENCHMARKS.md with figures and leaves the rest of the file as it was; the section rewriting on its own.
The figures themselves go to BENCHMARKS.md; none are asserted here."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from bench.__main__ import BENCHMARKS
from bench.report import rewrite_section
from tests.helpers import REPO, repo_env


def section(text: str, name: str) -> str:
    return re.search(rf"<!-- bench:{name} -->\n(.*?)<!-- /bench:{name} -->", text, re.S)[1]


def outside(text: str, name: str) -> str:
    return re.sub(rf"<!-- bench:{name} -->\n.*?<!-- /bench:{name} -->", "", text, flags=re.S)


@pytest.mark.parametrize("name", BENCHMARKS)
def test_smoke_run_rewrites_only_its_section(name: str, reduced_repo: Path, tmp_path: Path) -> None:
    output = tmp_path / "BENCHMARKS.md"
    before = (REPO / "BENCHMARKS.md").read_text(encoding="utf-8")
    output.write_text(before, encoding="utf-8")
    command = ["-m", "bench", "--smoke", "--only", name, "--output", str(output), "--workspace", str(reduced_repo)]
    result = subprocess.run(
        [sys.executable, *command], cwd=REPO, env=repo_env(), capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert set(json.loads(result.stdout)) == {name}
    after = output.read_text(encoding="utf-8")
    assert outside(after, name) == outside(before, name)
    written = section(after, name)
    assert "Smoke run" in written and f"--only {name}" in written and "cores" in written
    table_rows = [line for line in written.splitlines() if line.startswith("| ") and not line.startswith("| ---")]
    assert len(table_rows) >= 2 and all(re.search(r"\d", row) for row in table_rows[1:])


def test_a_section_is_replaced_between_its_markers(tmp_path: Path) -> None:
    path = tmp_path / "B.md"
    path.write_text("# B\n\n<!-- bench:a -->\nold\n<!-- /bench:a -->\n\nkept <!-- bench:b -->\n", encoding="utf-8")
    rewrite_section(path, "a", "new\n")
    expected = "# B\n\n<!-- bench:a -->\nnew\n<!-- /bench:a -->\n\nkept <!-- bench:b -->\n"
    assert path.read_text(encoding="utf-8") == expected


def test_a_section_without_markers_is_appended(tmp_path: Path) -> None:
    path = tmp_path / "B.md"
    path.write_text("# B\n", encoding="utf-8")
    rewrite_section(path, "a", "figures")
    assert path.read_text(encoding="utf-8") == "# B\n\n<!-- bench:a -->\nfigures\n<!-- /bench:a -->\n"


def test_fewer_than_one_round_is_refused() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "bench", "--smoke", "--only", "turnaround", "--repeat", "0"],
        cwd=REPO,
        env=repo_env(),
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2 and "--repeat must be at least 1" in result.stderr


def test_turnaround_against_a_baseline_has_both_commits_and_their_ratio(tmp_path: Path) -> None:
    output = tmp_path / "BENCHMARKS.md"
    output.write_text("# B\n", encoding="utf-8")
    command = ["-m", "bench", "--smoke", "--only", "turnaround", "--baseline", "HEAD~1", "--output", str(output)]
    result = subprocess.run(
        [sys.executable, *command], cwd=REPO, env=repo_env(), capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr[-3000:]
    commits = json.loads(result.stdout)["turnaround"]["commits"]
    assert set(commits) == {"HEAD", "baseline"} and commits["HEAD"] != commits["baseline"]
    written = section(output.read_text(encoding="utf-8"), "turnaround")
    assert f"baseline {commits['baseline']}" in written and "ratio" in written
    selfinstruct = next(line for line in written.splitlines() if line.startswith("| `selfinstruct`"))
    assert re.search(r"\| \d+\.\d\d× \|$", selfinstruct)
