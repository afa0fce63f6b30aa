"""Stage prepare: raw conversation data -> cleaned, filtered, deduplicated, split SFT and preference sets.

Reads   params `prepare` (sources, limits, patterns), the source files under data/raw/ (or hub datasets),
        and the base model's tokenizer in models/base/ (token counts and the chat template).
Writes  data/prepared/{sft_train,sft_eval,pref_train,pref_eval}.jsonl  (TRL conversational form, by id)
        data/prepared/rejects.jsonl    every row that was not kept: source file:line, reason, detail, row
        data/processed_data.jsonl      every kept SFT row in the guide's Alpaca form
        metrics/prepare.json           rows in = kept + rejected per reason, per source; diversity report
        metrics/prepare_openings.csv   plot data (dvc plots): most common instruction openings
        metrics/prepare_lengths.csv    plot data (dvc plots): kept samples per token-length bucket

Also the guide's standalone command (section 2.2), for any supported format:
    python -m stages.prepare --input raw_data.jsonl --output data/processed_data.jsonl --max_length 2048
which writes every kept row to --output (input order) and the rejects to <output stem>.rejects.jsonl.

How a row travels: read (JSONL lines stream; a JSON array is parsed element by element) -> in worker
processes: parse, normalise to the internal conversation form, scrub PII, run the row filters, compute
its id and MinHash bands -> in this process, in input order: exact and near duplicates, per-source
weight and cap -> written to an output or to the rejects file with its reason code (REASONS).
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import multiprocessing
import os
import re
import sys
import zlib
from array import array
from collections import Counter, deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, fields
from itertools import islice
from pathlib import Path
from typing import Any

from stages import filters, token_bounds
from stages.data import (
    NORMALISERS,
    DataError,
    Message,
    RawRow,
    Record,
    RowRejected,
    Sample,
    detect_format,
    dumps,
    is_preference_format,
    normalise,
    parse_jsonl_line,
    read_raw_rows,
    to_alpaca,
    to_chat,
    to_guide_pair,
)
from stages.params import ParamsError, Prepare, PrepareSource, load_params

log = logging.getLogger("prepare")

TOKENIZER_DIR = Path("models/base")
PREPARED_DIR = Path("data/prepared")
PROCESSED_FILE = Path("data/processed_data.jsonl")
METRICS_FILE = Path("metrics/prepare.json")
OPENINGS_PLOT = Path("metrics/prepare_openings.csv")
LENGTHS_PLOT = Path("metrics/prepare_lengths.csv")
SPLITS = ("sft_train", "sft_eval", "pref_train", "pref_eval")
CHUNK_ROWS = 2000  # rows per task sent to a worker; a source with fewer is done in-process
LENGTH_SAMPLE = 20_000  # kept rows per source whose token length the statistics count (at least)

# Every reject reason, in the order a row meets them. Metrics list all of them (0 included) so that
# `dvc metrics diff` compares the same keys run after run.
STRUCTURAL_REASONS = ["not_utf8", "malformed_json", "wrong_top_level"]
CONTENT_REASONS = ["missing_field", "wrong_type", "bad_roles", "no_pair"]
FILTER_REASONS = [reason for reason, _ in filters.ROW_FILTERS]
SET_REASONS = ["duplicate", "near_duplicate", "not_sampled", "over_cap"]
REASONS = STRUCTURAL_REASONS + CONTENT_REASONS + FILTER_REASONS + SET_REASONS


class PrepareError(ValueError):
    """A problem for the user (missing tokenizer, misplaced source); main() prints it and exits 2."""


# ------------------------------------------------------------------------------------------- sources


@dataclass
class Source:
    """One input, resolved from params or the command line."""

    name: str  # file path or hub id: what rejects and metrics call it
    kind: str  # sft | preference | any (the CLI takes both)
    config: PrepareSource = field(default_factory=PrepareSource)
    length_every: int = 1  # token lengths counted in one of this many rows (length_sample_every)

    @property
    def column_map(self) -> dict[str, str]:
        """{source column: format field}, from the params mapping {format field: source column}."""
        columns = self.config.columns
        return {getattr(columns, f.name): f.name for f in fields(columns) if getattr(columns, f.name)}


def check_params(params: Prepare) -> None:
    """Values the typed loader cannot judge on its own."""
    checks = [
        (params.on_error in ("stop", "skip"), f"on_error must be stop or skip, got {params.on_error!r}"),
        (0 <= params.eval_fraction < 1, f"eval_fraction must be in [0, 1), got {params.eval_fraction}"),
        (0 <= params.near_dup_threshold < 1, f"near_dup_threshold must be in [0, 1), got {params.near_dup_threshold}"),
        (params.num_proc >= 1, f"num_proc must be at least 1, got {params.num_proc}"),
        (params.min_tokens <= params.max_tokens, "min_tokens must not exceed max_tokens"),
    ]
    for ok, message in checks:
        if not ok:
            raise PrepareError(f"params.yaml: prepare: {message}")


def sources_from_params(params: Prepare) -> list[Source]:
    resolved = []
    for kind, entries in (("sft", params.sft_sources), ("preference", params.preference_sources)):
        for entry in entries:
            config = PrepareSource(path=entry) if isinstance(entry, str) else entry
            where = f"params.yaml: prepare.{kind}_sources: {config.path or config.hub or entry}"
            if bool(config.path) == bool(config.hub):
                raise PrepareError(f"{where}: give exactly one of path or hub")
            if not 0 < config.weight <= 1:
                raise PrepareError(f"{where}: weight must be in (0, 1], got {config.weight}")
            if config.format != "auto" and config.format not in NORMALISERS:
                raise PrepareError(f"{where}: unknown format {config.format!r} (known: {', '.join(NORMALISERS)})")
            resolved.append(Source(config.path or config.hub, kind, config))
    return resolved


def read_source(source: Source) -> Iterator[RawRow]:
    """Rows of a local file (JSONL or JSON array), or of a hub dataset through `datasets`."""
    if source.config.hub:
        return read_hub(source.config)
    if not Path(source.name).is_file():
        raise PrepareError(f"{source.name}: source file not found")
    return read_raw_rows(source.name)


def read_hub(config: PrepareSource) -> Iterator[Record]:
    """A hub dataset by id, with the ordinary `datasets.load_dataset` call (Arrow, memory-mapped, so
    bounded memory); row i is reported as line i+1 of `<id>[<split>]`."""
    import datasets

    dataset = datasets.load_dataset(
        config.hub,
        config.name or None,
        split=config.split,
        revision=config.revision or None,
        data_files=config.data_files or None,
    )
    label = f"{config.hub}[{config.split}]"
    for index, row in enumerate(dataset):
        yield Record(label, index + 1, row)


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


# ----------------------------------------------------------------------------------- per-row verdicts


@dataclass
class Verdict:
    """What happened to one input row, already rendered to text so it travels cheaply between
    processes. `reason` None means kept (so far: duplicates and the mix are decided later)."""

    source: str  # file:line
    line: int
    reason: str | None
    detail: str
    row_json: str  # the row as read, for the rejects file
    id: str = ""
    kind: str = ""  # sft | pref
    bands: tuple[int, ...] = ()
    counted: bool = False  # whether `tokens` was counted (for the length statistics)
    tokens: int = 0
    opening: str = ""
    chat_json: str = ""  # the trainers' row (system prompt added)
    redacted: dict[str, int] = field(default_factory=dict)  # PII kind -> replacements made
    guide_json: str = ""  # the guide's Alpaca / instruction-chosen-rejected row

    def __reduce__(self) -> tuple[type[Verdict], tuple[Any, ...]]:
        """Pickled as the tuple of its fields: a worker's chunk of verdicts travels several times faster."""
        return Verdict, tuple(self.__dict__.values())


