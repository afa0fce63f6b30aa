"""DVC experiments as a user types them, on a clone of the pipeline repo holding a finished `dvc repro`
(conftest's `pipeline_repo`; the clone shares its cache through links, see tests.helpers.clone_with_results).

- `dvc exp run -S lr=1e-4` reruns sft and everything after it, never base or prepare, and the
  experiment shows up in `dvc exp show --json` with lr beside its metrics; `exp diff`, `exp branch`
  and `exp apply` work on it.
- A grid queued with `--queue -S lr=1e-3,2e-3` and run by `dvc queue start -j 1` yields two experiments.
  To keep CI short the grid targets the `sft` stage and trains a few steps (`-S sft.max_steps=12`, or
  `-S sft.num_epochs=0.1` while params.yaml has no `sft.max_steps`): queueing, running and recording
  are what is under test here.
"""

from __future__ import annotations

import csv
import io
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.helpers import DVC, REPO, assert_status_clean, clone_with_results, ran_stages, run

AFTER_SFT = ["sft", "dpo", "merge", "gguf", "quantize", "eval", "harness"]


def lock_outs(repo: Path) -> dict[str, dict[str, str]]:
    """Stage -> {out path: md5} from dvc.lock."""
    lock = yaml.safe_load((repo / "dvc.lock").read_text(encoding="utf-8"))
    return {
        name: {o["path"]: o.get("md5", "") for o in stage.get("outs", [])} for name, stage in lock["stages"].items()
    }


def experiments(repo: Path) -> list[dict[str, Any]]:
    """Every experiment `dvc exp show --json` lists (not the workspace, not the baseline commit):
    [{"name", "rev", "params": params.yaml data, "metrics": {file: data}}]."""
    shown = json.loads(run([DVC, "exp", "show", "--json"], cwd=repo).stdout)
    found = []
    for baseline in shown:
        for group in baseline.get("experiments") or []:
            for exp in group.get("revs") or []:
                data = exp.get("data") or {}
                found.append(
                    {
                        "name": exp.get("name") or group.get("name"),
                        "rev": exp.get("rev"),
                        "params": (data.get("params") or {}).get("params.yaml", {}).get("data", {}),
                        "metrics": {path: m.get("data", {}) for path, m in (data.get("metrics") or {}).items()},
                    }
                )
    return found


def params_lr(repo: Path) -> float:
    return float(yaml.safe_load((repo / "params.yaml").read_text(encoding="utf-8"))["lr"])


def committed_lr(repo: Path) -> float:
    """lr in params.yaml at HEAD: the baseline every experiment here starts from."""
    return float(yaml.safe_load(run(["git", "show", "HEAD:params.yaml"], cwd=repo).stdout)["lr"])


# Shorter budgets beside the user's `-S lr=1e-4`, so that CI does not pay for a whole training run: which
# stages rerun depends on which params changed, and every one of these belongs to a stage after prepare.
SHORT = ["-S", "sft.max_steps=12", "-S", "dpo.max_steps=4", "-S", "eval.max_samples=8", "-S", "eval.max_generations=2"]


@pytest.fixture(scope="module")
def lr_experiment(pipeline_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict, dict, str]:
    """`dvc exp run -S lr=1e-4` as a user types it (plus SHORT): (clone, dvc.lock outs before, after, output)."""
    repo = clone_with_results(pipeline_repo, tmp_path_factory.mktemp("exp") / "repo")
    before = lock_outs(repo)
    result = run([DVC, "exp", "run", "-S", "lr=1e-4", *SHORT], cwd=repo)
    return repo, before, lock_outs(repo), result.stdout + result.stderr


def test_exp_run_lr_reruns_sft_onward_only(lr_experiment: tuple[Path, dict, dict, str]) -> None:
    repo, before, after, output = lr_experiment
    assert ran_stages(output) == AFTER_SFT, output[-3000:]
    for skipped in ("base", "prepare"):
        assert f"Stage '{skipped}' didn't change, skipping" in output
        assert after[skipped] == before[skipped]
    assert after["sft"]["models/sft"] != before["sft"]["models/sft"], "a new lr must train a new adapter"
    assert params_lr(repo) == 1e-4


def test_exp_show_lists_lr_beside_metrics(lr_experiment: tuple[Path, dict, dict, str]) -> None:
    repo = lr_experiment[0]
    exps = [e for e in experiments(repo) if float(e["params"].get("lr", 0)) == 1e-4]
    assert len(exps) == 1, experiments(repo)
    metrics = exps[0]["metrics"]
    for path in ("dvclive/sft/metrics.json", "dvclive/dpo/metrics.json", "metrics/eval.json"):
        assert metrics.get(path), f"{path} missing from the experiment's metrics: {sorted(metrics)}"
    assert isinstance(metrics["dvclive/sft/metrics.json"]["eval"]["loss"], float)


# The README's `dvc exp show` for comparing runs (--keep matches the start of a column name). Not `.*ppl_ratio`:
# that would also keep the eval gate param eval.max_q4_k_m_vs_f16_ppl_ratio.
USEFUL_COLUMNS = (
    r"Experiment|lr|sft\.method|sft\.lora\.r|dpo\.beta|.*eval\.loss|task\.(sft|dpo|gguf_q4_k_m)"
    r"|quantization\..*ppl_ratio"
)


