"""The eval stage's arithmetic (ta/eval/evaluate.py) on a character tokenizer and a fake runtime with a known
distribution: every number the stage reports can be worked out by hand (see the comments). The runtimes
themselves are tests/eval/test_runtimes.py; the stage on real artifacts is tests/e2e/test_eval_pipeline.py.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest

from ta.config import load_params
from ta.errors import GateFailed
from ta.eval import evaluate, gates, metrics, outputs
from tests.helpers import REPO, char_tokenizer, write_params

ALPHABET = "systemuserassistant\nqab12+34=7答案：作为AI语言模型"
SHIPPED_EVAL = load_params(REPO / "params.yaml").eval


def eval_params(**changes):
    return dataclasses.replace(SHIPPED_EVAL, **changes)


@pytest.fixture(scope="module")
def tokenizer():
    """One token per character (BPE with no merges), ChatML specials, the Qwen2 template's layout."""
    return char_tokenizer([ALPHABET])


class FakeRuntime:
    """p('1') = 1/2, p('2') = 1/4, p(<|im_end|>) = 1/2, anything else 1/10; always answers `answer`."""

    def __init__(self, tokenizer, answer):
        vocab = tokenizer.get_vocab()
        self.logprob = {vocab["1"]: math.log(0.5), vocab["2"]: math.log(0.25), vocab["<|im_end|>"]: math.log(0.5)}
        self.answer_ids = tokenizer(answer, add_special_tokens=False)["input_ids"]
        self.generate_calls = []

    def token_logprobs(self, sequences):
        return [[self.logprob.get(token, math.log(0.1)) for token in ids[1:]] for ids in sequences]

    def greedy(self, prompts, max_new_tokens, stop_ids):
        self.generate_calls.append((len(prompts), max_new_tokens))
        return [self.answer_ids for _ in prompts]


