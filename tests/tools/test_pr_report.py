"""`python -m tools.pr_report` (`make report`) on a small temporary DVC repo with two commits: a metrics
JSON, params.yaml and two plots, one of which changes. Runs the real git and DVC."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import GIT, REPO, repo_env, run

DVC_YAML = """\
metrics:
  - metrics/eval.json
plots:
  - loss_curve:
      template: linear
      x: step
      y:
        metrics/loss.tsv: loss
  - metrics/lengths.csv:
      template: bar_horizontal
      x: rows
      y: tokens
"""

FIRST = {
    "params.yaml": "lr: 2.0e-3\nsft:\n  lora:\n    r: 16\n  num_epochs: 1\n",
    "metrics/eval.json": '{"perplexity": {"sft": 12.5}, "task": {"sft": 0.25}, "rows": 64}\n',
    "metrics/loss.tsv": "step\tloss\n0\t3.0\n10\t2.0\n",
    "metrics/lengths.csv": "tokens,rows\n16,3\n32,5\n",
}
SECOND = {
    "params.yaml": "lr: 1.0e-4\nsft:\n  lora:\n    r: 8\n  num_epochs: 1\n",
    "metrics/eval.json": '{"perplexity": {"sft": 10.0}, "task": {"sft": 0.5}, "rows": 64}\n',
    "metrics/loss.tsv": "step\tloss\n0\t3.0\n10\t1.5\n",
}


def write(repo: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        (repo / rel).parent.mkdir(parents=True, exist_ok=True)
        (repo / rel).write_text(text, encoding="utf-8")


def commit(repo: Path, message: str) -> None:
    run(["git", "add", "-A"], cwd=repo)
    run([*GIT, "commit", "-q", "-m", message], cwd=repo)


@pytest.fixture
def two_commits(tmp_path: Path) -> Path:
    """main: FIRST, then SECOND, both committed; the workspace equals SECOND."""
    repo = tmp_path / "repo"
    repo.mkdir()
    run(["git", "init", "-q", "-b", "main"], cwd=repo)
    run([sys.executable, "-m", "dvc", "init", "-q"], cwd=repo)
    write(repo, {"dvc.yaml": DVC_YAML, **FIRST})
    commit(repo, "first")
    write(repo, SECOND)
    commit(repo, "second")
    return repo


def report(repo: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tools.pr_report", *args],
        cwd=repo,
        env=repo_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )


def table_rows(markdown: str, heading: str) -> list[list[str]]:
    """Cells of the Markdown table under `### heading`, without the header and rule rows."""
    section = markdown.split(f"### {heading}\n", 1)[1].split("\n### ", 1)[0]
    rows = [[cell.strip() for cell in line.strip().strip("|").split("|")] for line in section.splitlines()]
    return [row for row in rows if len(row) > 1][2:]


def test_report_between_two_commits_has_metric_and_param_changes(two_commits: Path) -> None:
    result = report(two_commits, "--base", "HEAD~1", "--target", "HEAD")
    assert result.returncode == 0, result.stderr
    md = (two_commits / "report/report.md").read_text(encoding="utf-8")
    assert md == result.stdout
    assert md.startswith("## TeachingAssistant: `HEAD~1` → `HEAD`")
    metrics = table_rows(md, "Metrics")
    assert ["metrics/eval.json", "perplexity.sft", "12.5", "10.0", "-2.5"] in metrics
    assert ["metrics/eval.json", "task.sft", "0.25", "0.5", "0.25"] in metrics
    assert not any(row[1] == "rows" for row in metrics), "unchanged metric listed without --all"
    params = table_rows(md, "Params")
    assert sorted(params) == [["params.yaml", "lr", "0.002", "0.0001"], ["params.yaml", "sft.lora.r", "16", "8"]]


def test_report_all_lists_unchanged_values(two_commits: Path) -> None:
    result = report(two_commits, "--base", "HEAD~1", "--target", "HEAD", "--all", "--out", "-")
    assert result.returncode == 0, result.stderr
    assert ["metrics/eval.json", "rows", "64", "64", "0"] in table_rows(result.stdout, "Metrics")
    assert ["params.yaml", "sft.num_epochs", "1", "1"] in table_rows(result.stdout, "Params")
    assert not (two_commits / "report").exists(), "--out - must write no file"


def test_report_draws_only_the_changed_plot(two_commits: Path) -> None:
    result = report(two_commits, "--base", "HEAD~1", "--target", "HEAD")
    assert result.returncode == 0, result.stderr
    md = (two_commits / "report/report.md").read_text(encoding="utf-8")
    plots = md.split("### Plots\n", 1)[1]
    assert "![loss_curve](plots/loss_curve.png)" in plots
    assert "lengths" not in plots, "the bar plot's data did not change"
    png = (two_commits / "report/plots/loss_curve.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000


def test_report_defaults_to_head_vs_workspace_on_main(two_commits: Path) -> None:
    write(two_commits, {"metrics/eval.json": '{"perplexity": {"sft": 8.0}, "task": {"sft": 0.5}, "rows": 64}\n'})
    result = report(two_commits, "--out", "-")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("## TeachingAssistant: `HEAD` → `workspace`")
    assert table_rows(result.stdout, "Metrics") == [["metrics/eval.json", "perplexity.sft", "10.0", "8.0", "-2.0"]]
    assert "No param changed." in result.stdout
    assert "No plot changed." in result.stdout


def test_report_defaults_to_main_vs_workspace_on_a_branch(two_commits: Path) -> None:
    run(["git", "checkout", "-q", "-b", "feature", "HEAD~1"], cwd=two_commits)
    write(two_commits, {"params.yaml": FIRST["params.yaml"].replace("2.0e-3", "5.0e-4")})
    result = report(two_commits, "--out", "-")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("## TeachingAssistant: `main` → `workspace`")
    # main holds SECOND; the branch's workspace is FIRST with lr 5e-4
    assert sorted(table_rows(result.stdout, "Params")) == [
        ["params.yaml", "lr", "0.0001", "0.0005"],
        ["params.yaml", "sft.lora.r", "8", "16"],
    ]


def test_report_unknown_revision_is_a_one_line_error(two_commits: Path) -> None:
    result = report(two_commits, "--base", "no-such-rev", "--out", "-")
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.count("\n") == 1 and "no-such-rev" in result.stderr


def test_pr_workflow_posts_this_report_through_cml() -> None:
    """The GitHub workflow runs the pipeline, then the same command as `make report`, then CML."""
    assert "-m tools.pr_report" in (REPO / "Makefile").read_text(encoding="utf-8")
    import yaml

    workflow = yaml.safe_load((REPO / ".github/workflows/pr-report.yml").read_text(encoding="utf-8"))
    assert "pull_request" in workflow[True]  # YAML 1.1 reads the key `on` as True
    steps = " \n".join(step.get("run", "") for step in workflow["jobs"]["report"]["steps"])
    assert steps.index(".venv/bin/dvc repro") < steps.index("-m tools.pr_report") < steps.index("cml comment")
    assert "npm install -g @dvcorg/cml" in steps
    assert "--out report/report.md" in steps and "cml comment update --watermark-title" in steps
    assert workflow["permissions"]["pull-requests"] == "write"
