"""prepare under faults: a kill -9 at any point leaves each output either the old complete file or the new one,
never part of one; a full disk is one line naming the file, and the old outputs stay whole."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from stages import prepare as prepare_stage
from tests.helpers import build_tokenizer, repo_env, write_params

OUTPUTS = [
    *(f"data/prepared/{n}.jsonl" for n in ("sft_train", "sft_eval", "pref_train", "pref_eval", "rejects")),
    "data/processed_data.jsonl",
    "metrics/prepare.json",
    "metrics/prepare_sources.json",
    "metrics/prepare_openings.csv",
    "metrics/prepare_lengths.csv",
]


def write_raw(work: Path, variant: str, rows: int) -> None:
    """SFT rows (some with an empty answer: the rejects file is not empty) and pairs; `variant` changes every row."""
    sft = []
    for i in range(rows):
        answer = "  " if i % 50 == 0 else f"第{i}个{variant}答案：把问题拆成小步骤，逐步计算，最后检查答案 {i}。"
        sft.append(
            json.dumps({"question": f"第{i}题（{variant}）：请解释这个概念。", "answer": answer}, ensure_ascii=False)
        )
    pairs = [
        json.dumps(
            {"instruction": f"解方程 x + {i} = {2 * i}（{variant}）", "chosen": f"x = {i}。", "rejected": "不知道。"},
            ensure_ascii=False,
        )
        for i in range(200)
    ]
    (work / "data/raw").mkdir(parents=True, exist_ok=True)
    (work / "data/raw/sft.jsonl").write_text("\n".join(sft) + "\n", encoding="utf-8")
    (work / "data/raw/pref.jsonl").write_text("\n".join(pairs) + "\n", encoding="utf-8")


def outputs(work: Path) -> dict[str, bytes | None]:
    return {name: (work / name).read_bytes() if (work / name).exists() else None for name in OUTPUTS}


def stage(work: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "stages.prepare"],
        cwd=work,
        env=repo_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A workspace after a complete prepare on data A, and the outputs a complete run on data B gives."""
    work = tmp_path_factory.mktemp("faults")
    build_tokenizer("byte_level_nfc", work / "models/base")
    sources = {"sft_sources": ["data/raw/sft.jsonl"], "preference_sources": ["data/raw/pref.jsonl"]}
    write_params(work, prepare={**sources, "num_proc": 2, "near_dup_threshold": 0.0})
    complete = {}
    for variant in ("B", "A"):  # ends with A in place
        write_raw(work, variant, rows=12_000)
        started = time.monotonic()
        assert stage(work).wait() == 0
        complete[variant] = outputs(work)
    return {"work": work, "complete": complete, "seconds": time.monotonic() - started}


def test_a_kill_at_any_point_leaves_old_or_new_outputs_whole(workspace: dict) -> None:
    work, complete = workspace["work"], workspace["complete"]
    write_raw(work, "B", rows=12_000)
    seconds = workspace["seconds"]
    for fraction in (0.1, 0.3, 0.5, 0.7, 0.85, 0.95):
        proc = stage(work)
        time.sleep(seconds * fraction)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        for name, data in outputs(work).items():
            assert data in (complete["A"][name], complete["B"][name]), f"{name} after a kill at {fraction:.0%}"
    assert stage(work).wait() == 0  # the next run takes up what a kill left behind
    assert outputs(work) == complete["B"]
    assert not list(work.rglob("*.tmp"))


def test_a_full_disk_is_one_line_naming_the_file_and_the_old_outputs_stay(
    workspace: dict, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """ENOSPC from a real device: the temp file of one output is /dev/full (writes to it fail with ENOSPC)."""
    work, complete = workspace["work"], workspace["complete"]
    write_raw(work, "A", rows=12_000)
    assert stage(work).wait() == 0 and outputs(work) == complete["A"]
    write_raw(work, "B", rows=12_000)
    monkeypatch.chdir(work)
    for name in ("data/prepared/sft_train.jsonl", "data/prepared/rejects.jsonl", "metrics/prepare.json"):
        (work / f"{name}.tmp").symlink_to("/dev/full")
        assert prepare_stage.main([]) == 2
        err = capsys.readouterr().err
        assert err == f"prepare: error: no space left on the device writing {name}\n"
        assert not (work / f"{name}.tmp").exists()
        if name != "metrics/prepare.json":  # the data files are written before the metrics
            assert outputs(work) == complete["A"]
