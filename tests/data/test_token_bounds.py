"""Token bounds without tokenizing (ta/data/token_bounds.py): never a decision exact counting would not
take, on four kinds of tokenizer, and no bound where the normaliser is not understood."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ta.data.token_bounds import Skeletons
from tests.helpers import TOKENIZER_KINDS, exact_counts

TEXT = "光合作用是绿色植物利用光能，把二氧化碳和水合成有机物并释放氧气的过程，它为几乎所有生命提供能量。"
WHOLE = ["<|im_end|>", TEXT[:9], " What is the derivative of x squared?"]  # an added token, (parts of) pieces
TEXTS = st.lists(
    st.sampled_from([*"光合作用是绿色植物 the derivative of x 2+5=17。，？！\n\t　ＡＢ①ﬁ𝔘é▁", "\u0301", *WHOLE]),
    max_size=60,
).map("".join)


@pytest.mark.parametrize("kind", TOKENIZER_KINDS)
@settings(max_examples=60, deadline=None)
@given(user=TEXTS, answer=TEXTS, slack=st.integers(-3, 3))
def test_bounds_never_change_a_decision(
    tokenizer_dirs: dict[str, Path], token_counters: dict, kind: str, user: str, answer: str, slack: int
) -> None:
    """Whatever the text, the bounds hold and every limit gives the answer exact counting gives."""
    counter = token_counters[kind]
    messages = [{"role": "system", "content": "你是教学助手。"}, {"role": "user", "content": user}]
    messages.append({"role": "assistant", "content": answer})
    text = "\n".join(m["content"] for m in messages)
    plain, templated = exact_counts(tokenizer_dirs[kind], messages)
    assert counter.at_least(text) <= plain
    for most in (counter.bounds.at_most(text), counter.bounds.at_most_for(len(text))):
        assert most is None or plain <= most
    for limit in (plain + slack, 10, 2048):
        assert counter.count_under(text, limit) == (plain if plain < limit else None)
    for limit in (templated + slack, 2048):
        assert counter.count_chat_over(messages, limit) == (templated if templated > limit else None)


def test_bounds_spare_counting_only_for_the_normalisers_they_know(token_counters: dict) -> None:
    long_text = TEXT * 40  # the toy vocabulary learnt whole sentences: its longest piece is ~150 bytes
    assert token_counters["sentencepiece"].at_least(long_text) >= 10  # min_tokens decided without counting
    assert token_counters["byte_level_nfc"].at_least(long_text) >= 10
    assert token_counters["nfkc_whitespace"].at_least(long_text) == 0  # NFKC / Whitespace: always counted
    assert token_counters["nfkc_whitespace"].bounds.at_most(long_text) is None


def test_template_skeleton_is_refused_when_a_content_is_repeated() -> None:
    def chatml(messages: list[dict[str, str]]) -> str:
        return "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)

    def echoing(messages: list[dict[str, str]]) -> str:  # repeats the last user turn
        return chatml(messages) + messages[-1]["content"]

    def rewriting(messages: list[dict[str, str]]) -> str:  # changes what it places
        return "".join(f"[{m['role']}] {m['content'].strip().upper()}\n" for m in messages)

    messages = [{"role": "user", "content": "hi"}]
    assert Skeletons(chatml).text(messages) == "<|im_start|>user\n<|im_end|>\n"
    assert Skeletons(echoing).text(messages) is None
    assert Skeletons(rewriting).text(messages) is None