def write_held_out(root):
    def conversation(question, answer):
        return {
            "messages": [
                {"role": "system", "content": "s"},
                {"role": "user", "content": question},
                {"role": "assistant", "content": answer},
            ]
        }

    def pair(chosen, rejected):
        return {
            "prompt": [{"role": "user", "content": "q"}],
            "chosen": [{"role": "assistant", "content": chosen}],
            "rejected": [{"role": "assistant", "content": rejected}],
        }

    prepared = root / "data" / "prepared"
    prepared.mkdir(parents=True)
    sft = [conversation("q", "12"), conversation("3+4", "3+4=7\n答案：7"), conversation("qq", "ab")]
    prefs = [pair("11", "22"), pair("2", "1")]
    (prepared / "sft_eval.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in sft))
    (prepared / "pref_eval.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in prefs))


def test_evaluate_reports_hand_computed_metrics(tokenizer, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_held_out(tmp_path)
    params = eval_params(max_samples=2, max_generations=2, max_new_tokens=5, sample_prompts=["q"])
    held = evaluate.load_held_out(tokenizer, params, system_prompt="s")
    runtime = FakeRuntime(tokenizer, "答案：7")
    result = evaluate.evaluate(runtime, held, tokenizer, params, {0}, refusal_patterns=["答案"])

    # first two SFT rows (max_samples=2), 14 scored tokens: "12<|im_end|>" costs (1 + 2 + 1) ln 2;
    # "3+4=7\n答案：7<|im_end|>" costs 10 ln 10 + ln 2 -> perplexity = (2^5 * 10^10) ** (1/14)
    assert result.perplexity == pytest.approx((2**5 * 10**10) ** (1 / 14))
    # the same per conversation, as the bootstrap resamples it: NLL sums and token counts
    assert result.nll_sums == pytest.approx([4 * math.log(2), 10 * math.log(10) + math.log(2)])
    assert result.token_counts == [3, 11]
    # pair 1: chosen "11" mean ln(1/2) beats rejected "22" mean (2+2+1)/3 ln(1/2); pair 2 loses -> 1/2
    assert result.preference_accuracy == 0.5
    # per pair: chosen "11" -ln 2 per token against rejected "22" -5/3 ln 2 -> +2/3 ln 2; pair 2: "2" costs
    # (2 + 1)/2 ln 2 per token, "1" costs ln 2 -> -1/2 ln 2
    assert result.preference_margins == pytest.approx([2 / 3 * math.log(2), -0.5 * math.log(2)])
    # task rows alternate drill then open: "答案：7" is an exact match (1) and shares nothing with "12"
    # (ROUGE-L 0) -> task 1/2
    assert result.task == {"task": 0.5, "rouge_l": 0.0, "exact_match": 1.0}
    assert result.refusal_rate == 1.0  # all three answers (two task, one sample prompt) contain the pattern
    assert result.sample_answers == ["答案：7"]
    assert runtime.generate_calls == [(3, 5)]  # two task questions and one sample prompt, in one pass

    interval_report = outputs.build_intervals({"fake": result}, params)
    outputs.write_outputs({"perplexity": {"fake": 2.0}}, interval_report, [], {"fake": result}, held, params)
    written = json.loads((tmp_path / "metrics/eval_intervals.json").read_text(encoding="utf-8"))
    # one artifact: its own intervals, nothing to compare; the perplexity over both conversations as above
    assert written["artifacts"]["perplexity"]["fake"]["value"] == round(result.perplexity, 4)
    assert written["artifacts"]["preference_accuracy"]["fake"]["items"] == 2
    assert written["comparisons"] == {} and written["gates"] == {}
    samples = json.loads((tmp_path / "metrics/samples.json").read_text(encoding="utf-8"))
    assert samples["samples"] == [{"prompt": "q", "answers": {"fake": "答案：7"}}]
    assert [q["answers"]["fake"] for q in samples["task"]] == [
        {"text": "答案：7", "exact_match": 1.0},
        {"text": "答案：7", "rouge_l": 0.0},
    ]
    assert json.loads((tmp_path / "metrics/eval_plots/perplexity.json").read_text()) == [
        {"artifact": "fake", "perplexity": round(result.perplexity, 4)}
    ]
    assert "**fake**\n\n> 答案：7" in (tmp_path / "metrics/samples.md").read_text(encoding="utf-8")


def test_report_has_exactly_the_issue_key_paths():
    def result(ppl, task, pref, sums):
        return evaluate.ArtifactResult(ppl, {"task": task, "rouge_l": None, "exact_match": None}, sums, pref, 0.0)

    results = {
        "sft": result(10.0, 0.5, 0.5, [(-10.0, -9.0)]),
        "dpo": result(9.0, 0.6, 1.0, [(-8.0, -10.0)]),
        "gguf_f16": result(8.0, 0.3, 0.5, []),
        "gguf_q4_k_m": result(8.4, 0.3, 0.5, []),
    }
    report = outputs.build_report(results, {"gguf_f16": 4 * 2**20, "gguf_q4_k_m": 2**20})
    assert set(report) == {"perplexity", "task", "preference_accuracy", "refusal_rate", "quantization"}
    assert report["perplexity"] == {"sft": 10.0, "dpo": 9.0, "gguf_f16": 8.0, "gguf_q4_k_m": 8.4}
    # dpo moved chosen +2 and rejected -1 relative to sft: implicit reward margin 3 > 0 -> 1.0
    assert report["preference_accuracy"]["dpo_implicit_reward"] == 1.0
    assert report["quantization"] == {
        "q4_k_m_vs_f16_ppl_ratio": 1.05,
        "f16_size_mib": 4.0,
        "q4_k_m_size_mib": 1.0,
        "q4_k_m_vs_f16_size_ratio": 0.25,
    }


def test_implicit_reward_accuracy_by_hand():
    # pair 1: (-5 - -6) - (-7 - -7) = 1 > 0; pair 2: (-5 - -4) - (-7 - -8) = -2 -> 1/2
    policy, reference = [(-5.0, -7.0), (-5.0, -7.0)], [(-6.0, -7.0), (-4.0, -8.0)]
    assert outputs.implicit_reward_accuracy(policy, reference) == 0.5


def test_task_items_alternate_drill_and_open_questions():
    def row(answer):
        return {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": answer}]}

    rows = [row("open 1"), row("open 2"), row("x\n答案：1"), row("open 3"), row("y\n答案：2")]
    refs = [item.reference for item in evaluate.select_task_items(rows, 4)]
    assert refs == ["x\n答案：1", "open 1", "y\n答案：2", "open 2"]


def test_samples_markdown_quotes_every_answer():
    text = outputs.samples_markdown(["你好"], {"base": ["第一行\n第二行"], "sft": [""]}, max_new_tokens=8)
    assert "## 1. 你好" in text
    assert "**base**\n\n> 第一行\n> 第二行" in text
    assert "**sft**\n\n> *(empty answer)*" in text


def test_gates_warn_by_default_and_fail_when_asked(caplog: pytest.LogCaptureFixture) -> None:
    report = {"task": {"sft": 0.5, "dpo": 0.3}, "quantization": {"q4_k_m_vs_f16_ppl_ratio": 1.0}}
    beyond_noise = {"comparisons": {"task": {"dpo_vs_sft": {"low": -0.3, "high": -0.1, "items": 8}}}}
    verdicts = gates.gate_verdicts(report, beyond_noise, eval_params())
    evaluate.apply_gates(verdicts, eval_params(gate_action="warn"))  # warn: logs, does not raise
    assert "task.dpo = 0.3000 is 0.2000 below task.sft" in caplog.text
    with pytest.raises(GateFailed, match=r"^1 eval gate\(s\) failed \(eval.gate_action: fail\): gate eval.max_task"):
        evaluate.apply_gates(verdicts, eval_params(gate_action="fail"))
    within_limits = gates.gate_verdicts({"task": {"sft": 0.5, "dpo": 0.48}}, {}, eval_params())
    evaluate.apply_gates(within_limits, eval_params(gate_action="fail"))


def test_a_breach_within_noise_only_warns_even_when_gates_fail(caplog: pytest.LogCaptureFixture) -> None:
    report = {"task": {"sft": 0.5, "dpo": 0.3}}
    within_noise = {"comparisons": {"task": {"dpo_vs_sft": {"low": -0.5, "high": 0.1, "items": 8}}}}
    evaluate.apply_gates(gates.gate_verdicts(report, within_noise, eval_params()), eval_params(gate_action="fail"))
    assert "over 8 questions: within noise (a warning: eval.gate_evidence is interval)" in caplog.text
    point = eval_params(gate_action="fail", gate_evidence="point")
    with pytest.raises(GateFailed, match=r"over 8 questions: within noise$"):
        evaluate.apply_gates(gates.gate_verdicts(report, within_noise, point), point)


def test_main_names_the_missing_artifact_and_exits_2(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from stages import eval as eval_stage

    monkeypatch.chdir(tmp_path)
    write_params(tmp_path, eval={"artifacts": ["merged"]})
    assert eval_stage.main([]) == 2
    assert capsys.readouterr().err == (
        "eval: error: models/merged: missing artifact 'merged'; run `dvc repro` or drop it from eval.artifacts\n"
    )


def test_the_stop_tokens_are_the_turn_end_and_the_document_end() -> None:
    tokenizer = char_tokenizer([ALPHABET])
    vocab = tokenizer.get_vocab()
    assert evaluate.stop_token_ids(tokenizer) == {vocab["<|im_end|>"], vocab["<|endoftext|>"]}


def test_a_nan_perplexity_is_null_in_eval_json_and_fails_its_gate(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.chdir(tmp_path)

    def result(ppl: float) -> evaluate.ArtifactResult:
        return evaluate.ArtifactResult(ppl, {"task": 0.5, "rouge_l": None, "exact_match": None}, [], 0.5, 0.0)

    results = {"gguf_f16": result(8.0), "gguf_q4_k_m": result(math.nan)}  # e.g. a q4_k_m that computes NaN
    report = outputs.build_report(results, {})
    outputs.write_json(Path("metrics/eval.json"), report)

    def refuse(constant: str) -> None:
        raise ValueError(f"{constant} in metrics/eval.json")

    written = json.loads(Path("metrics/eval.json").read_text(encoding="utf-8"), parse_constant=refuse)
    assert written["perplexity"] == {"gguf_f16": 8.0, "gguf_q4_k_m": None}
    assert written["quantization"] == {"q4_k_m_vs_f16_ppl_ratio": None}
    verdicts = gates.gate_verdicts(report, outputs.build_intervals(results, eval_params()), eval_params())
    with pytest.raises(GateFailed, match=r"q4_k_m_vs_f16_ppl_ratio is nan \(a perplexity is not finite\)"):
        evaluate.apply_gates(verdicts, eval_params(gate_action="fail"))


def per_item_result(nll_sums: list[float], margins: list[float], task_scores: list[float]) -> evaluate.ArtifactResult:
    """A result with its per-item values (10 tokens a conversation) and one sample answer."""
    scores = [metrics.TaskScore("rouge_l", value) for value in task_scores]
    return evaluate.ArtifactResult(
        perplexity=math.exp(sum(nll_sums) / (10 * len(nll_sums))),
        task=metrics.task_summary(scores),
        preference_sums=[(-1.0, -2.0) if margin > 0 else (-2.0, -1.0) for margin in margins],
        preference_accuracy=metrics.preference_accuracy(margins),
        refusal_rate=0.0,
        task_answers=["a"] * len(task_scores),
        task_scores=scores,
        sample_answers=["a"],
        nll_sums=nll_sums,
        token_counts=[10] * len(nll_sums),
        preference_margins=margins,
    )


def test_the_intervals_file_is_strict_json_the_same_bytes_on_rerun_and_stated_in_samples_md(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    results = {
        "sft": per_item_result([20.0, 30.0, 25.0], [1.0, -1.0, 1.0, 1.0], [0.5, 1.0]),
        "dpo": per_item_result([20.0, 30.0, 25.0], [1.0, 1.0, 1.0, 1.0], [0.5, 0.0]),
        "gguf_f16": per_item_result([20.0, 30.0, 25.0], [1.0, 1.0, 1.0, 1.0], [0.5, 0.0]),
        "gguf_q4_k_m": per_item_result([20.0, math.nan, 25.0], [1.0, 1.0, 1.0, 1.0], [0.5, 0.0]),  # a NaN logit
    }
    held = evaluate.HeldOut([], [], [], [], sample_prompts=["q"], sample_prompt_ids=[[1]])
    params = eval_params(gate_action="warn")
    report = outputs.build_report(results, {})

    def write() -> bytes:
        interval_report = outputs.build_intervals(results, params)
        verdicts = gates.gate_verdicts(report, interval_report, params)
        outputs.write_outputs(report, interval_report, verdicts, results, held, params)
        return Path("metrics/eval_intervals.json").read_bytes()

    first = write()
    assert write() == first

    def refuse(constant: str) -> None:
        raise ValueError(f"{constant} in metrics/eval_intervals.json")

    written = json.loads(first, parse_constant=refuse)
    assert written["artifacts"]["perplexity"]["gguf_q4_k_m"]["value"] is None
    q4 = written["comparisons"]["perplexity"]["gguf_q4_k_m_vs_gguf_f16"]
    assert (q4["value"], q4["low"], q4["high"], q4["verdict"]) == (None, None, None, "not finite")
    # every pair right for dpo against 3 of 4 for sft: +0.25, one pair decides it: within noise
    assert written["comparisons"]["preference_accuracy"]["dpo_vs_sft"]["value"] == 0.25
    assert written["artifacts"]["preference_accuracy"]["dpo_implicit_reward"]["items"] == 4
    assert written["gates"] == {
        "eval.max_q4_k_m_vs_f16_ppl_ratio": "not finite",
        "eval.max_task_drop_dpo_vs_sft": "breach within noise",  # 0.75 -> 0.25 on two questions
    }
    markdown = Path("metrics/samples.md").read_text(encoding="utf-8")
    assert "\n## What the evidence supports\n" in markdown
    assert "- dpo vs sft preference accuracy: +0.2500 [" in markdown and "(4 pairs): within noise" in markdown
    assert "- gguf_q4_k_m vs gguf_f16 perplexity: ×n/a [n/a, n/a] (3 conversations): not finite" in markdown
    assert "- gate eval.max_task_drop_dpo_vs_sft: breach within noise" in markdown
    assert markdown.index("## What the evidence supports") < markdown.index("## 1. q")
