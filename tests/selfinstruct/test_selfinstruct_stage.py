"""The stage when off (the default): cheap, the same bytes every time, the review file untouched, no client
library imported; its params validated like every section; and its place in dvc.yaml before prepare."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from ta import paths

REPO = Path(__file__).resolve().parents[2]
OUTPUTS = [paths.REVIEW_FILE, paths.RESPONSE_CACHE, paths.SELFINSTRUCT_REJECTS, paths.SELFINSTRUCT_METRICS]


def python(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


def write_params(folder: Path, **selfinstruct) -> None:
    params = yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8"))
    params["selfinstruct"].update(selfinstruct)
    (folder / "params.yaml").write_text(yaml.safe_dump(params, allow_unicode=True), encoding="utf-8")


def test_off_it_writes_the_same_empty_outputs_and_imports_no_client(tmp_path: Path) -> None:
    write_params(tmp_path)  # the shipped params: off; no templates, no seeds, no server needed
    probe = (
        "import sys; from stages.selfinstruct import main; main([]); "
        "print(sorted({'openai', 'torch'} & {*sys.modules}))"
    )
    result = python(tmp_path, "-c", probe)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "[]"
    first = {path: (tmp_path / path).read_bytes() for path in OUTPUTS}
    assert first[paths.REVIEW_FILE] == first[paths.RESPONSE_CACHE] == first[paths.SELFINSTRUCT_REJECTS] == b""
    metrics = json.loads(first[paths.SELFINSTRUCT_METRICS])
    assert metrics["enabled"] is False and metrics["stopped_by"] == "disabled" and metrics["replies"] == 0
    assert python(tmp_path, "-m", "stages.selfinstruct").returncode == 0
    assert {path: (tmp_path / path).read_bytes() for path in OUTPUTS} == first


def test_off_the_review_file_passes_through_byte_for_byte(tmp_path: Path) -> None:
    write_params(tmp_path)
    review = tmp_path / paths.REVIEW_FILE
    review.parent.mkdir(parents=True)
    row = {"id": "si-1", "status": "accepted", "note": "好", "instruction": "什么是分数？", "answer": "分数是……"}
    text = json.dumps(row, ensure_ascii=False) + "\n"
    review.write_text(text, encoding="utf-8")
    result = python(tmp_path, "-m", "stages.selfinstruct")
    assert result.returncode == 0, result.stderr
    assert review.read_text(encoding="utf-8") == text
    assert json.loads((tmp_path / paths.SELFINSTRUCT_METRICS).read_text())["review"] == {
        "rows": 1,
        "pending": 0,
        "accepted": 1,
        "rejected": 0,
        "edited": 0,
    }


@pytest.mark.parametrize(
    "change, message",
    [
        ({"base_url": "127.0.0.1:8000/v1"}, "selfinstruct.base_url: '127.0.0.1:8000/v1' is not an http(s) URL"),
        (
            {"min_answer_chars": 900, "max_answer_chars": 100},
            "selfinstruct.min_answer_chars: 900 exceeds max_answer_chars",
        ),
        ({"extra_body": [1]}, "selfinstruct.extra_body: expected a mapping"),
        ({"rouge_l_threshold": 1.5}, "selfinstruct.rouge_l_threshold: must be <= 1"),
        ({"subjects": []}, "selfinstruct.subjects: empty"),
        ({"seed_sources": [{"path": "a.jsonl", "hub": "x/y"}]}, "selfinstruct.seed_sources[0]: give exactly one of"),
    ],
)
def test_bad_params_are_one_line_errors_with_their_key(tmp_path: Path, change: dict, message: str) -> None:
    write_params(tmp_path, **change)
    result = python(tmp_path, "-m", "stages.selfinstruct")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_dvc_runs_it_before_prepare_with_exactly_what_it_reads() -> None:
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text(encoding="utf-8"))["stages"]
    stage, prepare = stages["selfinstruct"], stages["prepare"]
    assert list(stages).index("selfinstruct") < list(stages).index("prepare")
    # its params.yaml keys (libraries.yaml is checked with every stage in tests/test_libraries.py)
    assert {"selfinstruct", "prepare.refusal_patterns"} == {p for p in stage["params"] if isinstance(p, str)}
    outs = {
        next(iter(o)) if isinstance(o, dict) else o: (o[next(iter(o))] if isinstance(o, dict) else {})
        for o in stage["outs"]
    }
    assert outs[str(paths.REVIEW_FILE)] == {"cache": False, "persist": True}  # git-tracked, decisions survive
    assert outs[str(paths.RESPONSE_CACHE)] == {"persist": True}  # paid replies survive a rerun
    assert str(paths.SELFINSTRUCT_REJECTS) in outs
    assert {"prompts/selfinstruct", "ta/selfinstruct", "stages/selfinstruct.py"} <= set(stage["deps"])
    # prepare reads the review file and only the two switches: other selfinstruct params do not rerun it
    assert str(paths.REVIEW_FILE) in prepare["deps"]
    assert {"selfinstruct.enabled", "selfinstruct.require_review"} <= {
        p for p in prepare["params"] if isinstance(p, str)
    }
    assert "selfinstruct" not in prepare["params"]
    # the decisions file is committed, the cache and the rejects are DVC's
    ignored = subprocess.run(
        ["git", "check-ignore", str(paths.REVIEW_FILE), str(paths.RESPONSE_CACHE), str(paths.SELFINSTRUCT_REJECTS)],
        cwd=REPO,
        capture_output=True,
        text=True,
    ).stdout.split()
    assert ignored == [str(paths.RESPONSE_CACHE), str(paths.SELFINSTRUCT_REJECTS)]
