"""Every supported input layout into the internal conversation form (ta/data/formats.py) and back out in
the guide's forms, on fixtures written in each public set's layout (tests/fixtures/prepare)."""

from __future__ import annotations

import pytest

from ta.data.formats import detect_format, is_preference_format, normalise, to_alpaca, to_chat, to_guide_pair
from ta.data.io import read_records
from ta.data.samples import RowRejected, Sample
from tests.helpers import PREPARE_FIXTURES as FIXTURES


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


@pytest.mark.parametrize(
    ("scores", "reason"),
    [
        ([5, 5], "no_preference"),
        ([float("nan"), float("nan")], "no_preference"),
        ([float("nan"), 3], "no_preference"),  # a NaN score rates nothing: one rated completion left
        ([float("inf"), 3], "no_preference"),
        ([5], "no_pair"),
    ],
)
def test_ultrafeedback_without_two_different_scores_has_no_preference(scores: list[float], reason: str) -> None:
    row = {
        "instruction": "q",
        "completions": [{"response": f"answer {i}", "overall_score": score} for i, score in enumerate(scores)],
    }
    with pytest.raises(RowRejected) as err:
        normalise(row, "ultrafeedback_raw")
    assert err.value.reason == reason


def test_ultrafeedback_skips_a_nan_score_between_rated_ones() -> None:
    scores = [2, float("nan"), 9]
    row = {"instruction": "q", "completions": [{"response": str(s), "overall_score": s} for s in scores]}
    sample = normalise(row, "ultrafeedback_raw")
    assert (sample.chosen, sample.rejected) == ("9", "2")


def test_sharegpt_pairs_without_an_answer_is_a_missing_field() -> None:
    row = {"conversations": [{"from": "human", "value": "q"}], "chosen": {"from": "gpt", "value": "a"}}
    with pytest.raises(RowRejected) as err:
        normalise(row, "sharegpt_pairs")
    assert (err.value.reason, err.value.detail) == ("missing_field", 'field "rejected" is missing')


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


def test_alpaca_and_guide_pair_targets() -> None:
    sft = Sample([user("q1"), assistant("a1"), user("q2"), assistant("a2")])
    assert to_alpaca(sft) == {"instruction": "q2", "input": "", "output": "a2", "history": [["q1", "a1"]]}
    pair = Sample([{"role": "system", "content": "s"}, user("q")], chosen="good", rejected="bad")
    assert to_guide_pair(pair) == {"instruction": "q", "chosen": "good", "rejected": "bad", "system": "s"}
    assert to_chat(pair)["chosen"] == [assistant("good")]


def test_params_offer_exactly_the_formats_there_is_a_reader_for() -> None:
    from ta.config import SourceFormat, choices
    from ta.data.formats import NORMALISERS, PREFERENCE_FORMATS, SFT_FORMATS

    assert set(choices(SourceFormat)) - {"auto"} == set(NORMALISERS) == {*SFT_FORMATS, *PREFERENCE_FORMATS}
    assert [is_preference_format(fmt) for fmt in SFT_FORMATS] == [False] * len(SFT_FORMATS)
    assert all(is_preference_format(fmt) for fmt in PREFERENCE_FORMATS)


def test_columns_rename_a_sources_fields_before_reading() -> None:
    row = {"q": "什么是质数？", "a": "只能被 1 和自身整除的大于 1 的整数。", "q_id": 7}
    assert detect_format(row) is None
    sample = normalise(row, "qa", {"q": "question", "a": "answer"})
    assert sample.messages == [user("什么是质数？"), assistant("只能被 1 和自身整除的大于 1 的整数。")]
