"""Shared fixtures. The expensive one, `pipeline_repo`, runs the whole `dvc repro` once per test session
in a temporary copy of the repository; tests that need real artifacts (GGUFs, adapters) take them from
there, so every artifact under test was produced by the pipeline exactly as a user would run it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def tracked_files(repo: Path) -> list[str]:
    """Files git tracks plus untracked, non-ignored ones: what a fresh clone (or a commit) would hold."""
    out = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=repo,
        check=True,
        capture_output=True,
    ).stdout
    return [p for p in out.decode().split("\0") if p and (repo / p).is_file()]


def copy_repo(dest: Path) -> Path:
    """A fresh git repo at `dest` holding the project's files, committed, with DVC initialised."""
    for rel in tracked_files(REPO):
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / rel, target)
    for generated in ("dvc.lock", "metrics", "dvclive"):  # main carries the last run; start from scratch
        path = dest / generated
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
    env = repo_env()
    git = ["git", "-c", "user.name=test", "-c", "user.email=test@example.com"]
    subprocess.run(["git", "init", "-q", "-b", "main"], cwd=dest, check=True, env=env)
    if not (dest / ".dvc").is_dir():
        subprocess.run([str(BIN / "dvc"), "init", "-q"], cwd=dest, check=True, env=env)
    subprocess.run(["git", "add", "-A"], cwd=dest, check=True, env=env)
    subprocess.run([*git, "commit", "-q", "-m", "init"], cwd=dest, check=True, env=env)
    return dest


def repo_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env["DVC_NO_ANALYTICS"] = "1"
    env["HF_HUB_OFFLINE"] = "1"
    env["TOKENIZERS_PARALLELISM"] = "false"
    return env


def run(cmd: list[str], cwd: Path, timeout: int = 1800) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(cmd, cwd=cwd, env=repo_env(), capture_output=True, text=True, timeout=timeout)
    if result.returncode != 0:
        raise AssertionError(
            f"{' '.join(cmd)} failed ({result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}"
        )
    return result


@pytest.fixture(scope="session")
def pipeline_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A temporary copy of the repo on which `dvc repro` has run to the end on the tiny default.

    TA_PIPELINE_REPO=<dir> reuses a repo where the pipeline has already run (for quick local iteration).
    """
    if os.environ.get("TA_PIPELINE_REPO"):
        return Path(os.environ["TA_PIPELINE_REPO"])
    repo = copy_repo(tmp_path_factory.mktemp("pipeline") / "repo")
    run([str(BIN / "dvc"), "repro"], cwd=repo)
    return repo


@pytest.fixture(scope="session")
def q4_gguf(pipeline_repo: Path) -> Path:
    return pipeline_repo / "models/gguf/teachingassistant-q4_k_m.gguf"


@pytest.fixture(scope="session")
def f16_gguf(pipeline_repo: Path) -> Path:
    return pipeline_repo / "models/gguf/teachingassistant-f16.gguf"


@pytest.fixture(scope="session")
def merged_dir(pipeline_repo: Path) -> Path:
    return pipeline_repo / "models/merged"
