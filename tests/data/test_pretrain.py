"""The rows the tiny base pretrains on (ta/data/pretrain.py), against prepare's own run on the same raw files:
never a row prepare holds out, whatever the layout (pairs with `input`, Alpaca, a BOM) or `redact_pii`; and a
damaged row stops base with prepare's `file:line` error, or is counted as prepare counts it.

Every raw row carries a tag (第N题) in its prompt, which survives PII scrubbing and `input` joining: a
held-out row is found in base's texts by its tag, whatever became of the rest of its text.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from stages import base as base_stage
from ta.data import prepare
from ta.data.pretrain import pretrain_rows
from ta.errors import DataError
from tests.helpers import hand_counter, prepare_params, read_jsonl, write_params

TAG = re.compile(r"第\d+题")
ROWS = 80


def qa_rows(pii: bool = False) -> list[dict]:
    contact = "，有问题请写信给 teacher{i}@school.edu.cn 或拨打 1380013{i:04d}" if pii else ""
    return [
        {
            "question": f"第{i}题：请解释一下编号为{i}的概念是什么意思？",
            "answer": f"编号为{i}的概念是一个用来说明问题的例子，它帮助我们理解{i}号知识点{contact.format(i=i)}。",
        }
        for i in range(ROWS)
    ]


def pairs_with_input() -> list[dict]:
    return [
        {
            "instruction": f"第{i}题：把下面的句子翻译成英文。",
            "input": f"今天是第{i}天，天气很好，我们去公园散步。",
            "chosen": f"Today is day {i}; the weather is fine, so we take a walk in the park.",
            "rejected": f"Day {i} good.",
        }
        for i in range(1000, 1000 + ROWS)
    ]


def alpaca_rows() -> list[dict]:
    return [
        {
            "instruction": f"第{i}题：用一句话解释下面这个词。",
            "input": f"词语{i}号",
            "output": f"词语{i}号是一个为了测试而编出来的词，它的意思是第{i}个例子。",
        }
        for i in range(2000, 2000 + ROWS)
    ]


def jsonl(rows: list[dict]) -> bytes:
    return "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows).encode("utf-8")


def raw_params(sft: dict[str, bytes], preference: dict[str, bytes], **overrides):
    """params `prepare` over the files {name: content} written under data/raw/ of the working directory: a
    quarter held out, near-duplicate detection off (the rows differ only in their numbers), no length limit in
    the way."""
    for name, data in {**sft, **preference}.items():
        path = Path("data/raw") / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    defaults = {"eval_fraction": 0.25, "near_dup_threshold": 0.0, "min_tokens": 1, "max_tokens": 4096}
    return prepare_params(
        sft_sources=[f"data/raw/{name}" for name in sft],
        preference_sources=[f"data/raw/{name}" for name in preference],
        **{**defaults, **overrides},
    )


def tags(rows: list[dict]) -> set[str]:
    """The tags of prepared rows (TRL form), from their user turns."""
    turns = [m for row in rows for m in row.get("prompt", row.get("messages", [])) if m["role"] == "user"]
    return {tag for m in turns for tag in TAG.findall(m["content"])}


def check_no_held_out_row(params) -> list[str]:
    """Run prepare and base's selection on the same params: base pretrains on no row prepare held out, and on
    every row prepare trains on. Returns base's texts."""
    prepare.run_stage(params, hand_counter())
    prepared = Path("data/prepared")
    held_out = tags(read_jsonl(prepared / "sft_eval.jsonl") + read_jsonl(prepared / "pref_eval.jsonl"))
    trained = tags(read_jsonl(prepared / "sft_train.jsonl") + read_jsonl(prepared / "pref_train.jsonl"))
    texts = pretrain_rows(params).texts
    pretrained = {tag for text in texts for tag in TAG.findall(text)}
    assert held_out and trained
    assert not held_out & pretrained, f"held-out rows in base's pretraining texts: {sorted(held_out & pretrained)}"
    assert trained <= pretrained
    return texts


@pytest.fixture
def in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_pairs_with_an_input_split_as_prepare_splits_them(in_tmp: Path) -> None:
    """prepare's prompt is instruction + input: its id, so its split, is not the instruction's alone."""
    params = raw_params({"sft.jsonl": jsonl(qa_rows())}, {"pref.jsonl": jsonl(pairs_with_input())})
    texts = check_no_held_out_row(params)
    assert any("今天是第1" in text for text in texts)  # the input is part of what base learns


def test_redacted_rows_split_as_prepare_splits_them_and_leave_no_pii(in_tmp: Path) -> None:
    """With redact_pii, prepare's id is the scrubbed row's; base pretrains on the scrubbed text too."""
    params = raw_params(
        {"sft.jsonl": jsonl(qa_rows(pii=True))},
        {"pref.jsonl": jsonl(pairs_with_input())},
        redact_pii=True,
    )
    texts = check_no_held_out_row(params)
    assert not any("@school.edu.cn" in text or "1380013" in text for text in texts)
    assert any("[EMAIL]" in text for text in texts)


def test_alpaca_rows_are_read_and_split_as_prepare_does(in_tmp: Path) -> None:
    params = raw_params({"alpaca.jsonl": jsonl(alpaca_rows())}, {"pref.jsonl": jsonl(pairs_with_input())})
    check_no_held_out_row(params)


def test_a_byte_order_mark_changes_nothing(in_tmp: Path) -> None:
    bom = b"\xef\xbb\xbf"
    params = raw_params({"sft.jsonl": bom + jsonl(qa_rows())}, {"pref.jsonl": bom + jsonl(pairs_with_input())})
    texts = check_no_held_out_row(params)
    plain = raw_params({"sft2.jsonl": jsonl(qa_rows())}, {"pref2.jsonl": jsonl(pairs_with_input())})
    assert texts == pretrain_rows(plain).texts


def with_bad_line() -> bytes:
    lines = jsonl(qa_rows()).splitlines(keepends=True)
    return b"".join([lines[0], b'{"question": "no closing brace", "answer": "x"\n', *lines[1:]])


def test_a_malformed_line_stops_base_with_prepares_error(in_tmp: Path) -> None:
    params = raw_params({"sft.jsonl": with_bad_line()}, {"pref.jsonl": jsonl(pairs_with_input())})
    with pytest.raises(DataError) as from_prepare:
        prepare.run_stage(params, hand_counter())
    with pytest.raises(DataError) as from_base:
        pretrain_rows(params)
    assert str(from_base.value) == str(from_prepare.value)
    assert str(from_base.value).startswith("data/raw/sft.jsonl:2: malformed JSON")


def test_a_malformed_line_is_one_reject_under_on_error_skip(in_tmp: Path) -> None:
    params = raw_params(
        {"sft.jsonl": with_bad_line()},
        {"pref.jsonl": jsonl(pairs_with_input())},
        on_error="skip",
    )
    check_no_held_out_row(params)
    rows = pretrain_rows(params)
    assert (rows.rows_in, rows.rejected) == (2 * ROWS + 1, 1)


def test_the_stage_reports_a_malformed_line_in_one_line(in_tmp: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`python -m stages.base` on the tiny model: exit code 2 and `file:line`, before any training, no traceback."""
    raw_params({"sft.jsonl": with_bad_line()}, {"pref.jsonl": jsonl(pairs_with_input())})
    write_params(
        in_tmp,
        base={"model": "tiny"},
        prepare={"sft_sources": ["data/raw/sft.jsonl"], "preference_sources": ["data/raw/pref.jsonl"]},
    )
    assert base_stage.main([]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err
    assert err.startswith("base: error: data/raw/sft.jsonl:2: malformed JSON at column")
