"""Human review: the review file's rules (merge keeps decisions, broken rows named by line), the review
command driven through a real terminal (a pty: one key per decision, a note, an edit in $EDITOR), and
prepare taking exactly the rows a person accepted or edited, with their provenance counted."""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
import sys
from pathlib import Path

import pexpect
import pytest

from ta.config import Prepare, load_params
from ta.data import prepare
from ta.data.tokens import TokenCounter
from ta.errors import SelfInstructError
from ta.selfinstruct.review import (
    decide,
    edited,
    merge,
    read_review,
    taken_statuses,
    with_review_file,
    write_review,
)

REPO = Path(__file__).resolve().parents[2]
PROVENANCE = {"endpoint": "http://127.0.0.1:8000/v1", "model": "qwen-max", "template": "sha256:0123456789ab"}
QUESTIONS = [
    ("什么是质数？请举例说明。", "质数是只有 1 和它本身两个因数的大于 1 的整数，例如 2、3、5、7。"),
    ("为什么月亮会有阴晴圆缺？", "月亮自己不发光，我们看到的是被太阳照亮的部分；它绕地球转动时，这部分的形状在变。"),
    ("如何计算长方形的面积？", "长方形的面积等于长乘宽，例如长 5 厘米、宽 3 厘米，面积就是 15 平方厘米。"),
    ("水的沸点是多少摄氏度？", "在一个标准大气压下，水的沸点是 100 摄氏度；气压越低，沸点越低。"),
    ("英语中现在完成时怎么构成？", "现在完成时由 have/has 加过去分词构成，例如 I have finished my homework."),
]
EDITED_QUESTION = "月亮的阴晴圆缺是怎样形成的？"
EDITED_ANSWER = "月相变化是因为月球绕地球公转时，被太阳照亮的一面朝向地球的部分不断改变。"


def pending_rows() -> list[dict]:
    return [
        {
            "id": f"si-{i:016x}",
            "status": "pending",
            "note": "",
            "instruction": question,
            "answer": answer,
            "subject": "数学",
            "difficulty": "初中",
            "nearest": {"instruction": "什么是线性代数？", "source": "data/raw/sft_stem.jsonl:1", "rouge_l": 0.25},
            "provenance": {**PROVENANCE, "request": f"{i:016x}"},
        }
        for i, (question, answer) in enumerate(QUESTIONS)
    ]


def test_merge_keeps_every_decision_and_drops_only_pending_rows_no_longer_generated() -> None:
    old = pending_rows()
    old[0]["status"], old[1]["status"] = "accepted", "rejected"
    generated = [dict(row) for row in pending_rows()[2:4]] + [{**pending_rows()[0], "id": "si-new"}]
    merged = merge(old, generated)
    assert [row["id"] for row in merged] == [old[0]["id"], old[1]["id"], old[2]["id"], old[3]["id"], "si-new"]
    assert [row["status"] for row in merged] == ["accepted", "rejected", "pending", "pending", "pending"]
    assert merge(merged, generated) == merged  # a rerun changes nothing


def test_accepting_a_rewritten_pair_keeps_it_edited() -> None:
    row = edited(pending_rows()[0], "新的问题？", "新的回答。", "")
    assert decide(row, "accepted")["status"] == "edited" and decide(row, "rejected")["status"] == "rejected"
    assert decide(pending_rows()[0], "accepted", "好")["status"] == "accepted"


def test_a_broken_review_row_is_named_by_line(tmp_path: Path) -> None:
    path = tmp_path / "review.jsonl"
    rows = pending_rows()
    rows[1]["status"] = "acepted"
    path.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n", encoding="utf-8")
    with pytest.raises(SelfInstructError, match=r'review.jsonl:2: field "status" is \'acepted\'; use one of pending'):
        read_review(path)
    path.write_text(json.dumps(rows[0]) + "\n" + json.dumps(rows[0]) + "\n", encoding="utf-8")
    with pytest.raises(SelfInstructError, match="review.jsonl:2: id 'si-0000000000000000' appears twice"):
        read_review(path)


