"""Exact and near-duplicate rows (ta/data/dedup.py): the compiled pass and its key tables decide what plain
dicts decide row by row, and prepare's chunked decisions match a row-by-row reference."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ta.data import kernels, minhash, prepare, sources
from ta.data.dedup import Deduplicator, KeyTable
from ta.data.formats import normalise
from ta.data.rows import RowDecisions
from ta.data.split import content_text, row_id
from tests.helpers import hand_counter, prepare_params, read_jsonl

KEY = st.integers(0, 2**64 - 1) | st.integers(0, 40)  # small keys collide in a small table's slots


@settings(max_examples=40, deadline=None)
@given(
    st.integers(0, 3).flatmap(  # bands per row: 0 when near-duplicates are off
        lambda width: st.lists(
            st.lists(st.tuples(KEY, st.lists(KEY, min_size=width, max_size=width)), max_size=150), max_size=8
        )
    )
)
def test_duplicate_pass_decides_what_dicts_decide_row_by_row(chunks: list[list[tuple[int, list[int]]]]) -> None:
    """Chunks of (id, bands) rows through the compiled pass and its two growing key tables (key 0 and
    repeated keys included): each row's earlier row and kind, as dicts of first rows decide them."""
    ids_table, bands_table, row = KeyTable(capacity=4), KeyTable(capacity=4), 0
    first_id: dict[int, int] = {}
    first_band: dict[int, int] = {}
    for chunk in chunks:
        expected = []
        for offset, (key, row_bands) in enumerate(chunk):
            if key in first_id:
                expected.append((first_id[key], True))
                continue
            hit = next((first_band[band] for band in row_bands if band in first_band), -1)
            expected.append((hit, False))
            if hit < 0:
                first_id[key] = row + offset
                for band in row_bands:
                    first_band.setdefault(band, row + offset)
        width = len(chunk[0][1]) if chunk else 0
        ids = np.array([key for key, _ in chunk], dtype=np.uint64)
        bands = np.array([b for _, b in chunk], dtype=np.uint64).reshape(len(chunk), width)
        ids_table.reserve(len(chunk))
        bands_table.reserve(bands.size)
        rows = np.arange(row, row + len(chunk), dtype=np.int32)
        earlier, exact = kernels.deduplicate(*ids_table.arrays(), *bands_table.arrays(), ids, bands, rows)
        assert list(zip(earlier.tolist(), exact.tolist(), strict=True)) == expected
        ids_table.size += len(chunk)
        bands_table.size += bands.size
        row += len(chunk)
    stored = ids_table.rows >= 0
    assert dict(zip(ids_table.keys[stored].tolist(), ids_table.rows[stored].tolist(), strict=True)) == first_id


def test_a_growing_key_table_keeps_every_key_with_its_row() -> None:
    table = KeyTable(capacity=4)
    keys = np.arange(1, 1001, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15)
    for start in range(0, 1000, 100):
        table.reserve(100)
        kernels.insert(*table.arrays(), keys[start : start + 100], np.arange(start, start + 100, dtype=np.int32))
        table.size += 100
    assert len(table.keys) >= 2 * 1000  # at most half full
    stored = table.rows >= 0
    assert dict(zip(table.keys[stored].tolist(), table.rows[stored].tolist(), strict=True)) == dict(
        zip(keys.tolist(), range(1000), strict=True)
    )


def decisions_of(file: str, lines: list[int], ids: list[str]) -> RowDecisions:
    decisions = RowDecisions(file)
    for line in lines:
        decisions.add(line, None, "", b"{}")
    decisions.passed, decisions.ids = list(range(len(lines))), ids
    return decisions


def test_a_duplicate_names_the_source_and_line_of_the_row_it_repeats() -> None:
    dedup = Deduplicator()
    first = decisions_of("a.jsonl", [3, 7], ["00000000000000aa", "00000000000000bb"])
    assert dedup.reject_duplicates(first) == 0
    second = decisions_of("b.jsonl", [1, 2, 5], ["00000000000000bb", "00000000000000cc", "00000000000000cc"])
    assert dedup.reject_duplicates(second) == 2
    assert second.reject_reasons == ["duplicate", None, "duplicate"]
    assert second.details[0] == "same content as a.jsonl:7"
    assert second.details[2] == "same content as b.jsonl:2"


def reference_duplicates(lines: list[str], near: tuple[int, int, int]) -> dict[int, str]:
    """Line -> duplicate | near_duplicate, decided the plain way: row by row, against every earlier kept
    row's id and LSH bands (what the chunked, vectorised decisions must reproduce)."""
    ids: set[str] = set()
    bands: set[int] = set()
    verdicts = {}
    for line_no, line in enumerate(lines, start=1):
        content = content_text(normalise(json.loads(line), "qa"))
        row_bands = set(minhash.band_hashes(content, *near))
        if row_id(content) in ids:
            verdicts[line_no] = "duplicate"
        elif row_bands & bands:
            verdicts[line_no] = "near_duplicate"
        else:
            ids.add(row_id(content))
            bands |= row_bands
    return verdicts


QUESTION = "什么是光合作用？请用简单的话解释一下它的过程和意义。"
ANSWER = "光合作用是绿色植物利用光能，把二氧化碳和水合成有机物并释放氧气的过程，它为几乎所有生命提供能量和氧气。"


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(picks=st.lists(st.tuples(st.integers(0, 5), st.integers(0, 3)), min_size=5, max_size=60))
def test_chunked_duplicate_decisions_match_the_row_by_row_reference(
    picks: list[tuple[int, int]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Exact copies, spacing variants, one-character edits and fresh rows, mixed at random; chunks of 4
    rows (duplicates across chunks and within one) decide exactly what the row-by-row reference does."""
    bases = [f"第{i}题：{ANSWER}" for i in range(6)]
    variants = [
        lambda t: t,
        lambda t: "  " + t.replace("，", ", "),
        lambda t: t.replace("氧气的过程", "氧气的反应"),
        lambda t: t + "。另外" + t[: len(t) // 3],
    ]
    lines = [json.dumps({"question": QUESTION, "answer": variants[v](bases[b])}, ensure_ascii=False) for b, v in picks]
    expected = reference_duplicates(lines, (64, *minhash.lsh_bands(0.8, 64)))
    monkeypatch.setattr(sources, "CHUNK_ROWS", 4)
    params = prepare_params(near_dup_threshold=0.8, near_dup_num_perm=64)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "raw.jsonl"
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        prepare.run_cli(params, [str(path)], Path(tmp) / "out.jsonl", "auto", hand_counter())
        rejects = read_jsonl(Path(tmp) / "out.rejects.jsonl")
    assert {int(r["source"].rsplit(":", 1)[1]): r["reason"] for r in rejects} == expected
