"""Throwaway training workspaces: laid out like the repository after `dvc repro prepare`, a micro Qwen2 with a
one-character-per-token tokenizer as the base (tests.helpers.make_workspace). Built once per session; each
test works in its own copy, as the working directory.

`workspace` / `dpo_workspace` are for tests that stop before any training (params, checks, one-line errors:
the fast tier); `training_workspace` / `dpo_training_workspace` for tests that train for real, which belong
to the full tier with the pipeline (tests.helpers.PIPELINE_FIXTURES)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import copy_workspace, make_sft_adapter, make_workspace


@pytest.fixture(scope="session")
def sft_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # 甲乙第题: the characters of the early-stopping test's own rows
    return make_workspace(tmp_path_factory.mktemp("sft_template"), extra_texts=["甲乙第题"])


@pytest.fixture(scope="session")
def dpo_template(sft_template: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The sft workspace plus models/sft: an adapter with random A and B, so the SFT model differs from the base."""
    workspace = copy_workspace(sft_template, tmp_path_factory.mktemp("dpo_template") / "ws")
    make_sft_adapter(workspace)
    return workspace


@pytest.fixture
def workspace(sft_template: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    ws = copy_workspace(sft_template, tmp_path / "ws")
    monkeypatch.chdir(ws)
    return ws


@pytest.fixture
def dpo_workspace(dpo_template: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    ws = copy_workspace(dpo_template, tmp_path / "ws")
    monkeypatch.chdir(ws)
    return ws


@pytest.fixture
def training_workspace(sft_template: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    ws = copy_workspace(sft_template, tmp_path / "ws")
    monkeypatch.chdir(ws)
    return ws


@pytest.fixture
def dpo_training_workspace(dpo_template: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    ws = copy_workspace(dpo_template, tmp_path / "ws")
    monkeypatch.chdir(ws)
    return ws
