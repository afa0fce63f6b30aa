"""prepare's per-row work (ta/data/rows.py): a chunk of raw rows in, column-wise decisions and rendered
output lines out."""

from __future__ import annotations

import json

import pytest

from ta.data.io import LineBlock
from ta.data.rows import make_row_processor, normalised_opening
from ta.errors import ParamsError
from tests.helpers import hand_counter, prepare_params

SYSTEM = "你是教学助手。"
QUESTION = "什么是光合作用？请用简单的话解释一下。"
ANSWER = "光合作用是绿色植物利用光能，把二氧化碳和水合成有机物并释放氧气的过程。"


def line(row: dict) -> bytes:
    return json.dumps(row, ensure_ascii=False).encode("utf-8")


def processor(guide_only: bool = False, **overrides):
    params = prepare_params(system_prompt=SYSTEM, near_dup_threshold=0.8, near_dup_num_perm=64, **overrides)
    return make_row_processor(params, hand_counter(), guide_only)


def test_a_chunk_keeps_what_passes_and_renders_both_forms() -> None:
    block = LineBlock(
        5,
        b"\n".join(
            [
                line({"question": QUESTION, "answer": ANSWER}),
                b"",  # a blank line keeps its number
                line({"question": "1+1", "answer": "2"}),
                b"{broken",
            ]
        ),
    )
    decisions = processor().process_chunk(block, "raw.jsonl", "qa", {}, every=1)
    assert decisions.lines == [5, 7, 8]
    assert decisions.reject_reasons == [None, "too_short", "malformed_json"]
    assert decisions.details[1] == "4 tokens < min_tokens 10"
    assert decisions.passed == [0] and decisions.kinds == ["sft"] and decisions.kept == []
    chat = json.loads(decisions.chat[0])
    assert chat["source"] == "raw.jsonl:5" and chat["id"] == decisions.ids[0]
    assert chat["messages"][0] == {"role": "system", "content": SYSTEM}
    assert json.loads(decisions.guide[0]) == {"instruction": QUESTION, "input": "", "output": ANSWER}
    assert decisions.tokens == [len(QUESTION) + len(ANSWER)]  # each CJK character and symbol is one token
    assert decisions.bands.shape == (1, 5)  # 64 permutations at threshold 0.8: 5 bands
    assert json.loads(decisions.rows[2]) == "{broken"  # the damaged line kept as text for the rejects file


def test_the_guide_only_run_renders_no_trainer_rows_and_pairs_in_the_guide_form() -> None:
    pair = {"instruction": QUESTION, "chosen": ANSWER, "rejected": "不知道，这个问题太难了，我没法回答你。"}
    decisions = processor(guide_only=True).process_chunk([(1, line(pair))], "p.jsonl", "pairs", {}, every=1)
    assert decisions.chat == [b""]
    assert json.loads(decisions.guide[0]) == pair
    stage = processor().process_chunk([(1, line(pair))], "p.jsonl", "pairs", {}, every=1)
    assert stage.guide == [b""]  # the stage writes only SFT rows in the guide's form
    assert json.loads(stage.chat[0])["rejected"] == [{"role": "assistant", "content": pair["rejected"]}]


def test_pii_is_scrubbed_before_the_filters_and_counted_per_chunk() -> None:
    row = {"question": QUESTION + " 我的邮箱 a@b.org", "answer": ANSWER}
    decisions = processor(redact_pii=True).process_chunk([(1, line(row))], "raw.jsonl", "qa", {}, every=1)
    assert decisions.redacted == {"email": 1}
    assert "[EMAIL]" in json.loads(decisions.guide[0])["instruction"]


def test_token_lengths_are_counted_for_one_row_in_every() -> None:
    rows = [(i, line({"question": f"{QUESTION}{i}", "answer": ANSWER})) for i in range(1, 41)]
    decisions = processor().process_chunk(rows, "raw.jsonl", "qa", {}, every=4)
    counted = [k for k, tokens in enumerate(decisions.tokens) if tokens >= 0]
    assert counted == [k for k, key in enumerate(decisions.ids) if int(key[:8], 16) % 4 == 0]
    assert 0 < len(counted) < 40


@pytest.mark.parametrize(
    ("text", "opening"),
    [
        ("what is a derivative?", "what is"),
        ("解释线性代数", "解释线"),
        ("求2的平方", "求"),  # a digit ends the opening
        ("3 个苹果", "3 个苹果"),  # an ASCII first word: two words
        ("", ""),
    ],
)
def test_an_opening_is_two_words_or_three_characters(text: str, opening: str) -> None:
    assert normalised_opening(text) == opening


def test_a_near_dup_threshold_that_leaves_one_band_is_a_params_error() -> None:
    params = prepare_params(near_dup_threshold=0.9, near_dup_num_perm=16)
    with pytest.raises(ParamsError, match=r"params.yaml: prepare: near_dup_threshold 0.9 with 16 .*single"):
        make_row_processor(params, hand_counter())


def test_a_pair_with_the_same_answer_twice_is_no_preference_and_the_others_line_up() -> None:
    def pair(chosen: str, rejected: str) -> bytes:
        return line({"instruction": QUESTION, "chosen": chosen, "rejected": rejected})

    rows = [
        pair(ANSWER, "  " + ANSWER.replace("，", ",") + " "),  # the same once normalised (width, spaces)
        pair(ANSWER, "光合作用就是植物晒太阳，它没有别的意义，也不需要水。"),
        pair("Answer IS １２。", "answer is 12。"),  # the same once normalised (case, width)
    ]
    decisions = processor().process_chunk(LineBlock(1, b"\n".join(rows)), "p.jsonl", "pairs", {}, 1)
    assert decisions.reject_reasons == ["no_preference", None, "no_preference"]
    assert decisions.details[0] == "chosen and rejected are the same answer once normalised"
    assert decisions.passed == [1] and len(decisions.ids) == len(decisions.chat) == 1
    assert json.loads(decisions.chat[0])["rejected"][0]["content"].startswith("光合作用就是植物晒太阳")
