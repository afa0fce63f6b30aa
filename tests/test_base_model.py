"""Portable pins (ta/base_model.py, stages/base.py): base.json names no absolute path or home directory; a local
model is copied into models/base and pinned by its content, a hub model by the commit sha it resolved to, and
every consumer (stages, serve.vllm) finds the weights from models/base alone."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from serve.vllm import base_model
from ta.base_model import BaseModelRef, read_base_ref, snapshot_local
from ta.errors import MissingInputError, ParamsError

REPO = Path(__file__).resolve().parents[1]
SHA = "0123456789abcdef0123456789abcdef01234567"
HUB_ID = "ta-test/qwen2.5-shaped"


def model_dir(where: Path, weights: bytes = b"weights") -> Path:
    where.mkdir(parents=True)
    (where / "config.json").write_text('{"model_type": "qwen2"}', encoding="utf-8")
    (where / "model.safetensors").write_bytes(weights)
    (where / "tokenizer.json").write_text("{}", encoding="utf-8")
    (where / "README.md").write_text("not part of a snapshot", encoding="utf-8")
    return where


def test_local_model_is_copied_and_pinned_by_content_not_by_place(tmp_path: Path) -> None:
    first, second = model_dir(tmp_path / "a" / "m"), model_dir(tmp_path / "b" / "m")
    changed = model_dir(tmp_path / "c" / "m", weights=b"weightS")  # one byte, same size
    pins = []
    for source in (first, second, changed):
        out = tmp_path / "out" / source.parent.name
        out.mkdir(parents=True)
        pins.append(snapshot_local(source, out))
        assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors", "tokenizer.json"]
        assert (out / "model.safetensors").read_bytes() == (source / "model.safetensors").read_bytes()
    assert pins[0] == pins[1] and pins[0]["digest"] != pins[2]["digest"]
    assert pins[0]["source"] == "local" and pins[0]["model"] == "m" and str(tmp_path) not in json.dumps(pins[0])


def test_a_directory_without_safetensors_is_refused(tmp_path: Path) -> None:
    source = tmp_path / "m"
    source.mkdir()
    (source / "config.json").write_text("{}", encoding="utf-8")
    (source / "pytorch_model.bin").write_bytes(b"x")
    with pytest.raises(ParamsError, match=r"base.model: .*m: not a model directory \(needs config.json and"):
        snapshot_local(source, tmp_path)


@pytest.mark.parametrize(
    ("info", "expected"),
    [
        ({"model": "tiny", "revision": None}, ("models/base", None)),  # written before "source" existed
        ({"model": "tiny", "source": "tiny", "revision": None}, ("models/base", None)),
        ({"model": "m", "source": "local", "revision": None, "digest": "sha256:00"}, ("models/base", None)),
        ({"model": HUB_ID, "source": "hub", "revision": SHA}, (HUB_ID, SHA)),
    ],
)
def test_every_consumer_reads_the_same_place(tmp_path: Path, monkeypatch, info: dict, expected: tuple) -> None:
    monkeypatch.chdir(tmp_path)
    base = Path("models/base")
    base.mkdir(parents=True)
    (base / "base.json").write_text(json.dumps(info), encoding="utf-8")
    (base / "model.safetensors").write_bytes(b"w")
    assert read_base_ref(base) == BaseModelRef(*expected, trust_remote_code=False)
    assert base_model(base / "base.json") == expected  # serve.vllm: tiny is served from models/base, not the hub


def run_base_stage(workdir: Path, model: str, cache: Path, revision: str = "main") -> subprocess.CompletedProcess:
    params = yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8"))
    params["base"].update(model=model, revision=revision)
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "params.yaml").write_text(yaml.safe_dump(params, allow_unicode=True), encoding="utf-8")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache), "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-m", "stages.base"], cwd=workdir, env=env, capture_output=True, text=True, timeout=300
    )


@pytest.fixture(scope="module")
def hub_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A Hugging Face cache holding the Qwen2.5-shaped model as if downloaded from the hub at commit SHA."""
    from tools import qwen_shaped

    cache = tmp_path_factory.mktemp("hf-cache")
    repo = cache / f"models--{HUB_ID.replace('/', '--')}"
    qwen_shaped.build(repo / "snapshots" / SHA)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(SHA, encoding="utf-8")
    return cache


