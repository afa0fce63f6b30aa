"""The learnable drill sets: step-by-step arithmetic and unit-conversion tutoring with a fixed answer layout.

A tiny model learns little from a few hundred free-form answers, so the default data also carries drill
rows. Every answer ends with `答案：<final answer>`, which eval scores by exact match. The rows are a pure
function of the random generator: `python -m tools.drill` writes the shipped files in data/raw/, and the
base stage draws more (from another seed) as pretraining text.
"""

from __future__ import annotations

import random
from collections.abc import Callable

UNITS = [  # (big unit, small unit, factor)
    ("千米", "米", 1000),
    ("米", "厘米", 100),
    ("千克", "克", 1000),
    ("小时", "分钟", 60),
    ("分钟", "秒", 60),
    ("吨", "千克", 1000),
    ("升", "毫升", 1000),
]


def addition(rng: random.Random) -> tuple[str, str, str]:
    a, b = rng.randint(10, 99), rng.randint(10, 99)
    ones, carry = (a % 10 + b % 10) % 10, (a % 10 + b % 10) // 10
    tens = a // 10 + b // 10 + carry
    steps = [f"个位：{a % 10} + {b % 10} = {a % 10 + b % 10}"]
    steps[0] += f"，写 {ones} 进 1。" if carry else "，不用进位。"
    steps.append(f"十位：{a // 10} + {b // 10}" + (" + 1" if carry else "") + f" = {tens}。")
    question = rng.choice(["计算 {a} + {b} 等于多少？", "{a} 加 {b} 是多少？请一步一步算。", "帮我算一下 {a} + {b}。"])
    return question.format(a=a, b=b), "\n".join(["我们按位相加：", *steps, f"所以 {a} + {b} = {a + b}。"]), str(a + b)


def subtraction(rng: random.Random) -> tuple[str, str, str]:
    a = rng.randint(20, 99)
    b = rng.randint(10, a - 1)
    borrow = a % 10 < b % 10
    ones = (a % 10 + (10 if borrow else 0)) - b % 10
    tens = a // 10 - (1 if borrow else 0) - b // 10
    first = (
        f"个位：{a % 10} 不够减 {b % 10}，向十位借 1，{a % 10 + 10} - {b % 10} = {ones}。"
        if borrow
        else (f"个位：{a % 10} - {b % 10} = {ones}。")
    )
    second = f"十位：{a // 10} - 1 - {b // 10} = {tens}。" if borrow else f"十位：{a // 10} - {b // 10} = {tens}。"
    question = rng.choice(["计算 {a} - {b} 等于多少？", "{a} 减 {b} 是多少？请讲一下步骤。", "帮我算一下 {a} - {b}。"])
    return (
        question.format(a=a, b=b),
        "\n".join(["我们按位相减：", first, second, f"所以 {a} - {b} = {a - b}。"]),
        str(a - b),
    )


def multiplication(rng: random.Random) -> tuple[str, str, str]:
    a, b = rng.randint(11, 49), rng.randint(2, 9)
    tens, ones = a // 10 * 10, a % 10
    steps = [f"把 {a} 拆成 {tens} + {ones}。", f"{tens} × {b} = {tens * b}，{ones} × {b} = {ones * b}。"]
    steps.append(f"再相加：{tens * b} + {ones * b} = {a * b}。")
    question = rng.choice(["计算 {a} × {b} 等于多少？", "{a} 乘以 {b} 是多少？", "用拆分法算 {a} × {b}。"])
    return question.format(a=a, b=b), "\n".join(steps), str(a * b)


def conversion(rng: random.Random) -> tuple[str, str, str]:
    big, small, factor = rng.choice(UNITS)
    n = rng.randint(2, 30)
    answer = f"1 {big} = {factor} {small}，所以 {n} {big} = {n} × {factor} = {n * factor} {small}。"
    question = rng.choice(
        ["把 {n} {big}换算成{small}。", "{n} {big}等于多少{small}？", "{n} {big}是多少{small}？请说明换算方法。"]
    )
    return question.format(n=n, big=big, small=small), answer, f"{n * factor} {small}"


TASKS: list[Callable[[random.Random], tuple[str, str, str]]] = [addition, subtraction, multiplication, conversion]


def sft_rows(n: int, rng: random.Random) -> list[dict[str, str]]:
    rows, seen = [], set()
    while len(rows) < n:
        question, steps, final = rng.choice(TASKS)(rng)
        if question in seen:
            continue
        seen.add(question)
        rows.append({"question": question, "answer": f"{steps}\n答案：{final}"})
    return rows


def preference_rows(n: int, rng: random.Random, exclude: set[str]) -> list[dict[str, str]]:
    """Chosen: the worked answer. Rejected: a wrong final answer, or a bare number with no explanation."""
    rows, seen = [], set(exclude)
    while len(rows) < n:
        question, steps, final = rng.choice(TASKS)(rng)
        if question in seen:
            continue
        seen.add(question)
        number, _, unit = final.partition(" ")
        wrong = str(int(number) + rng.choice([-10, -2, -1, 1, 2, 10]))
        wrong_final = f"{wrong} {unit}".strip()
        if rng.random() < 0.5:
            head, _, tail = steps.rpartition(number)  # the slip happens in the last step
            rejected = f"{head}{wrong}{tail}\n答案：{wrong_final}"
        else:
            rejected = f"答案：{final}"
        rows.append({"instruction": question, "chosen": f"{steps}\n答案：{final}", "rejected": rejected})
    return rows