@dataclass(frozen=True)
class Judge:
    """The per-row part of prepare: normalise, scrub, filter, key, render. Pure, so it runs in workers."""

    rules: filters.Rules
    redact_pii: bool
    near_dup: tuple[int, int, int]  # (num_perm, bands, rows per band); num_perm 0 = off

    def chunk(self, items: list[RawRow], file: str, fmt: str, columns: dict[str, str], every: int) -> list[Verdict]:
        """Verdicts for a chunk of rows. Tokens are counted only where a bound cannot decide a filter, and
        for the length statistics in one of `every` kept rows (by a hash of the text); the texts to count
        go to the tokenizer in one batch, as do the kept rows' MinHash signatures."""
        read = [self.read(item, file, fmt, columns) for item in items]
        counter, texts = self.rules.tokens, []
        for verdict, sample in read:
            if sample is not None:
                own = filters.own_text(sample)
                verdict.counted = every == 1 or zlib.crc32(own.encode("utf-8")) % every == 0
                if verdict.counted or counter.at_least(own) < self.rules.min_tokens:
                    texts.append(own)
        counter.prefill(texts)
        verdicts = [(verdict, "") if sample is None else self.finish(verdict, sample) for verdict, sample in read]
        num_perm, bands, rows = self.near_dup
        kept = [(verdict, content) for verdict, content in verdicts if verdict.reason is None]
        if num_perm and kept:
            all_bands = filters.band_hashes_many([content for _, content in kept], num_perm, bands, rows)
            for (verdict, _), row_bands in zip(kept, all_bands, strict=True):
                verdict.bands = tuple(row_bands)
        return [verdict for verdict, _ in verdicts]

    def read(self, item: RawRow, file: str, fmt: str, columns: dict[str, str]) -> tuple[Verdict, Sample | None]:
        """Parse and normalise one row: a reject verdict, or a pending verdict and the sample."""
        record = item if isinstance(item, Record) else parse_jsonl_line(file, *item)
        if record.error is not None:
            error = record.error
            raw = json.dumps(error.raw, ensure_ascii=False)
            return Verdict(record.source, record.line, error.reason, str(error), raw), None
        row_json = record.raw or json.dumps(record.value, ensure_ascii=False, default=str)
        try:
            sample = normalise(record.value, fmt, columns)
        except RowRejected as err:
            return Verdict(record.source, record.line, err.reason, err.detail, row_json), None
        verdict = Verdict(record.source, record.line, None, "", row_json)
        if self.redact_pii:
            sample = filters.scrub_sample(sample, verdict.redacted)
        return verdict, sample

    def finish(self, verdict: Verdict, sample: Sample) -> tuple[Verdict, str]:
        """Run the row filters; a kept row gets its id, statistics and output lines. Returns the verdict
        and the row's normalised content (for its MinHash)."""
        failing = filters.first_failing(sample, self.rules)
        if failing is not None:
            verdict.reason, verdict.detail = failing
            return verdict, ""
        turns = filters.normalised_turns(sample)
        content = filters.content_text(sample, turns)
        verdict.id = filters.row_id(content)
        verdict.kind = "pref" if sample.is_preference else "sft"
        if verdict.counted:
            verdict.tokens = self.rules.tokens.count(filters.own_text(sample))
        verdict.opening = normalised_opening(next((text for role, text in reversed(turns) if role == "user"), ""))
        with_system = filters.with_system_prompt(sample, self.rules.system_prompt)
        verdict.chat_json = dumps({"id": verdict.id, "source": verdict.source, **to_chat(with_system)})
        verdict.guide_json = dumps(to_guide_pair(sample) if sample.is_preference else to_alpaca(sample))
        return verdict, content


