"""Which base model the pipeline trains, pinned: written by the base stage, read by every later stage.

models/base/ always holds the base's configs and tokenizer files (config.json, generation_config.json,
tokenizer.json, tokenizer_config.json, vocab.json + merges.txt, the chat template wherever the model keeps
it), so every stage reads the tokenizer and the template from one place, whatever the model. base.json says
where the weights are, with no absolute path and no home directory in it:

- "tiny": built by the base stage, in models/base;
- "local": a local directory, copied into models/base (so `dvc pull` brings it to another machine) and
  pinned by a digest of its files' contents;
- "hub": a hub id at the commit sha the base stage resolved; the weights stay in the Hugging Face cache and
  every stage loads that exact revision (on another machine: from the hub, or that machine's cache).
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ta.errors import MissingInputError, ParamsError
from ta.paths import BASE_DIR, BASE_INFO

# What a snapshot holds: weights as safetensors only, configs, tokenizer files, the chat template.
SNAPSHOT_PATTERNS = ("*.json", "*.safetensors", "*.model", "*.txt", "*.jinja")
WEIGHT_FILES = ("*.safetensors", "*.safetensors.index.json")
SOURCES = ("tiny", "local", "hub")


@dataclass(frozen=True)
class BaseModelRef:
    """Where the base model's weights are: a local dir, or a hub id at a pinned revision."""

    name_or_path: str
    revision: str | None
    trust_remote_code: bool

    def from_pretrained_kwargs(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"trust_remote_code": self.trust_remote_code, "use_safetensors": True}
        if self.revision:
            kwargs["revision"] = self.revision
        return kwargs


def read_base_info(info_file: Path = BASE_INFO) -> dict[str, Any]:
    """base.json with its "source" (files written before it was recorded: "tiny", or a hub id)."""
    try:
        info = json.loads(info_file.read_text(encoding="utf-8"))
    except FileNotFoundError as err:
        hint = "run `dvc repro base` first (or `dvc pull models/base`)"
        raise MissingInputError(f"{info_file}: missing; {hint}") from err
    info.setdefault("source", "tiny" if info.get("model") == "tiny" else "hub")
    if info["source"] not in SOURCES:
        raise MissingInputError(f'{info_file}: "source" is {info["source"]!r}, not one of {", ".join(SOURCES)}')
    return info


def read_base_ref(base_dir: Path = BASE_DIR) -> BaseModelRef:
    """The pinned base: models/base itself when the weights are there (tiny, local), else hub id @ sha."""
    info = read_base_info(base_dir / "base.json")
    trust = bool(info.get("trust_remote_code", False))
    if info["source"] == "hub":
        return BaseModelRef(info["model"], info.get("revision"), trust)
    return BaseModelRef(str(base_dir), None, trust)


def is_bnb_quantized(base_dir: Path = BASE_DIR) -> bool:
    """Whether the base checkpoint is quantized with bitsandbytes (a `*-bnb-4bit` hub model): loading it needs the
    package."""
    try:
        config = json.loads((base_dir / "config.json").read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError):
        return False  # the stage's own loading says what is wrong
    quantization = config.get("quantization_config") or {}
    return isinstance(quantization, dict) and quantization.get("quant_method") == "bitsandbytes"


def is_weight_file(name: str) -> bool:
    return any(Path(name).match(pattern) for pattern in WEIGHT_FILES)


def snapshot_files(directory: Path) -> list[Path]:
    """The files of a model directory a snapshot keeps (top level only, as on the hub)."""
    return sorted(p for p in directory.iterdir() if p.is_file() and any(p.match(pat) for pat in SNAPSHOT_PATTERNS))


def snapshot_local(model_dir: Path, out_dir: Path) -> dict[str, Any]:
    """Copy a local model directory into `out_dir` and pin it by the sha256 of its files' names and bytes."""
    files = snapshot_files(model_dir)
    names = {p.name for p in files}
    if "config.json" not in names or not any(is_weight_file(n) and n.endswith(".safetensors") for n in names):
        raise ParamsError(
            f"params.yaml: base.model: {model_dir}: not a model directory (needs config.json and *.safetensors "
            "weights; convert .bin weights with transformers' save_pretrained(safe_serialization=True))"
        )
    digest = hashlib.sha256()
    for src in files:
        digest.update(f"{src.name}\0{src.stat().st_size}\0".encode())
        with src.open("rb") as f_in, (out_dir / src.name).open("wb") as f_out:
            for block in iter(lambda: f_in.read(1 << 24), b""):
                digest.update(block)
                f_out.write(block)
    return {"model": model_dir.name, "source": "local", "revision": None, "digest": f"sha256:{digest.hexdigest()}"}


def snapshot_hub(model_id: str, revision: str, out_dir: Path) -> dict[str, Any]:
    """Download a hub model to the Hugging Face cache at `revision` and pin the commit sha it resolved to;
    copy its configs and tokenizer files (not the weights) into `out_dir`."""
    from huggingface_hub import snapshot_download

    snapshot = Path(snapshot_download(model_id, revision=revision, allow_patterns=list(SNAPSHOT_PATTERNS)))
    for src in snapshot_files(snapshot):
        if not is_weight_file(src.name):
            shutil.copyfile(src, out_dir / src.name)  # copyfile follows the cache's symlinks to the blobs
    # the snapshot folder is named by the commit sha (huggingface_hub's cache layout), online or offline
    return {"model": model_id, "source": "hub", "revision": snapshot.name}


def snapshot_base(model: str, revision: str, out_dir: Path) -> dict[str, Any]:
    """What base.json records for a hub id or a local directory (`model` as params.yaml gives it)."""
    local = Path(model).expanduser()
    if local.is_dir():
        return snapshot_local(local, out_dir)
    if local.is_absolute() or model.startswith((".", "~")) or model.count("/") > 1:
        raise ParamsError(f"params.yaml: base.model: {model}: no such directory (and not a hub id like Org/Name)")
    return snapshot_hub(model, revision, out_dir)