def test_exp_show_useful_columns(lr_experiment: tuple[Path, dict, dict, str]) -> None:
    repo = lr_experiment[0]
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert f"--keep '{USEFUL_COLUMNS}'" in readme
    shown = run([DVC, "exp", "show", "--csv", "--drop", ".*", "--keep", USEFUL_COLUMNS], cwd=repo).stdout
    rows = list(csv.DictReader(io.StringIO(shown)))
    assert set(rows[0]) == {
        "Experiment",
        "lr",
        "sft.method",
        "sft.lora.r",
        "dpo.beta",
        "dvclive/sft/metrics.json:eval.loss",
        "dvclive/dpo/metrics.json:eval.loss",
        "task.sft",
        "task.dpo",
        "task.gguf_q4_k_m",
        "quantization.q4_k_m_vs_f16_ppl_ratio",
    }
    exp = next(row for row in rows if row["Experiment"] and float(row["lr"]) == 1e-4)
    params = yaml.safe_load((repo / "params.yaml").read_text(encoding="utf-8"))
    assert exp["sft.method"] == params["sft"]["method"] and int(exp["sft.lora.r"]) == params["sft"]["lora"]["r"]
    assert 0 <= float(exp["task.gguf_q4_k_m"]) <= 1
    assert float(exp["quantization.q4_k_m_vs_f16_ppl_ratio"]) > 0.5
    assert float(exp["dvclive/sft/metrics.json:eval.loss"]) > 0


def test_exp_diff_and_branch(lr_experiment: tuple[Path, dict, dict, str]) -> None:
    repo = lr_experiment[0]
    name = next(e["name"] for e in experiments(repo) if float(e["params"].get("lr", 0)) == 1e-4)
    diff = json.loads(run([DVC, "exp", "diff", "HEAD", name, "--json"], cwd=repo).stdout)
    lr = diff["params"]["params.yaml"]["lr"]
    assert float(lr["old"]) == committed_lr(repo) and float(lr["new"]) == 1e-4
    assert "dvclive/sft/metrics.json" in diff["metrics"]
    run([DVC, "exp", "branch", name, "lr-1e-4"], cwd=repo)
    on_branch = yaml.safe_load(run(["git", "show", "lr-1e-4:params.yaml"], cwd=repo).stdout)
    assert float(on_branch["lr"]) == 1e-4
    assert (
        run(["git", "show", "lr-1e-4:dvc.lock"], cwd=repo).stdout
        != run(["git", "show", "HEAD:dvc.lock"], cwd=repo).stdout
    )


def test_exp_apply_restores_the_experiment(lr_experiment: tuple[Path, dict, dict, str]) -> None:
    repo = lr_experiment[0]
    name = next(e["name"] for e in experiments(repo) if float(e["params"].get("lr", 0)) == 1e-4)
    run(["git", "reset", "-q", "--hard"], cwd=repo)
    run([DVC, "checkout", "-q", "--force"], cwd=repo)
    assert params_lr(repo) == committed_lr(repo) != 1e-4
    run([DVC, "exp", "apply", name], cwd=repo)
    assert params_lr(repo) == 1e-4
    assert lock_outs(repo)["sft"] == lr_experiment[2]["sft"]
    assert_status_clean(repo)


def wait_for_queue(repo: Path, timeout: float = 1800) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = run([DVC, "queue", "status"], cwd=repo).stdout
        if not any(word in status for word in ("Queued", "Running")):
            return status
        time.sleep(5)
    raise AssertionError(f"the queue did not finish in {timeout} s:\n{status}")


@pytest.fixture
def grid_repo(pipeline_repo: Path, tmp_path: Path) -> Iterator[Path]:
    repo = clone_with_results(pipeline_repo, tmp_path / "repo")
    yield repo
    run([DVC, "queue", "stop", "--kill"], cwd=repo)


def short_sft(repo: Path) -> tuple[str, str]:
    """An override that makes an SFT run a few steps long, with a key params.yaml already has."""
    sft = yaml.safe_load((repo / "params.yaml").read_text(encoding="utf-8"))["sft"]
    return ("max_steps", "12") if "max_steps" in sft else ("num_epochs", "0.1")


def test_queued_grid_runs_both_experiments(grid_repo: Path) -> None:
    key, value = short_sft(grid_repo)
    run([DVC, "exp", "run", "--queue", "-S", "lr=1e-3,2e-3", "-S", f"sft.{key}={value}", "sft"], cwd=grid_repo)
    queued = run([DVC, "queue", "status"], cwd=grid_repo).stdout
    assert queued.count("Queued") == 2, queued
    run([DVC, "queue", "start", "-j", "1"], cwd=grid_repo)
    status = wait_for_queue(grid_repo)
    assert status.count("Success") == 2, status
    grid = [e for e in experiments(grid_repo) if float(e["params"]["sft"][key]) == float(value)]
    assert sorted(float(e["params"]["lr"]) for e in grid) == [1e-3, 2e-3]
    for exp in grid:
        assert exp["metrics"]["dvclive/sft/metrics.json"]["train"]["loss"] > 0, exp  # the trainer's final summary
    assert params_lr(grid_repo) == committed_lr(grid_repo), "queued experiments leave the workspace alone"
