"""ROUGE-L on characters for Chinese: the bit-parallel LCS against the textbook dynamic programme, the
tokens, and the pool's nearest instruction against a brute-force search."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from ta.selfinstruct.rouge import InstructionPool, lcs_length, match_masks, rouge_l, tokens


def lcs_reference(a: list[str], b: list[str]) -> int:
    table = [[0] * (len(b) + 1) for _ in range(len(a) + 1)]
    for i, x in enumerate(a):
        for j, y in enumerate(b):
            table[i + 1][j + 1] = table[i][j] + 1 if x == y else max(table[i][j + 1], table[i + 1][j])
    return table[-1][-1]


WORDS = st.lists(st.sampled_from(list("光合作用是什么abc")), max_size=70)


@settings(max_examples=300, deadline=None)
@given(WORDS, WORDS)
def test_bit_parallel_lcs_equals_the_dynamic_programme(a: list[str], b: list[str]) -> None:
    assert lcs_length(match_masks(a), len(a), b) == lcs_reference(a, b)


def test_rouge_l_is_the_f1_of_the_lcs() -> None:
    # LCS("什么是光合作用", "光合作用是什么") = 光合作用 (4): F1 = 2 * 4 / (7 + 7)
    assert rouge_l(tokens("什么是光合作用？"), tokens("光合作用是什么")) == 8 / 14
    assert rouge_l(tokens("什么是光合作用"), tokens("什么是光合作用")) == 1.0
    assert rouge_l([], tokens("光合作用")) == 0.0


def test_tokens_are_characters_for_chinese_and_words_for_ascii() -> None:
    assert tokens("用 Python 3 解释，ＡＢ！") == ["用", "python", "3", "解", "释", "ab"]
    # rouge_score's default tokenizer would see nothing here; we see every character
    assert len(tokens("解释一下勾股定理。")) == 8


def test_the_pool_finds_the_nearest_instruction_like_a_brute_force_search() -> None:
    texts = ["什么是光合作用？", "解释勾股定理", "What is photosynthesis?", "光合作用需要哪些条件？", ""]
    pool = InstructionPool()
    for i, text in enumerate(texts):
        pool.add(text, f"seed:{i + 1}")
    for query in ["光合作用是什么", "勾股定理怎么证明？", "what is PHOTOSYNTHESIS", "完全无关的句子"]:
        scores = [rouge_l(tokens(query), tokens(text)) for text in texts]
        best = max(range(len(texts)), key=lambda i: (scores[i], -i))
        nearest = pool.nearest(query)
        assert nearest is not None
        assert nearest.score == round(scores[best], 4) and nearest.source == f"seed:{best + 1}"
    assert InstructionPool().nearest("任何") is None