OPENING_CHARS = re.compile(r"[^\s\d]{1,3}")


def opening(text: str) -> str:
    """How an instruction starts: its first two words, or its first three characters for Chinese."""
    return normalised_opening(filters.normalise_text(text))


def normalised_opening(text: str) -> str:
    words = text.split(" ")
    if len(words) > 1 and len(words[0]) <= 20 and words[0].isascii():
        return " ".join(words[:2])
    match = OPENING_CHARS.match(text)
    return match.group(0) if match else text[:3]


# ------------------------------------------------------------------ running the judge on both cores

_worker_judge: Judge | None = None


def _start_worker(judge: Judge) -> None:
    global _worker_judge
    _worker_judge = judge


def _judge_chunk(task: tuple[list[RawRow], str, str, dict[str, str], int]) -> list[Verdict]:
    assert _worker_judge is not None
    return _worker_judge.chunk(*task)


def judge_sources(
    sources: list[Source], judge: Judge, num_proc: int, formats: dict[str, str]
) -> Iterator[tuple[Source, list[Verdict]]]:
    """Verdicts for every row of every source, chunk by chunk, in input order. Sources larger than one
    chunk go to `num_proc` forked workers, with at most a few chunks in flight (bounded memory)."""
    pool = None
    try:
        for source in sources:
            rows = read_source(source)
            head = list(islice(rows, CHUNK_ROWS))
            fmt = formats[source.name] = source_format(source, head)
            log.info("%s: format %s", source.name, fmt)
            columns, source.length_every = source.column_map, length_sample_every(source, head)
            tasks = ((chunk, source.name, fmt, columns, source.length_every) for chunk in _chunks(_chain(head, rows)))
            if num_proc > 1 and len(head) == CHUNK_ROWS:
                if pool is None:
                    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # one thread per worker
                    pool = multiprocessing.get_context("fork").Pool(num_proc, _start_worker, (judge,))
                results: Iterable[list[Verdict]] = _ordered(pool, tasks, window=2 * num_proc)
            else:
                results = (judge.chunk(*task) for task in tasks)
            for verdicts in results:
                yield source, verdicts
    finally:
        if pool is not None:
            pool.terminate()