EDITOR_SCRIPT = f"""
import pathlib, sys
path = pathlib.Path(sys.argv[1])
text = path.read_text(encoding="utf-8")
text = text.replace({QUESTIONS[2][0]!r}, {EDITED_QUESTION!r}).replace({QUESTIONS[2][1]!r}, {EDITED_ANSWER!r})
path.write_text(text.replace("### note\\n", "### note\\n问题写得更清楚了\\n"), encoding="utf-8")
"""


@pytest.fixture(scope="module")
def reviewed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A review file of five pending pairs, decided through the review command in a real terminal:
    accept, reject with a note, edit (swapping the third pair for EDITED_*), skip, quit."""
    tmp_path = tmp_path_factory.mktemp("review")
    path = tmp_path / "data/selfinstruct/review.jsonl"
    write_review(path, pending_rows())
    editor = tmp_path / "editor.py"
    editor.write_text(EDITOR_SCRIPT, encoding="utf-8")
    child = pexpect.spawn(
        sys.executable,
        ["-m", "tools.review", "--file", str(path), "--editor", f"{sys.executable} {editor}"],
        cwd=REPO,
        env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin", "TERM": "xterm", "LANG": "C.UTF-8"},
        encoding="utf-8",
        timeout=60,
        dimensions=(50, 200),
    )
    try:
        child.expect_exact("─── 1/5 pending · si-0000000000000000 · 数学 · 初中 · qwen-max ───")
        child.expect_exact(QUESTIONS[0][0])
        child.expect_exact("nearest existing instruction (ROUGE-L 0.25, data/raw/sft_stem.jsonl:1):")
        child.expect_exact("[q] quit: ")
        child.send("a")  # a single key, no Enter
        child.expect_exact("─── 2/5")
        assert read_review(path)[0]["status"] == "accepted"  # saved at once, before the next pair
        child.expect_exact("[q] quit: ")
        child.send("r")
        child.expect_exact("note (why; Enter for none): ")
        child.sendline("天文现象解释得不够准确")
        child.expect_exact("─── 3/5")
        child.expect_exact("[q] quit: ")
        child.send("e")
        child.expect_exact("─── 4/5")
        child.expect_exact("[q] quit: ")
        child.send("x")  # not a key we know: the same pair again
        child.expect_exact("─── 4/5")
        child.expect_exact("[q] quit: ")
        child.send("s")
        child.expect_exact("─── 5/5")
        child.expect_exact("[q] quit: ")
        child.send("q")
        child.expect_exact("1 accepted, 1 rejected, 1 edited, 1 skipped")
        child.expect(pexpect.EOF)
    finally:
        child.close()
    assert child.exitstatus == 0, child.before
    return path


def test_the_review_command_records_one_key_decisions_notes_and_edits(reviewed: Path) -> None:
    rows = read_review(reviewed)
    assert [row["status"] for row in rows] == ["accepted", "rejected", "edited", "pending", "pending"]
    assert rows[1]["note"] == "天文现象解释得不够准确"
    assert (rows[2]["instruction"], rows[2]["answer"], rows[2]["note"]) == (
        EDITED_QUESTION,
        EDITED_ANSWER,
        "问题写得更清楚了",
    )
    assert rows[2]["original"] == {"instruction": QUESTIONS[2][0], "answer": QUESTIONS[2][1]}
    assert [r["instruction"] for r in rows[3:]] == [q for q, _ in QUESTIONS[3:]]


TOKEN = re.compile(r"[\u4e00-\u9fff]|\w+|[^\w\s]")
COUNTER = TokenCounter(
    lambda text: len(TOKEN.findall(text)), lambda messages: sum(len(TOKEN.findall(m["content"])) + 3 for m in messages)
)


def run_prepare(reviewed: Path, workdir: Path, monkeypatch: pytest.MonkeyPatch, require_review: bool) -> dict:
    """prepare as the stage runs it with selfinstruct on: the review file added to the SFT sources."""
    (workdir / "data/selfinstruct").mkdir(parents=True)
    shutil.copy(reviewed, workdir / "data/selfinstruct/review.jsonl")
    monkeypatch.chdir(workdir)
    selfinstruct = dataclasses.replace(
        load_params(REPO / "params.yaml").selfinstruct, enabled=True, require_review=require_review
    )
    params = Prepare(
        seed=42,
        system_prompt="你是教学助手。",
        sft_sources=[],
        preference_sources=[],
        min_tokens=5,
        max_tokens=512,
        refusal_patterns=["作为一个AI语言模型"],
        eval_fraction=0.3,  # prepare refuses an empty split: the edited row is held out, the others train
        on_error="stop",
        near_dup_threshold=0.0,
        near_dup_num_perm=64,
        redact_pii=False,
        num_proc=1,
    )
    return prepare.run_stage(with_review_file(params, selfinstruct), COUNTER, taken_statuses(require_review))


def kept_questions(workdir: Path) -> list[str]:
    splits = [workdir / "data/prepared/sft_train.jsonl", workdir / "data/prepared/sft_eval.jsonl"]
    rows = [json.loads(line) for split in splits for line in split.read_text("utf-8").splitlines()]
    return sorted(row["messages"][1]["content"] for row in rows)


def test_prepare_takes_exactly_the_accepted_and_edited_rows(
    reviewed: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    summary = run_prepare(reviewed, tmp_path, monkeypatch, require_review=True)
    assert kept_questions(tmp_path) == sorted([QUESTIONS[0][0], EDITED_QUESTION])
    assert summary["rejected_by_reason"]["review_rejected"] == 1
    assert summary["rejected_by_reason"]["review_pending"] == 2
    rejects = [json.loads(line) for line in (tmp_path / "data/prepared/rejects.jsonl").read_text("utf-8").splitlines()]
    assert {(r["source"], r["reason"]) for r in rejects} == {
        ("data/selfinstruct/review.jsonl:2", "review_rejected"),
        ("data/selfinstruct/review.jsonl:4", "review_pending"),
        ("data/selfinstruct/review.jsonl:5", "review_pending"),
    }
    assert [r["detail"] for r in rejects if r["reason"] == "review_rejected"] == [
        'status "rejected": 天文现象解释得不够准确'
    ]
    source = summary["sources"]["data/selfinstruct/review.jsonl"]
    assert (source["format"], source["rows_in"], source["kept"]) == ("selfinstruct", 5, 2)
    origin = f"qwen-max @ {PROVENANCE['endpoint']}, templates {PROVENANCE['template']}"
    assert source["provenance"] == {
        f"{origin}: accepted": {"rows_in": 1, "kept": 1},
        f"{origin}: edited": {"rows_in": 1, "kept": 1},
        f"{origin}: pending": {"rows_in": 2, "kept": 0},
        f"{origin}: rejected": {"rows_in": 1, "kept": 0},
    }
    metrics = json.loads((tmp_path / "metrics/prepare_sources.json").read_text("utf-8"))
    assert metrics["sources"]["data/selfinstruct/review.jsonl"]["provenance"] == source["provenance"]


def test_without_required_review_prepare_takes_every_row_but_the_rejected(
    reviewed: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    summary = run_prepare(reviewed, tmp_path, monkeypatch, require_review=False)
    assert kept_questions(tmp_path) == sorted([QUESTIONS[0][0], EDITED_QUESTION, *(q for q, _ in QUESTIONS[3:])])
    assert (
        summary["rejected_by_reason"]["review_rejected"] == 1 and summary["rejected_by_reason"]["review_pending"] == 0
    )
