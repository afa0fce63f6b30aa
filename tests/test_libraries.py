"""libraries.yaml and the lock files: each stage declares exactly the libraries its code uses, an upgrade reruns
exactly those stages, and a stage refuses to run on versions other than the recorded ones."""

from __future__ import annotations

import ast
import json
import re
import shutil
from functools import cache
from importlib import metadata
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement

from tests.helpers import DVC, REPO, repo_env, run, run_module
from tools import lock

STAGES = yaml.safe_load((REPO / "dvc.yaml").read_text(encoding="utf-8"))["stages"]


@cache
def module_owners() -> dict[str, list[str]]:
    """Top-level import name → the installed distributions that provide it (`llama_cpp` → llama-cpp-python)."""
    return {name: [lock.canonical(d) for d in dists] for name, dists in metadata.packages_distributions().items()}


def code_files(stage: str) -> list[Path]:
    """The .py files among the stage's deps in dvc.yaml (folders expanded)."""
    files: list[Path] = []
    for dep in STAGES[stage]["deps"]:
        path = REPO / dep
        files += sorted(path.rglob("*.py")) if path.is_dir() else [path] if path.suffix == ".py" else []
    return files


def imported_distributions(stage: str) -> set[str]:
    """Distributions the stage's code imports anywhere (module level or inside a function), read from the AST."""
    found: set[str] = set()
    for file in code_files(stage):
        for node in ast.walk(ast.parse(file.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                found.update(module_owners().get(name.split(".")[0], []))
    return found


def requirement_closure(dists: set[str]) -> set[str]:
    """The distributions plus everything they require (without extras), transitively, as installed."""
    seen: set[str] = set()
    todo = list(dists)
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        try:
            requires = metadata.requires(name) or []
        except metadata.PackageNotFoundError:
            continue
        for line in requires:
            req = Requirement(line)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(lock.canonical(req.name))
    return seen


# Libraries a stage's code reaches without importing them: transformers loads bitsandbytes for a
# BitsAndBytesConfig (QLoRA), accelerate loads deepspeed for a DeepSpeed config.
LOADED_BY_NAME = {"bitsandbytes": r"\bBitsAndBytesConfig\b", "deepspeed": r"\bdeepspeed\b"}


def expected_libraries(stage: str) -> set[str]:
    found = requirement_closure(imported_distributions(stage)) & set(lock.LIBRARIES)
    text = "".join(file.read_text(encoding="utf-8") for file in code_files(stage))
    return found | {name for name, pattern in LOADED_BY_NAME.items() if re.search(pattern, text)}


def declared_libraries(stage: str) -> set[str]:
    names: set[str] = set()
    for entry in STAGES[stage].get("params", []):
        if isinstance(entry, dict):
            names.update(entry.get("libraries.yaml", []))
    return names


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_each_stage_declares_the_libraries_its_code_uses(stage: str) -> None:
    assert declared_libraries(stage) == expected_libraries(stage)


def test_the_locks_and_the_manifest_agree() -> None:
    assert lock.check() == []


def test_the_installed_versions_are_the_recorded_ones() -> None:
    """The venv the tests run in is installed from the lock (make install-test), so no stage would refuse."""
    from ta import libraries

    for stage in STAGES:
        assert libraries.mismatches(stage, REPO / "libraries.yaml", REPO / "dvc.yaml") == [], stage


LOCK_INPUTS = ("requirements.txt", "requirements-test.txt", "requirements-gpu.txt", "Makefile", "libraries.yaml")


@pytest.fixture
def lock_copy(tmp_path: Path) -> Path:
    for name in (*LOCK_INPUTS, *(item.path for item in lock.LOCKS)):
        shutil.copy2(REPO / name, tmp_path / name)
    assert lock.check(tmp_path) == []
    return tmp_path


def edit(path: Path, old: str, new: str, count: int = 1) -> None:
    text = path.read_text(encoding="utf-8")
    assert old in text, (path, old)
    path.write_text(text.replace(old, new, count), encoding="utf-8")


@pytest.mark.parametrize(
    ("file", "old", "new", "problem"),
    [
        ("requirements.txt", "trl==", "trl==0.0.0\n#", "requirements.lock: trl is 1.16.0, requirements.txt pins 0.0.0"),
        ("requirements-gpu.txt", "vllm==", "vllm==0.0.0\n#", "requirements-gpu.lock: vllm is"),
        ("requirements.lock", "llama-cpp-python==0.3.36 \\\n    --hash", "llama-cpp-python==0\n#", "has no --hash"),
        ("requirements-test.lock", "\ndill==", "\ndill==0.0.0\n#", "requirements-test.lock: dill is 0.0.0"),
        ("libraries.yaml", 'trl: "', 'trl: "0.0.0', "libraries.yaml: differs from the locks"),
        ("Makefile", "TORCH_VERSION := ", "TORCH_VERSION := 9", "Makefile: TORCH_VERSION is 9"),
        (
            "requirements.lock",
            "\naccelerate==",
            "\ntorch==2.13.0 --hash=sha256:" + "0" * 64 + "\naccelerate==",
            "torch must not be locked",
        ),
    ],
)
def test_the_check_finds_a_lock_out_of_step(lock_copy: Path, file: str, old: str, new: str, problem: str) -> None:
    edit(lock_copy / file, old, new)
    problems = lock.check(lock_copy)
    assert any(problem in line for line in problems), problems


def test_a_stage_refuses_versions_other_than_the_recorded_ones(tmp_path: Path) -> None:
    shutil.copy2(REPO / "dvc.yaml", tmp_path / "dvc.yaml")
    shutil.copy2(REPO / "params.yaml", tmp_path / "params.yaml")
    shutil.copy2(REPO / "libraries.yaml", tmp_path / "libraries.yaml")
    edit(tmp_path / "libraries.yaml", 'peft: "', 'peft: "0.0.1+')
    refused = run_module("stages.merge", tmp_path)
    assert refused.returncode == 2, refused.stderr
    lines = refused.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(
        "merge: error: peft 0.21.2 is installed, libraries.yaml records 0.0.1+"
    )
    assert "make lock" in lines[0]
    # a stage that does not use peft is not stopped by it; with the override, merge goes on to its own inputs
    assert "peft" not in run_module("stages.quantize", tmp_path).stderr
    warned = run_module("stages.merge", tmp_path, env=repo_env(TA_LIBRARY_CHECK="warn"))
    assert "will not match the lock" in warned.stderr and "models/base" in warned.stderr, warned.stderr


def test_an_upgrade_reruns_exactly_the_stages_that_use_it(pipeline_repo: Path) -> None:
    """After a full run, a new version of one library in libraries.yaml leaves exactly the stages whose code
    uses it (found from their imports above, not from dvc.yaml) out of date in `dvc status`."""
    manifest = pipeline_repo / "libraries.yaml"
    original = manifest.read_text(encoding="utf-8")
    recorded = yaml.safe_load(original)
    try:
        # one library of each reach (CI's time budget; the declarations of all are checked against the imports
        # above): base only, the trainers, the llama.cpp side, the harness alone
        for name in ("sentencepiece", "trl", "llama-cpp-python", "lm-eval"):
            assert name in recorded
            manifest.write_text(original.replace(f'{name}: "', f'{name}: "99.', 1), encoding="utf-8")
            status = json.loads(run([DVC, "status", "--json"], cwd=pipeline_repo).stdout)
            changed = {stage for stage in status if ":" not in stage}
            assert changed == {stage for stage in STAGES if name in expected_libraries(stage)}, name
    finally:
        manifest.write_text(original, encoding="utf-8")
    assert json.loads(run([DVC, "status", "--json"], cwd=pipeline_repo).stdout) == {}
