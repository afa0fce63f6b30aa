"""prepare's row filters (ta/data/filters.py): each one's verdict and detail, and the order they run in.

Token counts come from the hand-countable counter of tests.helpers (one token per CJK character, word or
symbol; 3 more per templated message)."""

from __future__ import annotations

from ta.data import filters
from ta.data.samples import Sample
from ta.data.tokens import TokenCounter
from tests.helpers import hand_counter

SYSTEM = "你是教学助手。"  # 7 tokens


def rules(min_tokens: int = 1, max_tokens: int = 100, patterns: tuple[str, ...] = ("As an AI language model",)):
    return filters.Rules(min_tokens, max_tokens, patterns, SYSTEM, hand_counter())


def sft(question: str, answer: str) -> Sample:
    return Sample([{"role": "user", "content": question}, {"role": "assistant", "content": answer}])


def test_refusal_is_case_insensitive_and_spares_preference_pairs() -> None:
    sample = sft("q", "as an ai LANGUAGE model, no.")
    assert filters.refusal(sample, rules()) == "assistant turn contains 'as an ai LANGUAGE model'"
    pair = Sample([{"role": "user", "content": "q"}], chosen="As an AI language model I won't.", rejected="ok")
    assert filters.refusal(pair, rules()) is None
    assert filters.refusal(sft("As an AI language model?", "fine"), rules()) is None  # the user may say it
    assert filters.refusal(sample, rules(patterns=())) is None


def test_refusal_detail_quotes_the_lowered_text_when_lowering_moves_positions() -> None:
    # "İ" lower-cases to two characters, so positions in the lowered text are not the answer's
    sample = sft("q", "İİ 作为一个AI语言模型，我不能回答。")
    assert (
        filters.refusal(sample, rules(patterns=("作为一个AI语言模型",)))
        == "assistant turn contains '作为一个ai语言模型'"
    )


def test_empty_turn_names_the_turn_or_the_answer() -> None:
    assert filters.empty_turn(sft("  \n", "答"), rules()) == "turn 1 (user) is empty"
    assert filters.empty_turn(sft("问", ""), rules()) == "turn 2 (assistant) is empty"
    pair = Sample([{"role": "user", "content": "问"}], chosen="好", rejected=" ")
    assert filters.empty_turn(pair, rules()) == "rejected answer is empty"
    assert filters.empty_turn(sft("问", "答"), rules()) is None


def test_too_short_counts_prompt_and_answer_without_system_or_template() -> None:
    sample = Sample([{"role": "system", "content": SYSTEM}, *sft("一二三", "四五").messages])  # 5 own tokens
    assert filters.too_short(sample, rules(min_tokens=5)) is None
    assert filters.too_short(sample, rules(min_tokens=6)) == "5 tokens < min_tokens 6"
    pair = Sample([{"role": "user", "content": "一二"}], chosen="三四五", rejected="六")  # prompt + chosen: 5
    assert filters.too_short(pair, rules(min_tokens=6)) == "5 tokens < min_tokens 6"


def test_too_long_counts_the_templated_conversation_with_the_system_prompt() -> None:
    # (7 + 3) system + (3 + 3) user + (2 + 3) assistant = 21 templated tokens
    sample = sft("一二三", "四五")
    assert filters.too_long(sample, rules(max_tokens=21)) is None
    assert filters.too_long(sample, rules(max_tokens=20)) == "21 templated tokens > max_tokens 20"
    # a pair is as long as its longer answer: (7+3) + (2+3) + (4+3) = 22 with the rejected one
    pair = Sample([{"role": "user", "content": "一二"}], chosen="三", rejected="四五六七")
    assert filters.too_long(pair, rules(max_tokens=21)) == "22 templated tokens > max_tokens 21"


def test_the_first_failing_filter_names_the_reason() -> None:
    short_refusal = sft("q", "As an AI language model")
    assert filters.first_failing(short_refusal, rules(min_tokens=50)) == (
        "refusal",
        "assistant turn contains 'As an AI language model'",
    )
    assert filters.first_failing(sft("", "As an AI language model"), rules())[0] == "empty_turn"
    assert filters.first_failing(sft("一", "二"), rules(min_tokens=3)) == ("too_short", "2 tokens < min_tokens 3")
    assert [reason for reason, _ in filters.ROW_FILTERS] == [
        "empty_turn",
        "special_tokens",
        "refusal",
        "too_short",
        "too_long",
    ]
    assert filters.first_failing(sft("问题", "答案"), rules()) is None


def test_special_tokens_are_found_in_any_turn_or_answer() -> None:
    assert filters.special_tokens(sft("问<|im_start|>system", "答"), rules()) == (
        "turn 1 (user) contains the special token '<|im_start|>'"
    )
    pair = Sample([{"role": "user", "content": "q"}], chosen="好", rejected="坏<|endoftext|>")
    assert filters.special_tokens(pair, rules()) == "rejected contains the special token '<|endoftext|>'"
    assert filters.special_tokens(sft("<|im_start", "im_end|>"), rules()) is None  # only whole tokens
    # the counter says which tokens are special: one without any finds nothing
    plain = filters.Rules(1, 100, (), SYSTEM, TokenCounter(len, lambda messages: 0))
    assert filters.special_tokens(sft("问<|im_start|>", "答"), plain) is None
    custom = filters.Rules(1, 100, (), SYSTEM, TokenCounter(len, lambda messages: 0, ["[INST]"]))
    assert filters.special_tokens(sft("[INST] 问", "答"), custom) == "turn 1 (user) contains the special token '[INST]'"


class BoundedCounter(TokenCounter):
    """Counts with len(), records what it counted, and knows every text has at least `at_least` tokens."""

    def __init__(self, at_least: int) -> None:
        super().__init__(self.record, lambda messages: 0)
        self.low, self.counted = at_least, []

    def record(self, text: str) -> int:
        self.counted.append(text)
        return len(text)

    def at_least(self, text: str) -> int:
        return self.low


def test_a_filter_decided_by_bounds_does_not_count() -> None:
    counter = BoundedCounter(at_least=100)
    sample = sft("一", "二")
    assert filters.too_short(sample, filters.Rules(10, 1000, (), "", counter)) is None
    assert counter.counted == []  # the bound (>= 100 tokens) settled min_tokens 10 without counting
    assert filters.too_short(sample, filters.Rules(101, 1000, (), "", counter)) == "3 tokens < min_tokens 101"
    assert counter.counted == ["一\n二"]
