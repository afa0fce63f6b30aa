"""Which base model the pipeline trains, pinned: written by the base stage, read by every later stage.

`models/base/base.json` is the single place a later stage learns where the base model lives: for `tiny`
the weights are in models/base itself; for a hub model it names the repo id and the exact commit sha, so
every stage loads the same revision that dvc.lock pins; for a local directory, a digest of its files.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ta.config import Base
from ta.errors import MissingInputError
from ta.paths import BASE_DIR


@dataclass(frozen=True)
class BaseModelRef:
    """Where the base model's weights and tokenizer are: a local dir, or a hub id at a pinned revision."""

    name_or_path: str
    revision: str | None
    trust_remote_code: bool

    def from_pretrained_kwargs(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"trust_remote_code": self.trust_remote_code, "use_safetensors": True}
        if self.revision:
            kwargs["revision"] = self.revision
        return kwargs


def read_base_ref(base_dir: Path = BASE_DIR) -> BaseModelRef:
    info_file = base_dir / "base.json"
    try:
        info = json.loads(info_file.read_text(encoding="utf-8"))
    except FileNotFoundError as err:
        raise MissingInputError(f"{info_file}: missing; run `dvc repro base` first") from err
    location = str(base_dir) if info["model"] == "tiny" else info.get("path") or info["model"]
    return BaseModelRef(location, info.get("revision"), bool(info.get("trust_remote_code", False)))


def resolve_base(params: Base) -> dict[str, object]:
    """Snapshot a hub model (or fingerprint a local dir) and return what base.json records."""
    local = Path(params.model).expanduser()
    if local.is_dir():
        digest = hashlib.sha256()
        for file in sorted(p for p in local.rglob("*") if p.is_file()):
            digest.update(f"{file.relative_to(local)}:{file.stat().st_size}\n".encode())
        return {
            "model": str(local.resolve()),
            "revision": None,
            "path": str(local.resolve()),
            "digest": digest.hexdigest(),
        }
    from huggingface_hub import HfApi, snapshot_download

    sha = HfApi().model_info(params.model, revision=params.revision).sha
    path = snapshot_download(params.model, revision=sha, allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt"])
    return {"model": params.model, "revision": sha, "path": path}
