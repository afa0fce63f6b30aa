"""The Self-Instruct filters on hand-written replies (one case per reason), the prompts each request is
built from, and the response cache's recovery from a kill."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from ta.config import load_params
from ta.errors import SelfInstructError
from ta.selfinstruct.cache import ResponseCache, request_key
from ta.selfinstruct.client import request_body
from ta.selfinstruct.filters import PairFilters, Reply, item_pair, json_value, media_regex, reply_items
from ta.selfinstruct.prompts import Example, load_templates, plan_request, request_messages, topics
from ta.selfinstruct.rouge import InstructionPool
from ta.selfinstruct.seeds import Pair, load_seeds

REPO = Path(__file__).resolve().parents[2]
REFUSALS = ["作为一个AI语言模型", "As an AI language model"]


@pytest.fixture(scope="module")
def params():
    section = load_params(REPO / "params.yaml").selfinstruct
    return dataclasses.replace(
        section, min_instruction_chars=5, max_instruction_chars=40, min_answer_chars=10, max_answer_chars=80
    )


def reply(content: str, finish_reason: str = "stop") -> Reply:
    return Reply(content, finish_reason, 100, 50)


# ------------------------------------------------------------------------------------------- replies


def test_a_reply_cut_at_max_tokens_is_truncated() -> None:
    items, verdict = reply_items(reply('{"pairs": [{"instruction": "解释', "length"))
    assert items == [] and verdict.reason == "truncated" and "50 tokens" in verdict.detail


@pytest.mark.parametrize(
    "content",
    ["好的，下面是五个问题：1. 什么是分数？", '{"questions": ["什么是分数？"]}', '{"pairs": "none"}', "[1, 2"],
)
def test_a_reply_that_is_not_the_json_asked_for_is_malformed(content: str) -> None:
    assert reply_items(reply(content))[1].reason == "malformed"


def test_the_pairs_are_found_in_a_fence_in_prose_and_with_raw_line_breaks() -> None:
    pair = {"instruction": "什么是分数？", "answer": "分数表示整体的几分之几。"}
    for content in (
        json.dumps({"pairs": [pair]}, ensure_ascii=False),
        "```json\n" + json.dumps({"pairs": [pair]}, ensure_ascii=False) + "\n```",
        "好的：\n" + json.dumps([pair], ensure_ascii=False) + "\n希望有帮助。",
    ):
        assert reply_items(reply(content)) == ([pair], None)
    assert json_value('{"a": "第一行\n第二行"}') == {"a": "第一行\n第二行"}


@pytest.mark.parametrize(
    "item, detail",
    [
        ("什么是分数？", "a pair should be an object"),
        ({"instruction": "什么是分数？"}, 'field "answer" should be a non-empty string, got missing'),
        ({"instruction": "  ", "answer": "分数是……"}, 'field "instruction" should be a non-empty string'),
        ({"instruction": ["什么是分数？"], "answer": "分数是……"}, "got list"),
    ],
)
def test_a_pair_without_two_non_empty_strings_is_malformed(item, detail: str) -> None:
    verdict = item_pair(item)
    assert verdict.reason == "malformed" and detail in verdict.detail


# --------------------------------------------------------------------------------------------- pairs


def filters_with(params, *instructions: str) -> PairFilters:
    pool = InstructionPool()
    for i, text in enumerate(instructions):
        pool.add(text, f"data/raw/seed.jsonl:{i + 1}")
    return PairFilters(params, REFUSALS, pool)


GOOD_ANSWER = "分数表示把整体平均分成几份，取其中的几份。"


@pytest.mark.parametrize(
    "instruction, answer, reason",
    [
        ("分数？", GOOD_ANSWER, "too_short"),  # 3 characters < 5
        ("请解释" + "分数" * 30, GOOD_ANSWER, "too_long"),
        ("什么是分数？", "分数。", "too_short"),
        ("什么是分数？", "分数" * 50, "too_long"),
        ("请描述这张图片中的三角形。", GOOD_ANSWER, "needs_media"),
        ("Summarize the attached file for me", GOOD_ANSWER, "needs_media"),
        ("打开以下链接并总结文章", GOOD_ANSWER, "needs_media"),
        ("什么是分数？", "作为一个AI语言模型，我无法回答这个问题。", "refusal"),
        ("什么是分数？", "As an AI Language Model, I cannot say.", "refusal"),  # case-insensitive
        ("请问什么是光合作用？", GOOD_ANSWER, "too_similar"),  # ROUGE-L 2*7/(9+7) = 0.88 with 什么是光合作用？
    ],
)
def test_each_pair_filter_trips(params, instruction: str, answer: str, reason: str) -> None:
    verdict, _ = filters_with(params, "什么是光合作用？").check(instruction, answer)
    assert verdict is not None and verdict.reason == reason, verdict


def test_a_novel_pair_passes_with_its_nearest_instruction(params) -> None:
    verdict, nearest = filters_with(params, "什么是光合作用？", "解释勾股定理").check(
        "勾股定理有哪些应用？", GOOD_ANSWER
    )
    assert verdict is None
    assert nearest.text == "解释勾股定理" and nearest.source == "data/raw/seed.jsonl:2" and 0 < nearest.score < 0.7


def test_media_words_match_whole_ascii_words_only() -> None:
    regex = media_regex(["photo", "图片", "file"])
    assert regex.search("Explain photosynthesis") is None and regex.search("the profile of a curve") is None
    assert regex.search("Look at the PHOTO") and regex.search("看photo") and regex.search("这张图片")
    assert media_regex([]) is None


# ------------------------------------------------------------------------------------------- prompts


def test_templates_are_loaded_checked_and_hashed(tmp_path: Path) -> None:
    templates = load_templates("zh", REPO / "prompts/selfinstruct")
    assert templates.digest.startswith("sha256:") and len(templates.digest) == 19
    folder = tmp_path / "zh"
    folder.mkdir()
    (folder / "system.txt").write_text("你是老师。", encoding="utf-8")
    (folder / "user.txt").write_text("请为 $subject 写 $count 个问题", encoding="utf-8")
    with pytest.raises(SelfInstructError, match=r"zh/user.txt: unknown placeholder \$count"):
        load_templates("zh", tmp_path)
    (folder / "user.txt").write_text("价格 $5", encoding="utf-8")
    with pytest.raises(SelfInstructError, match=r"write \$\$ for a literal dollar sign"):
        load_templates("zh", tmp_path)
    with pytest.raises(SelfInstructError, match="no prompt templates for selfinstruct.language 'fr'"):
        load_templates("fr", tmp_path)


def test_requests_cycle_the_topics_and_are_the_same_on_every_run(params) -> None:
    seeds = [Pair(f"问题{i}", f"回答{i}" * 40, f"seed:{i}") for i in range(20)]
    order = topics(params)
    assert sorted(order) == sorted((s, d) for s in params.subjects for d in params.difficulties)
    generated = [Example("生成的问题", "生成的回答", order[3][0])]
    plans = [plan_request(i, params, order, seeds, generated) for i in range(len(order) + 1)]
    assert [(p.subject, p.difficulty) for p in plans[: len(order)]] == order and plans[-1].subject == order[0][0]
    assert plans == [plan_request(i, params, order, seeds, generated) for i in range(len(order) + 1)]
    for plan in plans:  # always seed_examples + generated_examples examples; generated ones when there are
        assert len(plan.examples) == params.seed_examples + params.generated_examples
        assert sum(e.instruction == "生成的问题" for e in plan.examples) == 1
    messages = request_messages(plans[3], params, load_templates("zh", REPO / "prompts/selfinstruct"))
    assert [m["role"] for m in messages] == ["system", "user"]
    user = messages[1]["content"]
    assert plans[3].subject in user and plans[3].difficulty in user and str(params.pairs_per_request) in user
    assert "生成的问题" in user and "……" in user  # examples cut to example_max_chars
    body = request_body(params, messages, plans[3].sampling_seed)
    assert body["seed"] == plans[3].sampling_seed and body["response_format"] == {"type": "json_object"}


def test_seeds_come_from_any_source_prepare_reads(tmp_path: Path) -> None:
    alpaca = tmp_path / "alpaca.json"
    alpaca.write_text(json.dumps([{"instruction": "什么是分数？", "input": "", "output": "分数是……"}]), "utf-8")
    sharegpt = tmp_path / "multi.jsonl"
    turns = [{"from": "human", "value": "你好"}, {"from": "gpt", "value": "你好！"}] * 2
    sharegpt.write_text(json.dumps({"conversations": turns}, ensure_ascii=False) + "\n", "utf-8")
    from ta.config import PrepareSource

    seeds = load_seeds([PrepareSource(path=str(alpaca)), PrepareSource(path=str(sharegpt))])
    assert seeds == [Pair("什么是分数？", "分数是……", f"{alpaca}:1")]  # the two-turn conversation is left out
    with pytest.raises(SelfInstructError, match="missing.jsonl: seed source not found"):
        load_seeds([PrepareSource(path=str(tmp_path / "missing.jsonl"))])


# --------------------------------------------------------------------------------------------- cache


def test_the_cache_keys_the_full_request_and_survives_a_kill_mid_line(tmp_path: Path) -> None:
    path = tmp_path / "responses.jsonl"
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "seed": 1}
    key = request_key("http://x/v1", body)
    assert key != request_key("http://x/v1", {**body, "seed": 2}) != request_key("http://y/v1", body)
    cache = ResponseCache(path).load()
    cache.put(key, "http://x/v1", body, reply("{}"))
    cache.close()
    whole = path.read_bytes()
    path.write_bytes(whole + b'{"key": "abc", "reply": {"content": "hal')  # the kill, mid-write
    again = ResponseCache(path).load()
    assert again.get(key) == reply("{}") and path.read_bytes() == whole
    path.write_bytes(b"not json\n" + whole)
    with pytest.raises(SelfInstructError, match="responses.jsonl:1: not a cache entry"):
        ResponseCache(path).load()