def length_sample_every(source: Source, head: list[RawRow]) -> int:
    """Token lengths for the statistics are counted in one of this many kept rows: all of them up to
    LENGTH_SAMPLE rows, then a hash sample of about that size (estimated from a JSONL file's size)."""
    lines = [raw for item in head if isinstance(item, tuple) for _, raw in [item]]
    if len(head) < CHUNK_ROWS or len(lines) < len(head):  # small, a JSON array or a hub dataset: all
        return 1
    estimated_rows = Path(source.name).stat().st_size * len(lines) / sum(len(raw) + 1 for raw in lines)
    return max(1, round(estimated_rows / LENGTH_SAMPLE))


def _chain(head: list[RawRow], rest: Iterator[RawRow]) -> Iterator[RawRow]:
    yield from head
    yield from rest


def _chunks(rows: Iterator[RawRow]) -> Iterator[list[RawRow]]:
    while chunk := list(islice(rows, CHUNK_ROWS)):
        yield chunk


def _ordered(pool: Any, tasks: Iterator[Any], window: int) -> Iterator[list[Verdict]]:
    """Like pool.imap, but reads ahead at most `window` chunks (imap would read the whole input)."""
    pending: deque[Any] = deque()
    for task in tasks:
        pending.append(pool.apply_async(_judge_chunk, (task,)))
        if len(pending) >= window:
            yield pending.popleft().get()
    while pending:
        yield pending.popleft().get()


# ------------------------------------------------------------------------------ decisions over the set


