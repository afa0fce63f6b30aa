"""`python -m tools.drill` regenerates the shipped drill files byte for byte."""

from __future__ import annotations

from pathlib import Path

from tests.helpers import REPO, run_module


def test_shipped_drill_files_regenerate_byte_for_byte(tmp_path: Path) -> None:
    result = run_module("tools.drill", REPO, "--out-dir", str(tmp_path))
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"wrote 600 SFT drill rows and 150 preference pairs to {tmp_path}\n"
    for name in ("sft_drill.jsonl", "preference_drill.jsonl"):
        assert (tmp_path / name).read_bytes() == (REPO / "data/raw" / name).read_bytes()
