"""prepare's accounting (ta/data/stats.py): length statistics from a hash sample of a large source, the
power-of-two length buckets, the plot data."""

from __future__ import annotations

import csv
import json
from collections import Counter
from pathlib import Path

import pytest

from ta.data import prepare, sources
from ta.data.stats import length_buckets, write_plot_data
from tests.helpers import hand_counter, prepare_params

QUESTION = "什么是光合作用？请用简单的话解释一下它的过程和意义。"
ANSWER = "光合作用是绿色植物利用光能，把二氧化碳和水合成有机物并释放氧气的过程，它为几乎所有生命提供能量和氧气。"


def test_length_statistics_of_a_large_source_come_from_a_hash_sample(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rows = [{"question": f"问题{i}：{QUESTION}", "answer": ANSWER + "很" * (i % 50)} for i in range(600)]
    path = tmp_path / "raw.jsonl"
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    params = prepare_params(near_dup_threshold=0.0)

    def tokens(out: str) -> dict:
        return prepare.run_cli(params, [str(path)], tmp_path / out, "auto", hand_counter())["diversity"]["tokens"]

    full = tokens("full.jsonl")
    assert full["counted_rows"] == 600  # under LENGTH_SAMPLE rows: every row counted
    monkeypatch.setattr(sources, "CHUNK_ROWS", 100)
    monkeypatch.setattr(sources, "LENGTH_SAMPLE", 100)  # about one row in six counted
    sampled = tokens("sampled.jsonl")
    assert 50 < sampled["counted_rows"] < 160
    assert sampled["mean"] == pytest.approx(full["mean"], rel=0.1)
    assert abs(sampled["p50"] - full["p50"]) <= 5
    assert (tmp_path / "full.jsonl").read_bytes() == (tmp_path / "sampled.jsonl").read_bytes()


def test_length_buckets_are_powers_of_two_with_empty_ones_kept() -> None:
    lengths = Counter({0: 1, 1: 2, 3: 1, 40: 5, 100: 2})
    assert length_buckets(lengths) == [
        ("0-1", 3),
        ("2-3", 1),
        ("4-7", 0),
        ("8-15", 0),
        ("16-31", 0),
        ("32-63", 5),
        ("64-127", 2),
    ]
    assert length_buckets(Counter()) == [("0-1", 0)]


def test_plot_data_is_the_top_openings_and_the_buckets(tmp_path: Path) -> None:
    summary = {"diversity": {"top_openings": {"什么是": 3, "how do": 1}}}
    write_plot_data(summary, Counter({5: 2}), tmp_path / "o.csv", tmp_path / "l.csv")
    with open(tmp_path / "o.csv", encoding="utf-8") as f:
        assert list(csv.reader(f)) == [["opening", "rows"], ["什么是", "3"], ["how do", "1"]]
    assert (tmp_path / "l.csv").read_text() == "tokens,rows\n0-1,0\n2-3,0\n4-7,2\n"
