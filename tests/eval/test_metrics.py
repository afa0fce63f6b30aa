"""Metric functions (ta/eval/metrics.py) against values worked out by hand (the comment beside each case shows
the working)."""

import math

import pytest

from ta.eval import metrics


def test_perplexity_of_a_uniform_distribution_is_its_size():
    # every token has p = 1/4 -> mean NLL = ln 4 -> perplexity 4
    assert metrics.perplexity([math.log(0.25)] * 3) == pytest.approx(4.0)


def test_perplexity_pools_tokens_geometrically():
    # p = 1/2 and 1/4 -> mean NLL = (ln 2 + ln 4) / 2 = 1.5 ln 2 -> 2 ** 1.5 (not the mean of 2 and 4)
    assert metrics.perplexity([math.log(0.5), math.log(0.25)]) == pytest.approx(2**1.5)


def test_perplexity_of_no_tokens_is_an_error():
    with pytest.raises(ValueError):
        metrics.perplexity([])


def test_lcs_length_by_hand():
    assert metrics.lcs_length("abcd", "acbd") == 3  # "abd" / "acd"
    assert metrics.lcs_length("abc", "xyz") == 0
    assert metrics.lcs_length("AGGTAB", "GXTXAYB") == 4  # "GTAB", the textbook case


def test_rouge_l_f1_of_chinese_characters():
    # LCS("猫坐在垫子上", "猫在垫子上") = 5 -> P = 5/6, R = 5/5 -> F1 = 2PR/(P+R) = 10/11
    assert metrics.rouge_l_f1("猫坐在垫子上", "猫在垫子上") == pytest.approx(10 / 11)


def test_rouge_l_f1_is_symmetric_in_precision_and_recall_roles():
    # LCS("abcd", "acbd") = 3 -> P = R = 3/4 -> F1 = 3/4
    assert metrics.rouge_l_f1("abcd", "acbd") == pytest.approx(0.75)
    # pred "ab", ref "abcdef": P = 1, R = 1/3 -> F1 = (2/3)/(4/3) = 1/2
    assert metrics.rouge_l_f1("ab", "abcdef") == pytest.approx(0.5)


def test_rouge_l_f1_ignores_case_whitespace_and_width():
    assert metrics.rouge_l_f1("The  Cat\n", "the cat") == 1.0
    assert metrics.rouge_l_f1("ＡＢ", "ab") == 1.0  # full-width letters are NFKC-normalised


def test_rouge_l_f1_of_disjoint_or_empty_texts_is_zero():
    assert metrics.rouge_l_f1("abc", "xyz") == 0.0
    assert metrics.rouge_l_f1("", "参考答案") == 0.0


def test_final_answer_takes_the_last_answer_line():
    text = "第一步：3 + 4 = 7。\n答案：6\n检查一遍。\n答案： 7 。\n"
    assert metrics.final_answer(text) == "7"
    assert metrics.final_answer("answer: 7") is None
    assert metrics.final_answer("答案:12 cm") == "12cm"  # ASCII colon, spaces dropped


def test_exact_match_compares_final_answers_only():
    reference = "12 ÷ 3 = 4\n答案：4"
    assert metrics.exact_match("先算除法，得 4。\n答案：4。", reference) == 1.0
    assert metrics.exact_match("12 ÷ 3 = 4\n答案：5", reference) == 0.0
    assert metrics.exact_match("12 ÷ 3 = 4", reference) == 0.0  # no final answer line


def test_exact_match_needs_a_reference_answer():
    with pytest.raises(ValueError):
        metrics.exact_match("答案：1", "没有答案行")


def test_drill_references_end_with_their_answer_line():
    assert metrics.is_drill_reference("3 + 4 = 7。\n答案：7\n")
    assert not metrics.is_drill_reference("区别在于答案：\n1. 设问：自问自答。")  # "答案：" inside prose
    assert not metrics.is_drill_reference("答案：7\n再想一想为什么。")  # not the last line
    assert not metrics.is_drill_reference("答案：")  # nothing after the mark


