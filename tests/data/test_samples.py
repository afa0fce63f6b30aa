"""The internal conversation form (ta/data/samples.py): a sample's own words, the system prompt, and the
conversations a trainer will template."""

from __future__ import annotations

from ta.data.samples import Sample, own_text, templated_variants, with_system

SYSTEM = {"role": "system", "content": "你是老师。"}
USER = {"role": "user", "content": "问"}


def test_own_text_is_prompt_and_answer_without_system() -> None:
    sft = Sample([SYSTEM, USER, {"role": "assistant", "content": "答"}])
    assert own_text(sft) == "问\n答"
    pair = Sample([SYSTEM, USER], chosen="好答", rejected="坏答")
    assert own_text(pair) == "问\n好答"  # the rejected answer is not the sample's length
    assert pair.is_preference and not sft.is_preference


def test_the_rows_own_system_turn_wins_over_the_params_one() -> None:
    assert with_system([USER], "默认") == [{"role": "system", "content": "默认"}, USER]
    assert with_system([SYSTEM, USER], "默认") == [SYSTEM, USER]
    assert with_system([USER], "") == [USER]


def test_a_pair_is_templated_once_per_answer() -> None:
    pair = Sample([USER], chosen="好", rejected="坏")
    variants = templated_variants(pair, "默认")
    assert variants == [
        [{"role": "system", "content": "默认"}, USER, {"role": "assistant", "content": "好"}],
        [{"role": "system", "content": "默认"}, USER, {"role": "assistant", "content": "坏"}],
    ]
    sft = Sample([USER, {"role": "assistant", "content": "答"}])
    assert templated_variants(sft, "") == [sft.messages]
