"""The generated drill sets: correct arithmetic, a scoreable final line, byte-identical regeneration."""

import json
import random
import re
import subprocess
import sys
from pathlib import Path

from stages import drill

REPO = Path(__file__).resolve().parent.parent


def final_answer(answer: str) -> str:
    return answer.rsplit("答案：", 1)[1]


def test_every_sft_drill_answer_is_arithmetically_right():
    for row in drill.sft_rows(400, random.Random(7)):
        q, final = row["question"], final_answer(row["answer"])
        numbers = [int(n) for n in re.findall(r"\d+", q)]
        if "千" in q or any(big in q and small in q for big, small, _ in drill.UNITS):
            factor = next(f for big, small, f in drill.UNITS if q.find(big) < q.find(small) and big in q)
            assert final.split(" ")[0] == str(numbers[0] * factor), row
        else:
            a, b = numbers
            op = next(op for op in ("+", "-", "×", "加", "减", "乘") if op in q)
            expected = {"+": a + b, "加": a + b, "-": a - b, "减": a - b, "×": a * b, "乘": a * b}[op]
            assert int(final) == expected, row


def test_rejected_drill_answers_are_wrong_or_unexplained():
    for row in drill.preference_rows(200, random.Random(3), exclude=set()):
        wrong = final_answer(row["rejected"]) != final_answer(row["chosen"])
        bare = "\n" not in row["rejected"]
        assert wrong != bare, row  # either worked steps with a slip, or the right number with no steps


def test_shipped_drill_files_regenerate_byte_for_byte(tmp_path):
    subprocess.run([sys.executable, "-m", "stages.drill", "--out-dir", str(tmp_path)], cwd=REPO, check=True)
    for name in ("sft_drill.jsonl", "preference_drill.jsonl"):
        assert (tmp_path / name).read_bytes() == (REPO / "data/raw" / name).read_bytes()


def test_drill_questions_are_unique_and_sft_and_pairs_disjoint():
    sft = [json.loads(line) for line in (REPO / "data/raw/sft_drill.jsonl").read_text(encoding="utf-8").splitlines()]
    pairs = [
        json.loads(line) for line in (REPO / "data/raw/preference_drill.jsonl").read_text(encoding="utf-8").splitlines()
    ]
    questions = [r["question"] for r in sft]
    assert len(questions) == len(set(questions)) == 600
    assert not set(questions) & {p["instruction"] for p in pairs}