class SetDecisions:
    """Decisions that need the rows seen before, taken in input order: exact duplicates (same id),
    near-duplicates (a shared MinHash band), then each source's weight sample and cap."""

    def __init__(self, seed: int, on_error: str) -> None:
        self.seed = seed
        self.on_error = on_error
        self.ids = filters.FirstSeen()
        self.bands = filters.FirstSeen()
        # Row number -> where it came from, for rows that own a key: (source index, line), 6 bytes a row.
        self.sources: list[str] = []
        self.place_source, self.place_line = array("H"), array("L")
        self.kept_per_source: Counter[str] = Counter()

    def decide(self, source: Source, verdicts: list[Verdict]) -> None:
        if self.on_error == "stop":
            for verdict in verdicts:
                if verdict.reason in STRUCTURAL_REASONS:
                    raise DataError(verdict.detail, verdict.reason)
        kept = [v for v in verdicts if v.reason is None]
        if kept:
            self._dedup(kept)
            self._mix(source, [v for v in kept if v.reason is None])

    def _dedup(self, kept: list[Verdict]) -> None:
        """Exact and near duplicates of a chunk's rows, looked up together. A row none of whose keys is
        stored or shared with another row of the chunk is new: only the others are decided one by one,
        in input order, as each may have an earlier row of the chunk to be a duplicate of."""
        import numpy as np

        ids = np.array([int(v.id, 16) for v in kept], dtype=np.uint64)
        bands = np.array([v.bands for v in kept], dtype=np.uint64).reshape(len(kept), -1)
        stored_id = self.ids.find(ids)
        stored_bands = self.bands.find(bands.ravel()).reshape(bands.shape)
        suspects = (
            (stored_id >= 0)
            | (stored_bands >= 0).any(axis=1)
            | _repeated(ids)
            | _repeated(bands.ravel()).reshape(bands.shape).any(axis=1)
        )
        rows = self.remember(kept)
        new = np.ones(len(kept), dtype=bool)
        seen_ids: dict[int, int] = {}
        seen_bands: dict[int, int] = {}
        for i in np.flatnonzero(suspects).tolist():
            verdict, key, row_bands = kept[i], int(ids[i]), bands[i].tolist()
            earlier = int(stored_id[i]) if stored_id[i] >= 0 else seen_ids.get(key)
            if earlier is not None:
                verdict.reason, verdict.detail = "duplicate", f"same content as {self.place(earlier)}"
            else:
                stored = stored_bands[i].tolist()
                hits = (hit if hit >= 0 else seen_bands.get(band) for hit, band in zip(stored, row_bands, strict=True))
                similar = next((hit for hit in hits if hit is not None), None)
                if similar is None:
                    seen_ids[key] = int(rows[i])
                    seen_bands.update(dict.fromkeys(row_bands, int(rows[i])))
                    continue
                verdict.reason, verdict.detail = "near_duplicate", f"near-duplicate of {self.place(similar)}"
            new[i] = False
        self.ids.add(ids[new], rows[new])
        self.bands.add(bands[new].ravel(), np.repeat(rows[new], bands.shape[1]))
        self.ids.flush()
        self.bands.flush()

    def remember(self, verdicts: list[Verdict]) -> Any:
        """Row numbers for these rows, which remember where each came from."""
        import numpy as np

        first = len(self.place_line)
        name = verdicts[0].source.rsplit(":", 1)[0]  # a chunk comes from one source
        if not self.sources or self.sources[-1] != name:
            self.sources.append(name)
        self.place_source.extend([len(self.sources) - 1] * len(verdicts))
        self.place_line.extend([v.line for v in verdicts])
        return np.arange(first, len(self.place_line), dtype=np.int64)

    def place(self, row: int) -> str:
        return f"{self.sources[self.place_source[row]]}:{self.place_line[row]}"

    def _mix(self, source: Source, kept: list[Verdict]) -> None:
        weight, max_rows = source.config.weight, source.config.max_rows
        for verdict in kept:
            if weight < 1 and not filters.is_sampled(self.seed, verdict.id, weight):
                verdict.reason, verdict.detail = "not_sampled", f"outside the source's weight {weight} sample"
            elif max_rows and self.kept_per_source[source.name] >= max_rows:
                verdict.reason, verdict.detail = "over_cap", f"the source already gave max_rows {max_rows}"
            else:
                self.kept_per_source[source.name] += 1


def _repeated(keys: Any) -> Any:
    """Which keys (a uint64 array) occur more than once in it."""
    import numpy as np

    order = np.argsort(keys, kind="stable")
    same = keys[order][1:] == keys[order][:-1]
    marked = np.zeros(len(keys), dtype=bool)
    marked[1:] |= same
    marked[:-1] |= same
    repeated = np.empty(len(keys), dtype=bool)
    repeated[order] = marked
    return repeated


# ------------------------------------------------------------------------------------------- metrics