def test_hub_model_is_pinned_to_its_commit_and_loads_from_the_pin(hub_cache: Path, tmp_path: Path) -> None:
    result = run_base_stage(tmp_path, HUB_ID, hub_cache)
    assert result.returncode == 0, result.stderr
    base = tmp_path / "models/base"
    info = json.loads((base / "base.json").read_text(encoding="utf-8"))
    assert info == {"model": HUB_ID, "source": "hub", "revision": SHA, "trust_remote_code": False}
    # configs and tokenizer beside base.json for every stage; the weights stay in the cache, found by id + sha
    assert {p.name for p in base.iterdir()} == {
        "base.json",
        "config.json",
        "generation_config.json",
        "merges.txt",
        "tokenizer.json",
        "tokenizer_config.json",
        "vocab.json",
    }
    load = (
        "from ta.base_model import read_base_ref; from ta.models import load_base_model;"
        "ref = read_base_ref(); m = load_base_model(ref); print(ref.name_or_path, ref.revision, m.config.vocab_size)"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(hub_cache), "PYTHONPATH": str(REPO)}
    loaded = subprocess.run([sys.executable, "-c", load], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert loaded.stdout.split()[-3:] == [HUB_ID, SHA, "151936"], loaded.stderr[-2000:]
    assert base_model(base / "base.json") == (HUB_ID, SHA)


def test_switching_models_leaves_no_file_of_the_previous_one(hub_cache: Path, tmp_path: Path) -> None:
    local = hub_cache / f"models--{HUB_ID.replace('/', '--')}" / "snapshots" / SHA
    assert run_base_stage(tmp_path, str(local), hub_cache).returncode == 0
    assert any((tmp_path / "models/base").glob("*.safetensors"))
    assert run_base_stage(tmp_path, HUB_ID, hub_cache).returncode == 0
    assert not any((tmp_path / "models/base").glob("*.safetensors"))  # the hub's weights are in the cache


def test_a_path_that_is_not_there_is_one_line(tmp_path: Path) -> None:
    result = run_base_stage(tmp_path, str(tmp_path / "nowhere"), tmp_path / "cache")
    assert result.returncode == 2
    nowhere = tmp_path / "nowhere"
    assert result.stderr.strip().splitlines()[-1] == (
        f"base: error: params.yaml: base.model: {nowhere}: no such directory (and not a hub id like Org/Name)"
    )


def test_hub_ref_loads_the_pinned_revision_and_keeps_trust_remote_code(tmp_path: Path) -> None:
    info = {"model": HUB_ID, "source": "hub", "revision": SHA, "trust_remote_code": True}
    (tmp_path / "base.json").write_text(json.dumps(info), encoding="utf-8")
    ref = read_base_ref(tmp_path)
    assert ref.from_pretrained_kwargs() == {"trust_remote_code": True, "use_safetensors": True, "revision": SHA}


def test_a_local_ref_loads_safetensors_without_remote_code(tmp_path: Path) -> None:
    (tmp_path / "base.json").write_text(json.dumps({"model": "tiny", "revision": None}), encoding="utf-8")
    assert read_base_ref(tmp_path).from_pretrained_kwargs() == {"trust_remote_code": False, "use_safetensors": True}


def test_a_missing_base_json_says_which_stage_to_run(tmp_path: Path) -> None:
    with pytest.raises(MissingInputError, match=r"base\.json: missing; run `dvc repro base` first"):
        read_base_ref(tmp_path / "models/base")
