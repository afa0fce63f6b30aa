"""The seed pairs Self-Instruct starts from: any SFT source prepare understands, read with prepare's own
readers and formats (ta/data), single-turn conversations only (an example must stand on its own)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from ta.config import PrepareSource
from ta.data.formats import normalise
from ta.data.io import Record, read_records
from ta.data.samples import RowRejected
from ta.data.sources import Source, read_hub, source_format
from ta.errors import SelfInstructError


@dataclass(frozen=True)
class Pair:
    """One instruction and its answer, and where it comes from (file:line, or the request that wrote it)."""

    instruction: str
    answer: str
    source: str


def load_seeds(configs: list[PrepareSource]) -> list[Pair]:
    """Every usable single-turn row of the seed sources, in order. Rows prepare would reject for their
    content (missing field, wrong roles) are left out; a structurally broken file stops with file:line."""
    seeds: list[Pair] = []
    for config in configs:
        source = Source(config.path or config.hub, "sft", config)
        records = _records(source)
        first = next(records, None)
        if first is None:
            continue
        fmt = source_format(source, [first])
        for record in (first, *records):
            try:
                sample = normalise(record.value, fmt, source.column_map)
            except RowRejected:
                continue
            turns = [m for m in sample.messages if m["role"] != "system"]
            if len(turns) == 2 and turns[0]["content"].strip() and turns[1]["content"].strip():
                seeds.append(Pair(turns[0]["content"], turns[1]["content"], record.source))
    if not seeds:
        names = ", ".join(config.path or config.hub for config in configs)
        raise SelfInstructError(f"params.yaml: selfinstruct.seed_sources: no single-turn pair in {names}")
    return seeds


def _records(source: Source) -> Iterator[Record]:
    if source.config.hub:
        return read_hub(source.config)
    if not Path(source.name).is_file():
        raise SelfInstructError(f"{source.name}: seed source not found (params.yaml: selfinstruct.seed_sources)")
    return read_records(source.name)