@dataclass
class Tally:
    """Counts for the summary and metrics/prepare.json: every row lands in exactly one count."""

    rows_in: Counter[str] = field(default_factory=Counter)
    kept: Counter[str] = field(default_factory=Counter)
    rejected: Counter[str] = field(default_factory=Counter)
    rejected_per_source: dict[str, Counter[str]] = field(default_factory=dict)
    openings: Counter[str] = field(default_factory=Counter)
    lengths: Counter[int] = field(default_factory=Counter)  # token length -> kept rows (estimated, see add)
    counted: int = 0  # kept rows whose token length was counted
    redacted: Counter[str] = field(default_factory=Counter)

    def add(self, source: Source, verdicts: list[Verdict]) -> None:
        self.rows_in[source.name] += len(verdicts)
        kept = [v for v in verdicts if v.reason is None]
        self.kept[source.name] += len(kept)
        self.openings.update(v.opening for v in kept)
        counted = [v.tokens for v in kept if v.counted]  # a sample of one in `length_every` rows ...
        self.counted += len(counted)
        for tokens, rows in Counter(counted).items():
            self.lengths[tokens] += rows * source.length_every  # ... stands for that many
        rejected = Counter(v.reason for v in verdicts if v.reason is not None)
        if rejected:
            self.rejected.update(rejected)
            self.rejected_per_source.setdefault(source.name, Counter()).update(rejected)
        for verdict in verdicts:
            if verdict.redacted:
                self.redacted.update(verdict.redacted)

    def summary(self, sources: list[Source], formats: dict[str, str]) -> dict[str, Any]:
        kept, near = sum(self.kept.values()), self.rejected["near_duplicate"]
        top = sorted(self.openings.items(), key=lambda kv: (-kv[1], kv[0]))[:10]
        return {
            "rows_in": sum(self.rows_in.values()),
            "kept": kept,
            "rejected": sum(self.rejected.values()),
            "rejected_by_reason": {reason: self.rejected[reason] for reason in REASONS},
            "sources": {
                source.name: {
                    "format": formats.get(source.name, ""),
                    "rows_in": self.rows_in[source.name],
                    "kept": self.kept[source.name],
                    "rejected": dict(sorted(self.rejected_per_source.get(source.name, Counter()).items())),
                }
                for source in sources
            },
            "pii_redacted": {kind: self.redacted[kind] for kind in filters.PII_PATTERNS},
            "diversity": {
                "distinct_openings": len(self.openings),
                "top_opening_share": round(top[0][1] / kept, 4) if kept else 0.0,
                "top_openings": dict(top),
                "near_duplicate_share": round(near / (kept + near), 4) if kept + near else 0.0,
                "tokens": self.token_stats(),
            },
        }

    def token_stats(self) -> dict[str, float]:
        total = sum(self.lengths.values())
        if not total:
            return {"mean": 0.0, "p10": 0, "p50": 0, "p90": 0, "max": 0, "counted_rows": 0}
        ordered = sorted(self.lengths.items())

        def quantile(q: float) -> int:
            seen = 0
            for tokens, count in ordered:
                seen += count
                if seen > q * total:
                    return tokens
            return ordered[-1][0]

        mean = sum(t * c for t, c in ordered) / total
        return {
            "mean": round(mean, 1),
            "p10": quantile(0.1),
            "p50": quantile(0.5),
            "p90": quantile(0.9),
            "max": ordered[-1][0],
            "counted_rows": self.counted,
        }


def length_buckets(lengths: Counter[int]) -> list[tuple[str, int]]:
    """Token lengths in power-of-two buckets ("64-127"), smallest first, empty buckets included."""
    counts: Counter[int] = Counter()
    for tokens, count in lengths.items():
        counts[max(tokens, 1).bit_length()] += count
    top = max(counts, default=1)
    return [(f"{2 ** (b - 1) if b > 1 else 0}-{2**b - 1}", counts[b]) for b in range(1, top + 1)]


