"""Which base model the pipeline trains, pinned (ta/base_model.py): models/base/base.json says where the
weights are and at which revision; a local directory is pinned by a digest of its files."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from ta.base_model import read_base_ref, resolve_base
from ta.config import load_params
from ta.errors import MissingInputError
from tests.helpers import REPO

SHIPPED_BASE = load_params(REPO / "params.yaml").base


def test_local_base_is_pinned_by_content_digest(tmp_path: Path) -> None:
    model_dir = tmp_path / "my-model"
    model_dir.mkdir()
    (model_dir / "config.json").write_text("{}")
    first = resolve_base(dataclasses.replace(SHIPPED_BASE, model=str(model_dir)))
    assert first == {
        "model": str(model_dir.resolve()),
        "revision": None,
        "path": str(model_dir.resolve()),
        "digest": first["digest"],
    }
    (model_dir / "config.json").write_text('{"changed": true}')
    second = resolve_base(dataclasses.replace(SHIPPED_BASE, model=str(model_dir)))
    assert first["digest"] != second["digest"]
    assert resolve_base(dataclasses.replace(SHIPPED_BASE, model=str(model_dir))) == second  # stable


def test_base_ref_points_at_the_local_dir_for_tiny(tmp_path: Path) -> None:
    (tmp_path / "base.json").write_text(json.dumps({"model": "tiny", "revision": None}))
    ref = read_base_ref(tmp_path)
    assert ref.name_or_path == str(tmp_path) and ref.revision is None and ref.trust_remote_code is False
    assert ref.from_pretrained_kwargs() == {"trust_remote_code": False, "use_safetensors": True}


def test_hub_ref_loads_the_pinned_revision_from_its_snapshot(tmp_path: Path) -> None:
    info = {"model": "Qwen/Qwen2.5-7B-Instruct", "revision": "a" * 40, "path": "/cache/snap", "trust_remote_code": True}
    (tmp_path / "base.json").write_text(json.dumps(info))
    ref = read_base_ref(tmp_path)
    assert ref.name_or_path == "/cache/snap"
    assert ref.from_pretrained_kwargs() == {"trust_remote_code": True, "use_safetensors": True, "revision": "a" * 40}


def test_a_missing_base_json_says_which_stage_to_run(tmp_path: Path) -> None:
    with pytest.raises(MissingInputError, match=r"base\.json: missing; run `dvc repro base` first"):
        read_base_ref(tmp_path / "models/base")
