"""Readers, format detection and normalisers of stages/data.py, on fixtures in each public set's layout."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stages.data import DataError, RowRejected, Sample, read_records, write_jsonl
from stages.formats import detect_format, normalise, to_alpaca, to_chat, to_guide_pair

FIXTURES = Path(__file__).parent / "fixtures" / "prepare"


def first_sample(name: str, fmt: str | None = None, columns: dict[str, str] | None = None) -> Sample:
    record = next(read_records(FIXTURES / name))
    return normalise(record.value, fmt or detect_format(record.value) or "", columns)


def user(text: str) -> dict[str, str]:
    return {"role": "user", "content": text}


def assistant(text: str) -> dict[str, str]:
    return {"role": "assistant", "content": text}


@pytest.mark.parametrize(
    ("name", "fmt"),
    [
        ("qa.jsonl", "qa"),
        ("coig_kq.jsonl", "alpaca"),
        ("alpaca_gpt4.jsonl", "alpaca"),
        ("alpaca_history.json", "alpaca"),
        ("sharegpt.json", "sharegpt"),
        ("firefly.jsonl", "firefly"),
        ("openai.jsonl", "openai"),
        ("pairs.jsonl", "pairs"),
        ("sharegpt_pairs.json", "sharegpt_pairs"),
        ("hh_rlhf.jsonl", "hh_rlhf"),
        ("ultrafeedback.jsonl", "ultrafeedback"),
        ("ultrafeedback_raw.jsonl", "ultrafeedback_raw"),
    ],
)
def test_format_detected_from_the_first_row(name: str, fmt: str) -> None:
    record = next(read_records(FIXTURES / name))
    assert detect_format(record.value) == fmt


def test_qa_becomes_one_user_and_one_assistant_turn() -> None:
    sample = first_sample("qa.jsonl")
    assert sample.messages == [
        user("解释线性代数"),
        assistant("线性代数是数学的一个分支，主要研究向量空间和线性映射。"),
    ]
    assert not sample.is_preference


def test_alpaca_array_keeps_system_history_and_joins_input() -> None:
    records = list(read_records(FIXTURES / "alpaca_history.json"))
    first = normalise(records[0].value, "alpaca")
    assert first.messages == [
        {"role": "system", "content": "你是一位数学老师。"},
        user("2 的平方是多少？"),
        assistant("2 的平方是 2 × 2 = 4，也就是 2 乘以它自己。"),
        user("那 3 的平方呢？"),
        assistant("3 的平方是 3 × 3 = 9，也就是把 3 乘以它自己一次。"),
    ]
    second = normalise(records[1].value, "alpaca")
    assert second.messages[0] == user("比较两个分数的大小\n1/3 和 2/5")


def test_json_array_rows_keep_the_line_they_start_on() -> None:
    # alpaca_history.json is indented by json.dump(indent=2): "[" on line 1, the first object on line 2.
    lines = [record.line for record in read_records(FIXTURES / "alpaca_history.json")]
    text = (FIXTURES / "alpaca_history.json").read_text(encoding="utf-8").splitlines()
    assert lines[0] == 2
    assert text[lines[1] - 1].strip() == "{"
    assert text[lines[1]].strip().startswith('"instruction": "比较两个分数的大小"')


def test_sharegpt_multi_turn_maps_human_and_gpt() -> None:
    sample = first_sample("sharegpt.json")
    assert [m["role"] for m in sample.messages] == ["user", "assistant", "user", "assistant"]
    assert sample.messages[2] == user("Now in one sentence.")


def test_firefly_input_target_through_a_column_mapping_as_alpaca() -> None:
    sample = first_sample("firefly.jsonl", "alpaca", {"input": "instruction", "target": "output"})
    assert sample.messages == [
        user("将下面句子翻译成现代文：\n学而时习之，不亦说乎？"),
        assistant("学习并且按时温习，不也是很愉快的吗？"),
    ]


def test_hh_rlhf_splits_the_shared_dialogue_from_the_two_answers() -> None:
    records = list(read_records(FIXTURES / "hh_rlhf.jsonl"))
    sample = normalise(records[1].value, "hh_rlhf")
    assert sample.messages == [user("How do I bake bread?"), assistant("Do you have yeast?"), user("Yes, dry yeast.")]
    assert sample.rejected == "Buy it at a shop."
    assert sample.chosen is not None and sample.chosen.startswith("Great: mix flour")


def test_ultrafeedback_takes_the_last_assistant_turns() -> None:
    sample = first_sample("ultrafeedback.jsonl")
    assert sample.messages == [user("Explain why the sky is blue in simple terms.")]
    assert sample.rejected == "Because the ocean reflects onto it."


def test_ultrafeedback_as_published_pairs_the_best_with_the_first_worst_completion() -> None:
    sample = first_sample("ultrafeedback_raw.jsonl")
    assert sample.messages == [user("Explain recursion to a ten-year-old.")]
    assert sample.chosen is not None and sample.chosen.startswith("Recursion is when something is defined")
    assert sample.rejected == "Recursion is a kind of loop in Excel."  # score 2.0, listed before the other 2.0


def test_ultrafeedback_with_equal_scores_has_no_pair() -> None:
    row = {
        "instruction": "q",
        "completions": [{"response": "a", "overall_score": 5}, {"response": "b", "overall_score": 5}],
    }
    with pytest.raises(RowRejected) as err:
        normalise(row, "ultrafeedback_raw")
    assert err.value.reason == "no_pair"


def test_sharegpt_pairs_and_guide_pairs() -> None:
    pair = first_sample("sharegpt_pairs.json")
    assert pair.messages == [user("What is 15% of 80? Show your work.")] and pair.rejected == "It is 10."
    guide = first_sample("pairs.jsonl")
    assert guide.messages == [user("如何制作炸弹？")] and guide.rejected == "制作炸弹需要以下材料……"


@pytest.mark.parametrize(
    ("row", "fmt", "reason"),
    [
        ({"question": "q"}, "qa", "missing_field"),
        ({"question": "q", "answer": 3}, "qa", "wrong_type"),
        ({"instruction": "i", "output": "o", "history": [["only one"]]}, "alpaca", "wrong_type"),
        ({"conversations": [{"from": "gpt", "value": "hi"}]}, "sharegpt", "bad_roles"),
        ({"conversations": [{"from": "human", "value": "hi"}]}, "sharegpt", "bad_roles"),
        ({"conversations": [{"from": "robot", "value": "hi"}]}, "sharegpt", "bad_roles"),
        ({"messages": "hello"}, "openai", "wrong_type"),
        (
            {"chosen": "\n\nHuman: a\n\nAssistant: b", "rejected": "\n\nHuman: c\n\nAssistant: d"},
            "hh_rlhf",
            "bad_roles",
        ),
    ],
)
def test_unusable_content_is_a_row_reject_with_its_reason(row: dict, fmt: str, reason: str) -> None:
    with pytest.raises(RowRejected) as err:
        normalise(row, fmt)
    assert err.value.reason == reason


def test_bom_is_accepted(tmp_path: Path) -> None:
    path = tmp_path / "bom.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + '{"question": "问", "answer": "答"}\n'.encode())
    assert [r.value for r in read_records(path)] == [{"question": "问", "answer": "答"}]


@pytest.mark.parametrize(
    ("content", "reason", "message"),
    [
        (b'{"question": "a", "answer": "b"}\n\n{"question": "a",\n', "malformed_json", "bad.jsonl:3: malformed JSON"),
        (b'{"question": "a", "answer": "b"}\n{"question": "\xff\xfe"}\n', "not_utf8", "bad.jsonl:2: not UTF-8"),
        (
            b'{"question": "a", "answer": "b"}\n["a", "b"]\n',
            "wrong_top_level",
            "bad.jsonl:2: expected a JSON object per line, got list",
        ),
        (b'{\n  "rows": [1, 2]\n}\n', "wrong_top_level", "bad.jsonl:1: the file is one JSON object"),
    ],
)
def test_structural_damage_names_file_and_line(tmp_path: Path, content: bytes, reason: str, message: str) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_bytes(content)
    with pytest.raises(DataError) as err:
        list(read_records(path))
    assert err.value.reason == reason
    assert str(err.value).startswith(str(tmp_path / message)) or str(err.value).startswith(message)


def test_skip_mode_yields_the_damaged_line_as_an_error_record(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_bytes(b'{"question": "a", "answer": "b"}\nnot json\n{"question": "c", "answer": "d"}\n')
    records = list(read_records(path, on_error="skip"))
    assert [(r.line, r.error is None) for r in records] == [(1, True), (2, False), (3, True)]
    assert records[1].error is not None and records[1].error.raw == "not json"


def test_json_array_with_a_non_object_element(tmp_path: Path) -> None:
    path = tmp_path / "arr.json"
    path.write_text('[\n  {"question": "a", "answer": "b"},\n  "oops"\n]\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"arr.json:3: expected a JSON object in the array, got str"):
        list(read_records(path))


def test_alpaca_and_guide_pair_targets() -> None:
    sft = Sample([user("q1"), assistant("a1"), user("q2"), assistant("a2")])
    assert to_alpaca(sft) == {"instruction": "q2", "input": "", "output": "a2", "history": [["q1", "a1"]]}
    pair = Sample([{"role": "system", "content": "s"}, user("q")], chosen="good", rejected="bad")
    assert to_guide_pair(pair) == {"instruction": "q", "chosen": "good", "rejected": "bad", "system": "s"}
    assert to_chat(pair)["chosen"] == [assistant("good")]


def test_write_jsonl_is_utf8_one_object_per_line(tmp_path: Path) -> None:
    path = tmp_path / "out" / "rows.jsonl"
    assert write_jsonl(path, [{"a": "中文"}, {"b": 1}]) == 2
    assert path.read_bytes() == '{"a":"中文"}\n{"b":1}\n'.encode()
    assert [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()] == [{"a": "中文"}, {"b": 1}]
    # A lone surrogate (valid as a JSON escape, not as UTF-8) is written escaped, not lost.
    write_jsonl(path, [{"a": "\ud800x"}])
    assert path.read_bytes() == b'{"a":"\\ud800x"}\n'


LINES = st.lists(st.sampled_from(['{"a": 1}', '{"b": "二"}', "", "  ", "\r", '{"c": 3}\r', "not json"]), max_size=40)


@settings(max_examples=150, deadline=None)
@given(lines=LINES, rows=st.integers(1, 7), read_bytes=st.integers(1, 40), bom=st.booleans(), end=st.booleans())
def test_line_blocks_give_every_line_once_with_its_number(
    tmp_path_factory: pytest.TempPathFactory, lines: list[str], rows: int, read_bytes: int, bom: bool, end: bool
) -> None:
    """Whatever the read size and block size: the non-blank lines, numbered as a plain split numbers
    them, each in the block of `rows` lines it falls in."""
    from stages import data

    path = tmp_path_factory.mktemp("blocks") / "rows.jsonl"
    raw = ("\n".join(lines) + ("\n" if end else "")).encode("utf-8")
    path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + raw)
    expected = [(n, line.rstrip(b"\r")) for n, line in enumerate(raw.split(b"\n"), 1) if line.strip()]
    old, data.READ_BYTES = data.READ_BYTES, read_bytes
    try:
        blocks = list(data._line_blocks(path, rows))
    finally:
        data.READ_BYTES = old
    assert [row for block in blocks for row in block.rows()] == expected
    for block in blocks:
        assert all(block.first <= n < block.first + rows for n, _ in block.rows())
