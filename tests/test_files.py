"""Writing outputs whole or not at all (ta/files.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from ta.files import write_atomically


def test_an_atomic_write_leaves_the_old_text_when_it_fails(tmp_path: Path) -> None:
    stamp = tmp_path / "run.json"
    write_atomically(stamp, "old\n")
    with pytest.raises(UnicodeEncodeError):
        write_atomically(stamp, "new\n\udc80")  # fails half-way through writing, like a killed run
    assert stamp.read_text() == "old\n"


def test_a_temp_file_a_killed_run_left_is_taken_up(tmp_path: Path) -> None:
    (tmp_path / "run.json.tmp").write_text("half")
    write_atomically(tmp_path / "run.json", "whole\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.json"]
    assert (tmp_path / "run.json").read_text() == "whole\n"
