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


def test_an_output_replaces_the_old_one_only_when_its_block_ends_normally(tmp_path: Path) -> None:
    from ta.files import atomic_output, open_atomically

    final = tmp_path / "model.gguf"
    final.write_bytes(b"old")
    with pytest.raises(ValueError, match="parity"), atomic_output(final) as unchecked:
        unchecked.write_bytes(b"new but wrong")
        raise ValueError("parity failed")  # a check that fails after the file was written
    assert final.read_bytes() == b"old" and sorted(p.name for p in tmp_path.iterdir()) == ["model.gguf"]
    with open_atomically(tmp_path / "sub" / "rows.jsonl") as f:
        f.write(b"{}\n")
        assert not (tmp_path / "sub" / "rows.jsonl").exists()  # nothing at the final path while writing
    assert (tmp_path / "sub" / "rows.jsonl").read_bytes() == b"{}\n"


def test_a_failed_write_leaves_no_temp_file(tmp_path: Path) -> None:
    stamp = tmp_path / "run.json"
    with pytest.raises(UnicodeEncodeError):
        write_atomically(stamp, "new\n\udc80")
    assert list(tmp_path.iterdir()) == []


def test_a_directory_output_is_replaced_whole_or_left_as_it_was(tmp_path: Path) -> None:
    from ta.files import atomic_directory

    model = tmp_path / "models" / "sft"
    model.mkdir(parents=True)
    (model / "adapter_model.safetensors").write_bytes(b"old weights")
    (model / "stale.json").write_text("{}")
    with pytest.raises(RuntimeError), atomic_directory(model) as staging:
        (staging / "adapter_model.safetensors").write_bytes(b"new, half")
        raise RuntimeError("killed while saving")
    assert sorted(p.name for p in model.iterdir()) == ["adapter_model.safetensors", "stale.json"]
    assert (model / "adapter_model.safetensors").read_bytes() == b"old weights"
    (tmp_path / "models" / "sft.tmp").mkdir()  # what a kill -9 while saving leaves
    with atomic_directory(model) as staging:
        (staging / "adapter_model.safetensors").write_bytes(b"new weights")
        assert (model / "adapter_model.safetensors").read_bytes() == b"old weights"  # until the block ends
    assert sorted(p.name for p in model.iterdir()) == ["adapter_model.safetensors"]  # nothing of the old one
    assert (model / "adapter_model.safetensors").read_bytes() == b"new weights"
    assert sorted(p.name for p in (tmp_path / "models").iterdir()) == ["sft"]
