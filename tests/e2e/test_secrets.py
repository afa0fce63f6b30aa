"""Keys only through the environment: the pipeline's run had a fake key under every variable name params.yaml
gives for one (tests/conftest.py, PLANTED_KEYS); none may appear in any file of the workspace — tracked outputs,
dvc.lock, metrics, DVCLive, models, the DVC cache, git — nor in the run's output."""

from __future__ import annotations

from pathlib import Path

from tests.conftest import PLANTED_KEYS


def files_holding(root: Path, needles: list[bytes]) -> list[str]:
    hits = []
    for path in sorted(root.rglob("*")):
        if path.is_file() and not path.is_symlink():
            data = path.read_bytes()
            hits += [f"{path.relative_to(root)}: {needle.decode()}" for needle in needles if needle in data]
    return hits


def test_no_planted_key_reaches_a_file_or_the_log(pipeline_repo: Path, tmp_path: Path) -> None:
    needles = [key.encode() for key in PLANTED_KEYS.values()]
    assert len(needles) == 3  # selfinstruct, the judge, serving
    log = (pipeline_repo.parent / "repro.log").read_bytes()
    assert b"Running stage 'eval'" in log
    assert [needle for needle in needles if needle in log] == []
    assert files_holding(pipeline_repo, needles) == []

    # the search itself finds a key where there is one, in text and inside a binary file
    (tmp_path / "config.json").write_text(f'{{"token": "{PLANTED_KEYS["TA_API_KEY"]}"}}', encoding="utf-8")
    (tmp_path / "blob.bin").write_bytes(b"\x00\xff" + needles[0] + b"\x00")
    assert len(files_holding(tmp_path, needles)) == 2
