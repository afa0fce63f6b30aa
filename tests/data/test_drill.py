"""The generated drill sets (ta/data/drill.py): correct arithmetic, a scoreable final line, and the shipped
files' properties."""

from __future__ import annotations

import json
import random
import re

from ta.data import drill
from ta.eval.metrics import final_answer, is_drill_reference
from tests.helpers import REPO


def answer_of(text: str) -> str:
    return text.rsplit("答案：", 1)[1]


def test_every_sft_drill_answer_is_arithmetically_right() -> None:
    for row in drill.sft_rows(400, random.Random(7)):
        q, final = row["question"], answer_of(row["answer"])
        numbers = [int(n) for n in re.findall(r"\d+", q)]
        if "千" in q or any(big in q and small in q for big, small, _ in drill.UNITS):
            factor = next(f for big, small, f in drill.UNITS if q.find(big) < q.find(small) and big in q)
            assert final.split(" ")[0] == str(numbers[0] * factor), row
        else:
            a, b = numbers
            op = next(op for op in ("+", "-", "×", "加", "减", "乘") if op in q)
            expected = {"+": a + b, "加": a + b, "-": a - b, "减": a - b, "×": a * b, "乘": a * b}[op]
            assert int(final) == expected, row


def test_every_drill_answer_is_scored_by_exact_match() -> None:
    for row in drill.sft_rows(200, random.Random(11)):
        assert is_drill_reference(row["answer"]), row
        assert final_answer(row["answer"]) == answer_of(row["answer"]).replace(" ", ""), row


def test_rejected_drill_answers_are_wrong_or_unexplained() -> None:
    for row in drill.preference_rows(200, random.Random(3), exclude=set()):
        wrong = answer_of(row["rejected"]) != answer_of(row["chosen"])
        bare = "\n" not in row["rejected"]
        assert wrong != bare, row  # either worked steps with a slip, or the right number with no steps


def test_pairs_leave_out_the_questions_they_are_told_to() -> None:
    taken = {row["question"] for row in drill.sft_rows(300, random.Random(5))}
    pairs = drill.preference_rows(300, random.Random(5), exclude=taken)
    assert not taken & {row["instruction"] for row in pairs}


def test_the_same_seed_gives_the_same_rows() -> None:
    assert drill.sft_rows(50, random.Random(9)) == drill.sft_rows(50, random.Random(9))
    assert drill.sft_rows(50, random.Random(9)) != drill.sft_rows(50, random.Random(10))


def test_shipped_drill_questions_are_unique_and_sft_and_pairs_disjoint() -> None:
    def rows(name: str) -> list[dict]:
        return [json.loads(line) for line in (REPO / "data/raw" / name).read_text(encoding="utf-8").splitlines()]

    questions = [r["question"] for r in rows("sft_drill.jsonl")]
    assert len(questions) == len(set(questions)) == 600
    assert not set(questions) & {p["instruction"] for p in rows("preference_drill.jsonl")}
