"""The decisions of stages/filters.py and the tokenizer counter of stages/prepare.py."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from stages import filters, prepare
from stages.data import Sample

TEXT = "光合作用是绿色植物利用光能，把二氧化碳和水合成有机物并释放氧气的过程，它为几乎所有生命提供能量。"


def shingle_set(text: str) -> set[str]:
    return {text[i : i + 5] for i in range(len(text) - 4)}


def test_signature_is_exactly_datasketch_minhash_of_the_shingles() -> None:
    minhash = filters.minhash_template(64).copy()
    minhash.update_batch(filters.shingle_hashes(TEXT, 5).tolist())
    assert np.array_equal(filters.minhash_signature(TEXT, 64), minhash.hashvalues)


def test_shingle_hashes_do_not_collide_on_a_sentence() -> None:
    assert len(set(filters.shingle_hashes(TEXT, 5).tolist())) == len(shingle_set(TEXT))


@pytest.mark.parametrize("changes", [0, 3, 8])
def test_signature_estimates_the_jaccard_similarity(changes: int) -> None:
    other = list(TEXT)
    for i in range(changes):
        other[5 + 6 * i] = "字"
    other_text = "".join(other)
    true = len(shingle_set(TEXT) & shingle_set(other_text)) / len(shingle_set(TEXT) | shingle_set(other_text))
    estimate = np.mean(filters.minhash_signature(TEXT, 256) == filters.minhash_signature(other_text, 256))
    assert abs(estimate - true) < 0.12


def test_near_identical_texts_share_a_band_and_unrelated_ones_do_not() -> None:
    bands, rows = filters.lsh_bands(0.8, 64)
    assert (bands, rows) == (5, 11)  # datasketch's choice for threshold 0.8 and 64 permutations
    base = set(filters.band_hashes(TEXT, 64, bands, rows))
    assert base & set(filters.band_hashes(TEXT[:-1] + "！", 64, bands, rows))
    assert not base & set(filters.band_hashes("The derivative of x squared is 2x, by the power rule.", 64, bands, rows))


def test_normalised_text_ignores_width_case_and_spacing() -> None:
    assert filters.normalise_text("  Ｈｅｌｌｏ，\t WORLD？ ") == "hello, world?"


def test_pii_scrub_counts_and_redacts() -> None:
    counts: dict[str, int] = {}
    text = "邮箱 a.b@example.org，手机 +86 138-1234-5678，身份证 11010519900307123X，订单号 20240101123456。"
    assert filters.scrub_pii(text, counts) == "邮箱 [EMAIL]，手机 [PHONE]，身份证 [ID_CARD]，订单号 20240101123456。"
    assert counts == {"email": 1, "phone": 1, "id_card": 1}


def test_refusal_is_case_insensitive_and_spares_preference_pairs() -> None:
    rules = filters.Rules(1, 100, ("As an AI language model",), "", filters.TokenCounter(len, len))
    sft = Sample([{"role": "user", "content": "q"}, {"role": "assistant", "content": "as an ai LANGUAGE model, no."}])
    assert filters.refusal(sft, rules) == "assistant turn contains 'as an ai LANGUAGE model'"
    pair = Sample([{"role": "user", "content": "q"}], chosen="As an AI language model I won't.", rejected="ok")
    assert filters.refusal(pair, rules) is None


def test_eval_split_takes_about_the_fraction_and_never_moves() -> None:
    ids = [f"{i:016x}" for i in range(5000)]
    eval_ids = [i for i in ids if filters.is_eval(42, i, 0.1)]
    assert 400 < len(eval_ids) < 600
    assert eval_ids == [i for i in ids if filters.is_eval(42, i, 0.1)]
    assert eval_ids != [i for i in ids if filters.is_eval(43, i, 0.1)]


# ------------------------------------------------------------------------------------ tokenizer counter


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small SentencePiece-like BPE tokenizer with the ChatML template, saved like models/base."""
    from tokenizers import Tokenizer, decoders, models, normalizers, trainers
    from transformers import PreTrainedTokenizerFast

    from stages.chat import CHATML_TEMPLATE, SPECIAL_TOKENS

    tokenizer = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True))
    tokenizer.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tokenizer.decoder = decoders.ByteFallback()
    corpus = [TEXT, "What is the derivative of x squared?", "解方程 2x + 5 = 17。", "你是教学助手。"] * 20
    tokenizer.train_from_iterator(
        corpus, trainers.BpeTrainer(vocab_size=400, special_tokens=["<unk>", *SPECIAL_TOKENS])
    )
    path = tmp_path_factory.mktemp("tok")
    PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, unk_token="<unk>", chat_template=CHATML_TEMPLATE
    ).save_pretrained(str(path))
    return path


def test_tokenizer_counter_counts_what_the_tokenizer_makes(tokenizer_dir: Path) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    counter = prepare.TokenizerCounter(tokenizer_dir)
    messages = [
        {"role": "system", "content": "你是教学助手。"},
        {"role": "user", "content": "解方程 2x + 5 = 17。"},
        {"role": "assistant", "content": TEXT},
    ]
    templated = tokenizer.apply_chat_template(messages, tokenize=False)
    exact = len(tokenizer(templated, add_special_tokens=False)["input_ids"])
    assert counter.count(TEXT) == len(tokenizer(TEXT, add_special_tokens=False)["input_ids"])
    assert counter.count_chat(messages) == exact
    assert counter.count_chat_over(messages, exact - 1) == exact
    assert counter.count_chat_over(messages, exact) is None
    counter.prefill([TEXT], [messages])  # batch results are the same numbers
    assert counter.count(TEXT) == len(tokenizer(TEXT, add_special_tokens=False)["input_ids"])
    assert counter.count_chat_over(messages, exact - 1) == exact


def test_unknown_characters_still_respect_the_byte_bound(tokenizer_dir: Path) -> None:
    # Characters outside the vocabulary fall back to one token per UTF-8 byte: the worst case.
    counter = prepare.TokenizerCounter(tokenizer_dir)
    messages = [{"role": "user", "content": "𝔘𝔫𝔦𝔠𝔬𝔡𝔢 ☃ 龘" * 10}, {"role": "assistant", "content": "好"}]
    exact = counter.count_chat(messages)
    for limit in range(exact - 3, exact + 3):
        assert counter.count_chat_over(messages, limit) == (exact if exact > limit else None)


def test_missing_tokenizer_says_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(prepare.PrepareError, match=r"no tokenizer here; run the base stage first"):
        prepare.TokenizerCounter(tmp_path / "models" / "base")
