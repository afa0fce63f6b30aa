"""What the export tests read: the artifacts of the reduced pipeline run (the fast tier's; in a session with the
full pipeline, the full run's)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest


@pytest.fixture(scope="session")
def chain(reduced_repo: Path) -> SimpleNamespace:
    """Paths of the chain's artifacts: repo, base, sft, dpo, merged, f16, q4, modelfile, sft_eval."""
    return SimpleNamespace(
        repo=reduced_repo,
        base=reduced_repo / "models/base",
        sft=reduced_repo / "models/sft",
        dpo=reduced_repo / "models/dpo",
        merged=reduced_repo / "models/merged",
        f16=reduced_repo / "models/gguf/teachingassistant-f16.gguf",
        q4=reduced_repo / "models/gguf/teachingassistant-q4_k_m.gguf",
        modelfile=reduced_repo / "models/ollama/Modelfile",
        sft_eval=reduced_repo / "data/prepared/sft_eval.jsonl",
    )
