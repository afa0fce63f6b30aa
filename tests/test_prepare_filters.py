"""The decisions of stages/filters.py and the tokenizer counter of stages/judging.py (with token_bounds)."""

from __future__ import annotations

import unicodedata
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stages import filters, prepare
from stages.data import Sample

TEXT = "光合作用是绿色植物利用光能，把二氧化碳和水合成有机物并释放氧气的过程，它为几乎所有生命提供能量。"


def shingle_set(text: str) -> set[str]:
    return {text[i : i + 5] for i in range(len(text) - 4)}


def reference_shingle_hashes(text: str, size: int) -> list[int]:
    """The shingle hash as specified, in Python integers: a polynomial over the code points modulo 2**64,
    murmur3's 64-bit finaliser, the top 32 bits; a short text padded with U+0000 to one shingle."""
    mask = (1 << 64) - 1
    codes = [ord(c) for c in text] + [0] * max(0, size - len(text))
    hashes = []
    for start in range(len(codes) - size + 1):
        value = 0
        for code in codes[start : start + size]:
            value = (value * 1_000_003 + code) & mask
        for multiplier in (0xFF51AFD7ED558CCD, 0xC4CEB9FE1A85EC53):
            value = ((value ^ (value >> 33)) * multiplier) & mask
        hashes.append((value ^ (value >> 33)) >> 32)
    return hashes


def test_signature_is_exactly_datasketch_minhash_of_the_shingles() -> None:
    from datasketch import MinHash

    minhash = MinHash(num_perm=64, seed=1, hashfunc=int)
    minhash.update_batch(filters.shingle_hashes(TEXT, 5).tolist())
    assert np.array_equal(filters.minhash_signature(TEXT, 64), minhash.hashvalues)


