"""Token counts for prepare's length filters (ta/data/tokens.py): the tokenizer's own numbers, batch or one
at a time, and the limits decided as exact counting decides them."""

from __future__ import annotations

from pathlib import Path

import pytest

from ta.data.tokens import TokenCounter, TokenizerCounter
from ta.errors import PrepareError
from tests.helpers import exact_counts

TEXT = "光合作用是绿色植物利用光能，把二氧化碳和水合成有机物并释放氧气的过程，它为几乎所有生命提供能量。"


def test_tokenizer_counter_counts_what_the_tokenizer_makes(tokenizer_dirs: dict[str, Path]) -> None:
    tokenizer_dir = tokenizer_dirs["sentencepiece"]
    counter = TokenizerCounter(tokenizer_dir)
    messages = [
        {"role": "system", "content": "你是教学助手。"},
        {"role": "user", "content": "解方程 2x + 5 = 17。"},
        {"role": "assistant", "content": TEXT},
    ]
    plain, exact = exact_counts(tokenizer_dir, messages)
    text = "\n".join(m["content"] for m in messages)
    assert counter.count(text) == plain
    assert counter.count_chat(messages) == exact
    assert counter.count_chat_over(messages, exact - 1) == exact
    assert counter.count_chat_over(messages, exact) is None
    counter.prefill([text])  # batch results are the same numbers
    assert counter.count(text) == plain
    hello = exact_counts(tokenizer_dir, [{"role": "user", "content": "你好"}])[0]
    assert counter.count_many([text, "你好", text]) == [plain, hello, plain]
    assert counter.count_under(text, plain + 1) == plain and counter.count_under(text, plain) is None


def test_unknown_characters_still_respect_the_byte_bound(tokenizer_dirs: dict[str, Path]) -> None:
    # Characters outside the vocabulary fall back to one token per UTF-8 byte: the worst case.
    counter = TokenizerCounter(tokenizer_dirs["sentencepiece"])
    messages = [{"role": "user", "content": "𝔘𝔫𝔦𝔠𝔬𝔡𝔢 ☃ 龘" * 10}, {"role": "assistant", "content": "好"}]
    exact = counter.count_chat(messages)
    for limit in range(exact - 3, exact + 3):
        assert counter.count_chat_over(messages, limit) == (exact if exact > limit else None)


def test_missing_tokenizer_says_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(PrepareError, match=r"models/base: no tokenizer here; run the base stage first"):
        TokenizerCounter(tmp_path / "models" / "base")


def test_a_tokenizer_without_a_chat_template_is_refused(tokenizer_dirs: dict[str, Path], tmp_path: Path) -> None:
    import json
    import shutil

    shutil.copytree(tokenizer_dirs["sentencepiece"], tmp_path / "tok")
    (tmp_path / "tok" / "chat_template.jinja").unlink(missing_ok=True)
    config = json.loads((tmp_path / "tok" / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (tmp_path / "tok" / "tokenizer_config.json").write_text(json.dumps(config))
    with pytest.raises(PrepareError, match="the tokenizer has no chat_template"):
        TokenizerCounter(tmp_path / "tok")


def test_plain_counter_counts_with_the_functions_it_wraps() -> None:
    counter = TokenCounter(len, lambda messages: sum(len(m["content"]) + 3 for m in messages))
    assert counter.at_least("anything") == 0  # no bound: everything is counted
    assert counter.count_under("abcd", 5) == 4 and counter.count_under("abcde", 5) is None
    assert counter.count_chat_over([{"content": "ab"}], 4) == 5
    assert counter.count_chat_over([{"content": "a"}], 4) is None
    assert counter.count_many(["a", "abc"]) == [1, 3]


def test_special_tokens_come_from_the_tokenizer(tokenizer_dirs: dict[str, Path]) -> None:
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    from ta.data.tokens import special_tokens_of

    counter = TokenizerCounter(tokenizer_dirs["byte_level_nfc"])
    assert {"<|im_start|>", "<|im_end|>", "<|endoftext|>"} <= set(counter.special_tokens)
    # another family's control tokens, none of ChatML's
    backend = Tokenizer(models.BPE(vocab={"a": 0, "<s>": 1, "</s>": 2, "[INST]": 3}, merges=[]))
    llama_like = PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token="<s>", eos_token="</s>", additional_special_tokens=["[INST]"]
    )
    assert set(special_tokens_of(llama_like)) == {"<s>", "</s>", "[INST]"}
