"""prepare's inputs: the sources named in params (or on the command line), read a chunk at a time, and
the format each one is in."""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field, fields
from pathlib import Path

from ta.config import Prepare, PrepareSource
from ta.data.formats import detect_format, is_preference_format
from ta.data.io import LineBlock, RawRow, Record, chunked, parse_jsonl_line, read_chunks
from ta.errors import DataError, PrepareError

log = logging.getLogger("prepare")

CHUNK_ROWS = 2000  # lines per task sent to a worker; a source of one chunk is done in-process
LENGTH_SAMPLE = 20_000  # kept rows per source whose token length the statistics count (at least)


@dataclass
class Source:
    """One input, resolved from params or the command line."""

    name: str  # file path or hub id: what rejects and metrics call it
    kind: str  # sft | preference | any (the CLI takes both)
    config: PrepareSource = field(default_factory=PrepareSource)
    length_every: int = 1  # token lengths counted in one of this many rows (length_sample_every)
    expected_rows: int = 0  # estimated from a large JSONL file's size (0: not estimated)
    format: str = ""  # the format read, once known (named in params or detected)

    @property
    def column_map(self) -> dict[str, str]:
        """{source column: format field}, from the params mapping {format field: source column}."""
        columns = self.config.columns
        return {getattr(columns, f.name): f.name for f in fields(columns) if getattr(columns, f.name)}


def sources_from_params(params: Prepare) -> list[Source]:
    """The SFT and preference sources of params `prepare`, in that order (validated by the loader); a hub
    dataset must name its revision (check_pinned) and, under `dvc repro`, a local source must be a dep of the
    stage (check_tracked), before any source is read."""
    sources = [
        Source(portable_name(config.path) if config.path else config.hub, kind, config)
        for kind in ("sft", "preference")
        for config in params.sources(kind)
    ]
    for source in sources:
        if source.config.hub:
            check_pinned(source.config)
    check_tracked(sources)
    return sources


def portable_name(path: str) -> str:
    """A source path as given, but relative to the working directory (the repository root under DVC) when
    given as an absolute one: the name goes into metrics/prepare.json, which git tracks, and into every
    prepared row, which must not change with the machine's checkout location."""
    return os.path.relpath(path) if os.path.isabs(path) else path


# dvc.yaml sits in the directory DVC runs a stage in (its wdir); DVC names that stage in DVC_STAGE
STAGE_FILE = Path("dvc.yaml")


def check_tracked(sources: list[Source]) -> None:
    """Under `dvc repro`, every local file a source reads lies inside one of the running stage's deps in
    dvc.yaml: DVC reruns a stage only when a dep changes, so a source it does not know of could change
    without the stage rerunning. Outside DVC (tests, a plain `python -m stages.prepare`) there is no stage to
    check against."""
    stage = os.environ.get("DVC_STAGE", "").rsplit(":", 1)[-1]
    if not stage or not STAGE_FILE.is_file():
        return
    import yaml

    declared = (yaml.safe_load(STAGE_FILE.read_text(encoding="utf-8")) or {}).get("stages", {}).get(stage)
    if not isinstance(declared, dict):
        return
    deps = [Path(os.path.abspath(dep)) for dep in declared.get("deps", []) if isinstance(dep, str)]
    for source in sources:
        for local in local_files(source.config):
            path = Path(os.path.abspath(local))
            if not any(path == dep or dep in path.parents for dep in deps):
                raise PrepareError(
                    f"{local}: source of stage {stage} that dvc.yaml does not list in its deps, so a change to it "
                    f"would not rerun {stage}; move it under data/raw, or add `- {portable_name(local)}` to the "
                    "deps of stages prepare and base in dvc.yaml"
                )


def local_files(config: PrepareSource) -> list[str]:
    """The paths on this machine a source reads: its file, or a local `hub:` dataset's directory or data files."""
    if config.path:
        return [config.path]
    if Path(config.hub).is_dir():
        return [config.hub]
    return [config.data_files] if config.data_files and Path(config.data_files).is_file() else []


Chunk = LineBlock | list[RawRow]