@settings(max_examples=150, deadline=None)
@given(
    st.lists(st.text(alphabet=st.sampled_from("光合作用ab ，") | st.characters(), max_size=30), max_size=6),
    st.integers(1, 6),
    st.sampled_from([16, 64, 128]),
)
def test_compiled_shingles_and_signatures_match_python_and_datasketch(
    texts: list[str], size: int, num_perm: int
) -> None:
    """Every text of a batch (empty and shorter-than-a-shingle ones, astral characters) gets the hashes
    the spec gives and the signature datasketch computes from them; `used` keeps the first permutations."""
    from datasketch import MinHash

    signatures = filters.minhash_signatures(texts, num_perm, size)
    first = filters.minhash_signatures(texts, num_perm, size, used=num_perm // 2)
    assert signatures.shape == (len(texts), num_perm)
    for text, signature, half in zip(texts, signatures, first, strict=True):
        hashes = filters.shingle_hashes(text, size).tolist()
        assert hashes == reference_shingle_hashes(text, size)
        minhash = MinHash(num_perm=num_perm, seed=1, hashfunc=int)
        minhash.update_batch(hashes)
        assert np.array_equal(signature, minhash.hashvalues)
        assert np.array_equal(half, signature[: num_perm // 2])


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


@pytest.mark.parametrize("num_perm", [16, 64, 128, 256])
def test_permutations_and_bands_are_datasketchs(num_perm: int) -> None:
    from datasketch import MinHash, MinHashLSH

    a, b = filters.permutations(num_perm)
    assert np.array_equal(np.array([a, b]), MinHash(num_perm=num_perm, seed=1).permutations)
    for threshold in (0.3, 0.5, 0.7, 0.8, 0.85, 0.9, 0.95):
        try:
            lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)
        except ValueError:  # datasketch refuses a single band
            with pytest.raises(ValueError, match="single LSH band"):
                filters.lsh_bands(threshold, num_perm)
        else:
            assert filters.lsh_bands(threshold, num_perm) == (lsh.b, lsh.r), threshold


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


CORPUS = [TEXT, "What is the derivative of x squared?", "解方程 2x + 5 = 17。", "你是教学助手。"] * 20
KINDS = ("sentencepiece", "byte_level_nfc", "metaspace", "nfkc_whitespace")


def build_tokenizer(kind: str, path: Path) -> Path:
    """A small tokenizer saved like models/base, with the ChatML template. sentencepiece: the tiny base's
    layout (Prepend + Replace normaliser, byte fallback); byte_level_nfc: Qwen2's (NFC, byte-level BPE);
    metaspace: spaces replaced by the pre-tokenizer (Llama/Mistral conversions);
    nfkc_whitespace: a normaliser and pre-tokenizer the bounds do not cover (everything counted)."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from stages.chat import CHATML_TEMPLATE, SPECIAL_TOKENS

    special = ["<unk>", *SPECIAL_TOKENS]
    if kind == "sentencepiece":
        tokenizer = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True))
        tokenizer.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
        tokenizer.decoder = decoders.ByteFallback()
        trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=special)
    elif kind == "byte_level_nfc":
        tokenizer = Tokenizer(models.BPE())
        tokenizer.normalizer = normalizers.NFC()
        tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tokenizer.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=600, special_tokens=special, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
        )
    elif kind == "metaspace":  # spaces become "▁" in the pre-tokenizer, not the normaliser
        tokenizer = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True))
        tokenizer.pre_tokenizer = pre_tokenizers.Metaspace()
        tokenizer.decoder = decoders.Metaspace()
        trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=special)
    else:
        tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
        tokenizer.normalizer = normalizers.NFKC()
        tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
        trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=special)
    tokenizer.train_from_iterator(CORPUS, trainer)
    PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, unk_token="<unk>", chat_template=CHATML_TEMPLATE
    ).save_pretrained(str(path))
    return path


@pytest.fixture(scope="module")
def tokenizer_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return {kind: build_tokenizer(kind, tmp_path_factory.mktemp(kind)) for kind in KINDS}


@pytest.fixture(scope="module")
def tokenizer_dir(tokenizer_dirs: dict[str, Path]) -> Path:
    return tokenizer_dirs["sentencepiece"]


def exact_counts(tokenizer_dir: Path, messages: list[dict[str, str]]) -> tuple[int, int]:
    """(tokens of the joined contents, tokens of the templated conversation), by transformers itself."""
    from transformers import PreTrainedTokenizerFast

    tokenizer = PreTrainedTokenizerFast.from_pretrained(str(tokenizer_dir))
    templated = tokenizer.apply_chat_template(messages, tokenize=False)
    plain = "\n".join(m["content"] for m in messages)
    return (
        len(tokenizer(plain, add_special_tokens=False)["input_ids"]),
        len(tokenizer(templated, add_special_tokens=False)["input_ids"]),
    )


def test_tokenizer_counter_counts_what_the_tokenizer_makes(tokenizer_dir: Path) -> None:
    counter = prepare.TokenizerCounter(tokenizer_dir)
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
    assert counter.count_under(text, plain + 1) == plain and counter.count_under(text, plain) is None


def test_unknown_characters_still_respect_the_byte_bound(tokenizer_dir: Path) -> None:
    # Characters outside the vocabulary fall back to one token per UTF-8 byte: the worst case.
    counter = prepare.TokenizerCounter(tokenizer_dir)
    messages = [{"role": "user", "content": "𝔘𝔫𝔦𝔠𝔬𝔡𝔢 ☃ 龘" * 10}, {"role": "assistant", "content": "好"}]
    exact = counter.count_chat(messages)
    for limit in range(exact - 3, exact + 3):
        assert counter.count_chat_over(messages, limit) == (exact if exact > limit else None)


WHOLE = ["<|im_end|>", TEXT[:9], " What is the derivative of x squared?"]  # an added token, (parts of) pieces
TEXTS = st.lists(
    st.sampled_from([*"光合作用是绿色植物 the derivative of x 2+5=17。，？！\n\t　ＡＢ①ﬁ𝔘é▁", "\u0301", *WHOLE]),
    max_size=60,
).map("".join)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.text(alphabet=st.sampled_from("a光é\ud800\U0001d518 ") | st.characters(), max_size=30), max_size=6))
def test_compiled_utf8_lengths_and_unit_weights_match_the_encoded_text(texts: list[str]) -> None:
    """The bounds' inputs, per text: its UTF-8 length, and the weights of its code points or (byte-level)
    of its UTF-8 bytes, a lone surrogate written as surrogatepass writes it."""
    from stages import kernels

    rng = np.random.default_rng(0)
    chars, bytes_ = rng.random(0x110000), rng.random(256)
    encoded = [text.encode("utf-8", "surrogatepass") for text in texts]
    lengths, weights = kernels.utf8_lengths_and_weights(*filters.code_points(texts), chars, False)
    assert lengths.tolist() == [len(e) for e in encoded]
    assert np.allclose(weights, [sum(chars[ord(c)] for c in text) for text in texts])
    lengths, weights = kernels.utf8_lengths_and_weights(*filters.code_points(texts), bytes_, True)
    assert np.allclose(weights, [sum(bytes_[b] for b in e) for e in encoded])
    assert kernels.utf8_lengths_and_weights(*filters.code_points(texts), np.zeros(0), False)[1].tolist() == [0] * len(
        texts
    )


@pytest.mark.parametrize("kind", KINDS)
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(user=TEXTS, answer=TEXTS, slack=st.integers(-3, 3))
def test_bounds_never_change_a_decision(
    tokenizer_dirs: dict[str, Path], kind: str, user: str, answer: str, slack: int
) -> None:
    """Whatever the text, the bounds hold and every limit gives the answer exact counting gives."""
    counter = counters(tokenizer_dirs)[kind]
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


_COUNTERS: dict[str, prepare.TokenizerCounter] = {}


def counters(tokenizer_dirs: dict[str, Path]) -> dict[str, prepare.TokenizerCounter]:
    if not _COUNTERS:
        _COUNTERS.update({kind: prepare.TokenizerCounter(path) for kind, path in tokenizer_dirs.items()})
    return _COUNTERS


def test_bounds_spare_counting_only_for_the_normalisers_they_know(tokenizer_dirs: dict[str, Path]) -> None:
    long_text = TEXT * 40  # the toy vocabulary learnt whole sentences: its longest piece is ~150 bytes
    known = counters(tokenizer_dirs)
    assert known["sentencepiece"].at_least(long_text) >= 10  # min_tokens decided without counting
    assert known["byte_level_nfc"].at_least(long_text) >= 10
    assert known["nfkc_whitespace"].at_least(long_text) == 0  # NFKC / Whitespace: always counted
    assert known["nfkc_whitespace"].bounds.at_most(long_text) is None


def test_template_skeleton_is_refused_when_a_content_is_repeated() -> None:
    from stages.token_bounds import Skeletons

    def chatml(messages: list[dict[str, str]]) -> str:
        return "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)

    def echoing(messages: list[dict[str, str]]) -> str:  # repeats the last user turn
        return chatml(messages) + messages[-1]["content"]

    messages = [{"role": "user", "content": "hi"}]
    assert Skeletons(chatml).text(messages) == "<|im_start|>user\n<|im_end|>\n"
    assert Skeletons(echoing).text(messages) is None


def test_missing_tokenizer_says_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(prepare.PrepareError, match=r"no tokenizer here; run the base stage first"):
        prepare.TokenizerCounter(tmp_path / "models" / "base")


# Characters where NFKC does something: full-width forms, ligatures, compatibility and combining marks,
# Hangul jamo, astral mathematical letters, a lone surrogate; and any character at all.
NFKC_PROBES = "Ｈｅ，：？　ﬁ①㎏½é\u0301\u0327\u1100\u1161\u11a8가𝐀𝟏\ud800\u3099か\u212b\u2126"
NFKC_PROBES += " \t\n\u3000\u00a0\x1c\u2028"  # whitespace that split() knows
NFKC_PROBES += "…℃⑴㏂ǅﷺ¨"  # one character, several after NFKC (with a space or a mark, for the last two)


PROBE_TEXT = st.text(alphabet=st.sampled_from(NFKC_PROBES) | st.characters(), max_size=40)


@settings(max_examples=300, deadline=None)
@given(st.lists(PROBE_TEXT, max_size=8))
def test_batch_normalisation_is_plain_nfkc_casefold_and_spacing(texts: list[str]) -> None:
    expected = [" ".join(unicodedata.normalize("NFKC", text).split()).casefold() for text in texts]
    assert filters.normalise_texts(texts) == expected


def test_every_bmp_character_normalises_as_unicodedata_does() -> None:
    """The tables over every character, alone and between neighbours (full-width, accented, spaces)."""
    texts = []
    for code in [*range(0xD800), *range(0xE000, 0x10000)]:
        char = chr(code)
        texts += [char, f"a{char}Ｂ", f" {char}{char}\u3000é"]
    expected = [" ".join(unicodedata.normalize("NFKC", text).split()).casefold() for text in texts]
    assert filters.normalise_texts(texts) == expected
    # the tables do the characters common in Chinese text that NFKC turns into several
    from stages import kernels

    _, _, unplain = kernels.normalise(*filters.code_points(["好……", "30℃", "½", "㈠"]), *filters._character_tables())
    assert not unplain.any()


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.lists(st.tuples(st.sampled_from(["user", "assistant", "system"]), PROBE_TEXT), max_size=4),
            st.none() | st.tuples(PROBE_TEXT, PROBE_TEXT),
        ),
        max_size=6,
    )
)
def test_contents_are_each_turn_normalised_under_its_role(rows: list[tuple[list[tuple[str, str]], Any]]) -> None:
    """Conversations (system turns left out; a pair's answers as chosen/rejected) normalised in one
    batch: the same contents as normalising each text on its own."""

    def plain(text: str) -> str:
        return " ".join(unicodedata.normalize("NFKC", text).split()).casefold()

    samples, expected, last_user = [], [], []
    for turns, pair in rows:
        samples.append(Sample([{"role": role, "content": text} for role, text in turns], *(pair or (None, None))))
        lines = [(role, plain(text)) for role, text in turns if role != "system"]
        lines += [("chosen", plain(pair[0])), ("rejected", plain(pair[1]))] if pair else []
        expected.append("\n".join(f"{role}:{text}" for role, text in lines))
        last_user.append(next((plain(text) for role, text in reversed(turns) if role == "user"), ""))
    assert filters.contents(samples) == (expected, last_user)
    assert [filters.content_text(sample) for sample in samples] == expected


def test_no_plain_character_can_compose_with_a_neighbour() -> None:
    """What the batch normalisation relies on, over every code point: a plain character and what it
    becomes are never the second half of a canonical composition (NFC quick check Maybe: the primary
    composites' second characters, and Hangul vowel and final jamo), nor combining marks."""
    folded, kinds, _, expansions, _ = filters._character_tables()
    plain = kinds > 0
    maybe = {*range(0x1161, 0x1176), *range(0x11A8, 0x11C3)}
    for code in [*range(0xD800), *range(0xE000, 0x110000)]:
        decomposition = unicodedata.decomposition(chr(code))
        if decomposition and not decomposition.startswith("<"):
            parts = [int(part, 16) for part in decomposition.split()]
            if len(parts) == 2 and unicodedata.normalize("NFC", chr(parts[0]) + chr(parts[1])) == chr(code):
                maybe.add(parts[1])
    assert maybe and not any(plain[code] for code in maybe)
    becomes = {int(folded[code]) for code in np.flatnonzero(kinds == 1).tolist()} | set(expansions.tolist())
    assert not becomes & maybe
    assert not any(unicodedata.combining(chr(code)) for code in becomes)