def test_task_score_picks_exact_match_for_drill_and_rouge_otherwise():
    assert metrics.task_score("答案：9", "3 × 3\n答案：9") == metrics.TaskScore("exact_match", 1.0)
    assert metrics.task_score("abcd", "acbd") == metrics.TaskScore("rouge_l", pytest.approx(0.75))
    # prose that mentions 答案 mid-text is scored by ROUGE-L: LCS("答案", "答案：是人民。\n还有别的吗") = 2,
    # the reference has 12 characters once the newline is dropped: P = 2/2, R = 2/12 -> F1 = (1/3)/(7/6) = 2/7
    assert metrics.task_score("答案", "答案：是人民。\n还有别的吗") == metrics.TaskScore(
        "rouge_l", pytest.approx(2 / 7)
    )


def test_task_summary_means():
    scores = [
        metrics.TaskScore("exact_match", 1.0),
        metrics.TaskScore("exact_match", 0.0),
        metrics.TaskScore("rouge_l", 0.5),
        metrics.TaskScore("rouge_l", 0.3),
    ]
    # task = (1 + 0 + 0.5 + 0.3) / 4 = 0.45; rouge_l = 0.4; exact_match = 0.5
    assert metrics.task_summary(scores) == {
        "task": pytest.approx(0.45),
        "rouge_l": pytest.approx(0.4),
        "exact_match": pytest.approx(0.5),
    }
    assert metrics.task_summary([metrics.TaskScore("rouge_l", 0.2)])["exact_match"] is None


def test_length_normalised_margin_prefers_the_better_mean_not_the_larger_sum():
    # chosen: 4 tokens at -1 (sum -4, mean -1); rejected: 1 token at -2 (sum -2, mean -2).
    # The raw sum prefers rejected (-2 > -4); per token chosen wins by 1.
    margin = metrics.length_normalized_margin([-1.0] * 4, [-2.0])
    assert margin == pytest.approx(1.0)


def test_preference_accuracy_counts_strictly_positive_margins():
    assert metrics.preference_accuracy([1.0, -0.5, 0.0, 2.0]) == 0.5  # the tie is not a preference


def test_implicit_reward_margin_by_hand():
    # beta * ((-10 - -12) - (-9 - -8)) = 0.1 * (2 - (-1)) = 0.3
    assert metrics.implicit_reward_margin(-10.0, -12.0, -9.0, -8.0, beta=0.1) == pytest.approx(0.3)
    # policy that moved both responses equally has no margin
    assert metrics.implicit_reward_margin(-5.0, -6.0, -7.0, -8.0, beta=0.1) == pytest.approx(0.0)


def test_refusal_rate_matches_patterns_loosely():
    patterns = ["作为 AI 语言模型", "As an AI language model"]
    answers = [
        "作为AI语言模型，我无法回答。",  # no space, still a refusal
        "as an ai  language model, I can't",  # case and double space
        "分数表示整体的一部分。",
        "AI 语言模型可以帮助学习。",  # mentions the words, not the pattern
    ]
    assert metrics.refusal_rate(answers, patterns) == 0.5


def test_refusal_rate_ignores_empty_patterns():
    assert metrics.refusal_rate(["任何回答"], [""]) == 0.0


def test_perplexity_past_float_range_is_infinite() -> None:
    assert metrics.perplexity([-1000.0, -1000.0]) == math.inf


def test_finite_or_null_replaces_nan_and_infinity_at_any_depth() -> None:
    report = {"a": {"x": float("nan"), "y": 1.5}, "b": [float("-inf"), 2], "c": None, "d": "NaN"}
    assert metrics.finite_or_null(report) == {"a": {"x": None, "y": 1.5}, "b": [None, 2], "c": None, "d": "NaN"}


def test_next_token_logprobs_of_known_distributions():
    # equal logits over 4 tokens -> p = 1/4; logits (0, ln 3) -> softmax (1/4, 3/4)
    got = metrics.next_token_logprobs([[0.0, 0.0, 0.0, 0.0], [0.0, math.log(3.0), -1e9, -1e9]], [2, 1])
    assert got == pytest.approx([math.log(0.25), math.log(0.75)])


def test_next_token_logprobs_is_shift_invariant_and_feeds_perplexity():
    # adding 1000 to every logit must not overflow or change the distribution; p = 1/2 -> perplexity 2
    got = metrics.next_token_logprobs([[1000.0, 1000.0]], [0])
    assert metrics.perplexity(got) == pytest.approx(2.0)