def read_source(source: Source) -> Iterator[Chunk]:
    """Chunks of CHUNK_ROWS rows of a local file (JSONL or JSON array), or of a hub dataset through
    `datasets`."""
    if source.config.hub:
        return chunked(read_hub(source.config), CHUNK_ROWS)
    if not Path(source.name).is_file():
        raise PrepareError(f"{source.name}: source file not found")
    return read_chunks(source.name, CHUNK_ROWS)


def read_hub(config: PrepareSource) -> Iterator[Record]:
    """A hub dataset by id, with the ordinary `datasets.load_dataset` call (Arrow, memory-mapped, so
    bounded memory); row i is reported as line i+1 of `<id>[<split>]`."""
    import datasets

    try:
        dataset = datasets.load_dataset(
            config.hub,
            config.name or None,
            split=config.split,
            revision=config.revision or None,
            data_files=config.data_files or None,
        )
    except (OSError, ValueError) as err:  # offline or unknown id (OSError), an unknown split or config (ValueError)
        raise PrepareError(
            f"{config.hub}: cannot load the dataset ({type(err).__name__}: {' '.join(str(err).split())}); "
            "check the source's hub, name, split, data_files and revision, and the network"
        ) from None
    label = f"{config.hub}[{config.split}]"
    for index, row in enumerate(dataset):
        yield Record(label, index + 1, row)


def is_local(config: PrepareSource) -> bool:
    """A `hub:` source that is on this machine: a dataset directory, or a builder (json, parquet ...) over
    local data files. Nothing there to pin: DVC tracks local files itself."""
    return bool(local_files(config))


def check_pinned(config: PrepareSource) -> None:
    """A hub dataset is read at a named revision: without one, `dvc repro` reads whatever the dataset is today
    (and DVC cannot see that it changed). A branch name is taken, with a warning: it moves too."""
    if is_local(config):
        return
    if not config.revision:
        raise PrepareError(
            f"{config.hub}: no revision pinned; add `revision: <commit sha>` to the source (the dataset's commit "
            "you reviewed, from its page's history): without one, a rerun reads whatever the dataset is that day"
        )
    if not re.fullmatch(r"[0-9a-f]{40}", config.revision):
        log.warning("%s: revision %r is not a commit sha; a branch or tag can move", config.hub, config.revision)


def source_format(source: Source, head: list[RawRow]) -> str:
    """The format named in params, or the one the first readable row's keys identify."""
    fmt = source.config.format
    if fmt == "auto":
        records = (item if isinstance(item, Record) else parse_jsonl_line(source.name, *item) for item in head)
        first = next((record for record in records if record.error is None), None)
        if first is None:  # nothing readable: every row will be rejected anyway
            return "pairs" if source.kind == "preference" else "qa"
        fmt = detect_format({source.column_map.get(k, k): v for k, v in first.value.items()}) or ""
        if not fmt:
            raise DataError(
                f"{first.source}: cannot tell the format from the keys {sorted(first.value)}; "
                "name it (prepare source `format:`, or --format)",
                "unknown_format",
                first.line,
            )
    wanted = {"sft": False, "preference": True}.get(source.kind)
    if wanted is not None and is_preference_format(fmt) != wanted:
        listed = "sft_sources" if source.kind == "sft" else "preference_sources"
        raise PrepareError(f"{source.name}: rows look like format {fmt!r}, which does not belong in {listed}")
    return fmt


def expected_rows(source: Source, head: list[RawRow]) -> int:
    """About how many rows a JSONL file of more than one chunk has, from its size and the size of its first
    lines (0 for other sources)."""
    lines = [item[1] for item in head if isinstance(item, tuple)]  # JSONL: (line number, bytes)
    if len(head) < CHUNK_ROWS or len(lines) < len(head):  # small, a JSON array or a hub dataset
        return 0
    return round(Path(source.name).stat().st_size * len(lines) / sum(len(raw) + 1 for raw in lines))


def length_sample_every(source: Source, head: list[RawRow]) -> int:
    """Token lengths for the statistics are counted in one of this many kept rows: all of them up to
    LENGTH_SAMPLE rows, then a hash sample of about that size (in a large JSONL file)."""
    return max(1, round(expected_rows(source, head) / LENGTH_SAMPLE))