def write_plot_data(summary: dict[str, Any], lengths: Counter[int]) -> None:
    """CSV for `dvc plots` (bar charts; rendered in the browser, where CJK fonts exist)."""
    OPENINGS_PLOT.parent.mkdir(parents=True, exist_ok=True)
    with open(OPENINGS_PLOT, "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(["opening", "rows"])
        writer.writerows(summary["diversity"]["top_openings"].items())
    with open(LENGTHS_PLOT, "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(["tokens", "rows"])
        writer.writerows(length_buckets(lengths))


def print_summary(summary: dict[str, Any]) -> None:
    print(f"rows in {summary['rows_in']} = kept {summary['kept']} + rejected {summary['rejected']}")
    for reason, count in summary["rejected_by_reason"].items():
        if count:
            print(f"  rejected {reason:<16} {count}")
    for name, count in summary.get("splits", {}).items():
        print(f"  {name:<25} {count}")


# --------------------------------------------------------------------------------------- tokenizer


class TokenizerCounter(filters.TokenCounter):
    """Token counts with the base model's tokenizer (its Rust backend: the same ids as tokenizer(text)).

    Most rows are nowhere near a limit, and token_bounds proves it from their byte length without
    tokenizing. The texts that still need counting in a chunk are counted in one batch call (prefill);
    a templated conversation is rendered and counted only when its bound could pass max_tokens."""

    def __init__(self, tokenizer_dir: Path) -> None:
        if not (tokenizer_dir / "tokenizer_config.json").is_file():
            raise PrepareError(
                f"{tokenizer_dir}: no tokenizer here; run the base stage first (dvc repro base) or pass --tokenizer DIR"
            )
        from stages.models import load_tokenizer

        self.tokenizer = load_tokenizer(tokenizer_dir)
        if not self.tokenizer.chat_template:
            raise PrepareError(f"{tokenizer_dir}: the tokenizer has no chat_template; max_tokens counts templated text")
        self.backend = self.tokenizer.backend_tokenizer
        self.bounds = token_bounds.TokenBounds.of(self.backend.to_str())
        self.skeletons = token_bounds.Skeletons(self.render)
        self.known: dict[str, int] = {}
        super().__init__(self.count, self.count_chat)

    def prefill(self, texts: list[str]) -> None:
        encodings = self.backend.encode_batch_fast(texts, add_special_tokens=False) if texts else []
        self.known = {text: len(encoding) for text, encoding in zip(texts, encodings, strict=True)}

    def count(self, text: str) -> int:
        known = self.known.get(text)
        return known if known is not None else len(self.backend.encode(text, add_special_tokens=False))

    def at_least(self, text: str) -> int:
        return self.bounds.at_least(text)

    def render(self, messages: list[Message]) -> str:
        return self.tokenizer.apply_chat_template(messages, tokenize=False)

    def count_chat(self, messages: list[Message]) -> int:
        return self.count(self.render(messages))

    def count_chat_over(self, messages: list[Message], limit: int) -> int | None:
        skeleton = self.skeletons.text(messages)
        if skeleton is not None:
            # the template's own text plus the contents; a stretch of text on each side of a special token
            text = skeleton + "".join(m["content"] for m in messages)
            most = self.bounds.at_most(text, segments=2 * len(messages) + 2)
            if most is not None and most <= limit:
                return None
        tokens = self.count_chat(messages)
        return tokens if tokens > limit else None


def make_judge(params: Prepare, counter: filters.TokenCounter) -> Judge:
    rules = filters.Rules(
        params.min_tokens, params.max_tokens, tuple(params.refusal_patterns), params.system_prompt, counter
    )
    near = (0, 0, 0)
    if params.near_dup_threshold > 0:
        near = (params.near_dup_num_perm, *filters.lsh_bands(params.near_dup_threshold, params.near_dup_num_perm))
    return Judge(rules, params.redact_pii, near)


# --------------------------------------------------------------------------------------------- runs


def decided(
    sources: list[Source], params: Prepare, judge: Judge, tally: Tally, formats: dict[str, str]
) -> Iterator[list[Verdict]]:
    """Every row's final verdict, a chunk at a time in input order, counted in `tally`; progress shows
    rows/s."""
    from tqdm import tqdm

    decisions = SetDecisions(params.seed, params.on_error)
    with tqdm(unit=" rows", desc="prepare", disable=None, smoothing=0.1) as progress:
        for source, verdicts in judge_sources(sources, judge, params.num_proc, formats):
            decisions.decide(source, verdicts)
            tally.add(source, verdicts)
            yield verdicts
            progress.update(len(verdicts))


def reject_line(verdict: Verdict) -> str:
    head = dumps({"source": verdict.source, "reason": verdict.reason, "detail": verdict.detail})
    return f'{head[:-1]},"row":{verdict.row_json}}}\n'


def run_stage(params: Prepare, counter: filters.TokenCounter | None = None) -> dict[str, Any]:
    """The DVC stage: params sources -> data/prepared/*, data/processed_data.jsonl, metrics."""
    check_params(params)
    sources = sources_from_params(params)
    judge = make_judge(params, counter or TokenizerCounter(TOKENIZER_DIR))
    tally, formats = Tally(), {}
    kept: list[tuple[str, str, str, str]] = []  # (id, split, chat row, guide row): sorted by id below
    PREPARED_DIR.mkdir(parents=True, exist_ok=True)
    with open(PREPARED_DIR / "rejects.jsonl", "w", encoding="utf-8", newline="\n") as rejects:
        for verdicts in decided(sources, params, judge, tally, formats):
            rejects.write("".join(reject_line(v) for v in verdicts if v.reason is not None))
            for verdict in verdicts:
                if verdict.reason is None:
                    split = "eval" if filters.is_eval(params.seed, verdict.id, params.eval_fraction) else "train"
                    kept.append((verdict.id, f"{verdict.kind}_{split}", verdict.chat_json, verdict.guide_json))
    kept.sort()
    for name in SPLITS:
        _write_lines(PREPARED_DIR / f"{name}.jsonl", (chat for _, split, chat, _ in kept if split == name))
    _write_lines(PROCESSED_FILE, (guide for _, split, _, guide in kept if split.startswith("sft_")))
    summary = tally.summary(sources, formats)
    summary["splits"] = {name: sum(split == name for _, split, _, _ in kept) for name in SPLITS}
    METRICS_FILE.parent.mkdir(parents=True, exist_ok=True)
    METRICS_FILE.write_text(json.dumps(summary, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    write_plot_data(summary, tally.lengths)
    return summary


def run_cli(
    params: Prepare, inputs: list[str], output: Path, fmt: str, counter: filters.TokenCounter
) -> dict[str, Any]:
    """The guide's command: every kept row to `output` in input order (guide forms), rejects beside it."""
    check_params(params)
    sources = [Source(path, "any", PrepareSource(path=path, format=fmt)) for path in inputs]
    judge = make_judge(params, counter)
    tally, formats = Tally(), {}
    output.parent.mkdir(parents=True, exist_ok=True)
    with (
        open(output, "w", encoding="utf-8", newline="\n") as out,
        open(rejects_path(output), "w", encoding="utf-8", newline="\n") as rejects,
    ):
        for verdicts in decided(sources, params, judge, tally, formats):
            out.write("".join(v.guide_json + "\n" for v in verdicts if v.reason is None))
            rejects.write("".join(reject_line(v) for v in verdicts if v.reason is not None))
    return tally.summary(sources, formats)


def rejects_path(output: Path) -> Path:
    return output.with_name(f"{output.stem}.rejects.jsonl")


def _write_lines(path: Path, lines: Iterable[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        for line in lines:
            f.write(line + "\n")


# ---------------------------------------------------------------------------------------------- CLI


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m stages.prepare",
        description="Without arguments: the DVC stage (sources and limits from params.yaml `prepare`). "
        "With --input: the guide's command, cleaning any supported file into --output; the other rules "
        "(refusal patterns, system prompt, near-dup threshold ...) come from params.yaml when it exists.",
        epilog="Formats (auto-detected per file): SFT qa {question,answer}, alpaca {instruction,input,output"
        "[,system,history]} (JSONL or JSON array), sharegpt {conversations:[{from,value}]}, openai {messages:"
        "[{role,content}]}, firefly {input,target}; preference pairs {instruction,chosen,rejected}, "
        "sharegpt_pairs {conversations,chosen,rejected}, hh_rlhf {chosen,rejected as Human/Assistant text}, "
        "ultrafeedback {prompt,chosen,rejected message lists}, ultrafeedback_raw {instruction,completions"
        "[{response,overall_score}]} (best vs worst). Exit code 2 on bad input, naming file:line.",
    )
    parser.add_argument("--input", nargs="+", metavar="FILE", help="raw data file(s), JSONL or JSON array")
    parser.add_argument(
        "--output",
        type=Path,
        metavar="OUT",
        help="kept rows (SFT in Alpaca form, preference as instruction/chosen/rejected); "
        "rejects go to <OUT stem>.rejects.jsonl",
    )
    parser.add_argument(
        "--max_length",
        type=int,
        help="max tokens of the chat-templated sample (params prepare.max_tokens; guide: 4096)",
    )
    parser.add_argument("--min_length", type=int, help="min tokens of prompt + answer (params prepare.min_tokens)")
    parser.add_argument(
        "--format",
        default="auto",
        choices=["auto", *NORMALISERS],
        help="input format (default: detected from the first row)",
    )
    parser.add_argument(
        "--on-error",
        choices=["stop", "skip"],
        help="structural errors (bad JSON, not UTF-8) stop the run (default) or become rejects",
    )
    parser.add_argument("--num-proc", type=int, help="worker processes (params prepare.num_proc)")
    parser.add_argument("--tokenizer", type=Path, default=TOKENIZER_DIR, help="tokenizer dir (default models/base)")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    if (args.input is None) != (args.output is None):
        parser.error("--input and --output go together")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(name)s: %(message)s")
    try:
        use_params_file = args.input is None or Path("params.yaml").is_file()
        params = load_params().prepare if use_params_file else Prepare()
        for name, value in (
            ("max_tokens", args.max_length),
            ("min_tokens", args.min_length),
            ("on_error", args.on_error),
            ("num_proc", args.num_proc),
        ):
            if value is not None:
                setattr(params, name, value)
        if args.input is None:
            summary = run_stage(params)
        else:
            summary = run_cli(params, args.input, args.output, args.format, TokenizerCounter(args.tokenizer))
    except (DataError, PrepareError, ParamsError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print_summary(summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
