"""prepare, the whole run: sources in; kept rows, rejects and the accounting out.

How a row travels: read (JSONL lines stream; a JSON array is parsed element by element) -> in worker
processes: parse, normalise to the internal conversation form, scrub PII, run the row filters, compute
its id and MinHash bands (ta/data/rows.py) -> in this process, in input order: exact and near duplicates
(ta/data/dedup.py), per-source weight and cap (ta/data/mix.py) -> written to an output or to the rejects
file with its reason code, and counted (ta/data/stats.py).
"""

from __future__ import annotations

import gc
import json
import logging
import multiprocessing
import os
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from itertools import chain
from pathlib import Path
from typing import Any

from ta import paths
from ta.config import Prepare, PrepareSource
from ta.data.dedup import Deduplicator
from ta.data.formats import REVIEWED
from ta.data.io import LineBlock, RawRow, dumpb
from ta.data.mix import SourceMix
from ta.data.normalise import normalise_texts
from ta.data.rows import RowDecisions, RowProcessor, make_row_processor
from ta.data.sources import (
    Chunk,
    Source,
    expected_rows,
    length_sample_every,
    read_source,
    source_format,
    sources_from_params,
)
from ta.data.split import is_eval
from ta.data.stats import STRUCTURAL_REASONS, PrepareStats, write_plot_data
from ta.data.tokens import TokenCounter, TokenizerCounter
from ta.errors import DataError, PrepareError
from ta.files import open_atomically, write_atomically

log = logging.getLogger("prepare")

SPLITS = ("sft_train", "sft_eval", "pref_train", "pref_eval")
SPLIT_FILES = {
    "sft_train": paths.SFT_TRAIN,
    "sft_eval": paths.SFT_EVAL,
    "pref_train": paths.PREF_TRAIN,
    "pref_eval": paths.PREF_EVAL,
}

# ------------------------------------------------------------------ running the rows on both cores

_worker_processor: RowProcessor | None = None


def _start_worker(processor: RowProcessor) -> None:
    global _worker_processor
    _worker_processor = processor


def _process_chunk(*task: Any) -> RowDecisions:
    assert _worker_processor is not None
    return _worker_processor.process_chunk(*task)


def process_sources(
    sources: list[Source], processor: RowProcessor, num_proc: int, formats: dict[str, str]
) -> Iterator[tuple[Source, RowDecisions]]:
    """Decisions for every row of every source, chunk by chunk, in input order. Sources larger than one
    chunk go to `num_proc` forked workers, with at most a few chunks in flight (bounded memory).

    concurrent.futures' pool rather than multiprocessing.Pool: the latter's worker-watching thread wakes
    whenever a result is waiting in the pipe, and spins while a large one is being read (~5 % of the CPU
    here)."""
    pool = None
    try:
        for source in sources:
            chunks = read_source(source)
            opening: list[Chunk] = []  # chunks up to the first with rows (and one more: is there more?)
            head: list[RawRow] = []
            while (len(opening) < 2 or not head) and (chunk := next(chunks, None)) is not None:
                opening.append(chunk)
                head = head or (chunk.rows() if isinstance(chunk, LineBlock) else chunk)
            if not head:
                raise PrepareError(
                    f"{source.name}: no rows (the source is empty); fill it or remove it from the sources"
                )
            fmt = formats[source.name] = source.format = source_format(source, head)
            log.info("%s: format %s", source.name, fmt)
            source.expected_rows = expected_rows(source, head)
            columns, source.length_every = source.column_map, length_sample_every(source, head)
            tasks = ((chunk, source.name, fmt, columns, source.length_every) for chunk in chain(opening, chunks))
            if num_proc > 1 and len(opening) > 1:
                if pool is None:
                    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # one thread per worker
                    normalise_texts([])  # builds its character tables once, before the fork
                    # what exists now lives as long as the run: out of the collector's way (fewer, shorter
                    # collections in every process, and the workers' copies of these pages stay shared)
                    gc.freeze()
                    pool = ProcessPoolExecutor(
                        num_proc, multiprocessing.get_context("fork"), _start_worker, (processor,)
                    )
                results: Iterable[RowDecisions] = _ordered(pool, tasks, window=2 * num_proc)
            else:
                results = (processor.process_chunk(*task) for task in tasks)
            for decisions in results:
                yield source, decisions
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
            gc.unfreeze()


def _ordered(pool: ProcessPoolExecutor, tasks: Iterator[Any], window: int) -> Iterator[RowDecisions]:
    """Like pool.map, but reads ahead at most `window` chunks (map would read the whole input)."""
    pending: deque[Future[RowDecisions]] = deque()
    for task in tasks:
        pending.append(pool.submit(_process_chunk, *task))
        if len(pending) >= window:
            yield pending.popleft().result()
    while pending:
        yield pending.popleft().result()


# ------------------------------------------------------------------------------- over the whole set


class SetDecisions:
    """Decisions that need the rows seen before, taken in input order: structural errors under
    `on_error: stop`, exact and near duplicates, then each source's weight sample and cap."""

    def __init__(self, seed: int, on_error: str) -> None:
        self.on_error = on_error
        self.dedup = Deduplicator()
        self.mix = SourceMix(seed)
        self.reserved: set[str] = set()

    def decide(self, source: Source, decisions: RowDecisions) -> None:
        if self.on_error == "stop":
            for i, reason in enumerate(decisions.reject_reasons):
                if reason in STRUCTURAL_REASONS:
                    raise DataError(decisions.details[i], reason)
        if source.expected_rows and source.name not in self.reserved:  # room for its keys, grown once
            self.reserved.add(source.name)
            self.dedup.reserve(source.expected_rows, decisions.bands.shape[1] if decisions.bands is not None else 0)
        if decisions.passed:
            duplicates = self.dedup.reject_duplicates(decisions)
            self.mix.apply(source.name, source.config, decisions, len(decisions.passed) - duplicates)
        decisions.kept = decisions.passing()


# --------------------------------------------------------------------------------------------- runs


def decided(
    sources: list[Source], params: Prepare, processor: RowProcessor, stats: PrepareStats, formats: dict[str, str]
) -> Iterator[RowDecisions]:
    """Every row's final decision, a chunk at a time in input order, counted in `stats`; progress shows
    rows/s."""
    from tqdm import tqdm

    over_set = SetDecisions(params.seed, params.on_error)
    with tqdm(unit=" rows", desc="prepare", disable=None, smoothing=0.1) as progress:
        for source, decisions in process_sources(sources, processor, params.num_proc, formats):
            over_set.decide(source, decisions)
            stats.add(source, decisions)
            yield decisions
            progress.update(len(decisions.lines))


def reject_lines(decisions: RowDecisions) -> bytes:
    """The rejects file's lines for a chunk: where, why, and the row as read."""
    lines = []
    for i in decisions.rejected():
        head = dumpb(
            {"source": decisions.source(i), "reason": decisions.reject_reasons[i], "detail": decisions.details[i]}
        )
        lines += [head[:-1], b',"row":', decisions.rows[i], b"}\n"]
    return b"".join(lines)


def run_stage(
    params: Prepare, counter: TokenCounter | None = None, review_statuses: tuple[str, ...] = REVIEWED
) -> dict[str, Any]:
    """The DVC stage: params sources -> data/prepared/*, data/processed_data.jsonl, metrics. From a
    `selfinstruct` source (the review file) only rows of `review_statuses` are taken."""
    sources = sources_from_params(params)
    processor = make_row_processor(params, counter or TokenizerCounter(paths.BASE_DIR), review_statuses=review_statuses)
    stats, formats = PrepareStats(), {}
    kept: list[tuple[str, str, bytes, bytes]] = []  # (id, split, chat row, guide row): sorted by id below
    # every output goes to a temp file and replaces the old one only when whole (ta/files.py); the rejects
    # file last of the data files, after the splits passed their check
    with open_atomically(paths.REJECTS) as rejects:
        for decisions in decided(sources, params, processor, stats, formats):
            rejects.write(reject_lines(decisions))
            for k in decisions.kept:
                row_id = decisions.ids[k]
                split = "eval" if is_eval(params.seed, row_id, params.eval_fraction) else "train"
                kept.append((row_id, f"{decisions.kinds[k]}_{split}", decisions.chat[k], decisions.guide[k]))
        kept.sort()
        splits = {name: sum(split == name for _, split, _, _ in kept) for name in SPLITS}
        check_splits(splits, sources, params.eval_fraction)
        for name in SPLITS:
            _write_lines(SPLIT_FILES[name], (chat for _, split, chat, _ in kept if split == name))
        _write_lines(paths.PROCESSED_FILE, (guide for _, split, _, guide in kept if split.startswith("sft_")))
    summary = stats.summary(sources, formats)
    summary["splits"] = splits
    # the totals are the metrics `dvc exp show` and `dvc metrics diff` compare; the per-source counts (a column
    # per source and reason) go to their own tracked file, which is not a metric
    totals = {key: value for key, value in summary.items() if key != "sources"}
    write_atomically(paths.PREPARE_METRICS, json.dumps(totals, ensure_ascii=False, indent=2) + "\n")
    per_source = {"sources": summary["sources"]}
    write_atomically(paths.PREPARE_SOURCES, json.dumps(per_source, ensure_ascii=False, indent=2) + "\n")
    write_plot_data(summary, stats.lengths, paths.OPENINGS_PLOT, paths.LENGTHS_PLOT)
    return summary


def check_splits(splits: dict[str, int], sources: list[Source], eval_fraction: float) -> None:
    """Each kind of data with sources has rows on both sides of the split: sft and dpo evaluate on the
    held-out rows, gguf probes parity and eval measures on them; an empty split would stop them only after
    training."""
    for kind, listed in (("sft", "sft_sources"), ("pref", "preference_sources")):
        train, held_out = splits[f"{kind}_train"], splits[f"{kind}_eval"]
        if not any(source.kind == ("sft" if kind == "sft" else "preference") for source in sources):
            continue
        if train + held_out == 0:
            raise PrepareError(
                f"{SPLIT_FILES[f'{kind}_train']}: no rows kept from prepare.{listed}; "
                f"see {paths.REJECTS} for why each was rejected"
            )
        if held_out == 0 or train == 0:
            empty = f"{kind}_eval" if held_out == 0 else f"{kind}_train"
            change = "raise" if held_out == 0 else "lower"
            raise PrepareError(
                f"{SPLIT_FILES[empty]}: the {empty} split is empty ({train + held_out} {kind} rows kept, "
                f"prepare.eval_fraction {eval_fraction:g}); {change} prepare.eval_fraction or add rows to "
                f"prepare.{listed}"
            )


def run_cli(params: Prepare, inputs: list[str], output: Path, fmt: str, counter: TokenCounter) -> dict[str, Any]:
    """The guide's command: every kept row to `output` in input order (guide forms), rejects beside it."""
    refuse_overwriting_inputs(inputs, [output, rejects_path(output)])
    sources = [Source(path, "any", PrepareSource(path=path, format=fmt)) for path in inputs]
    processor = make_row_processor(params, counter, guide_only=True)
    stats, formats = PrepareStats(), {}
    with open_atomically(output) as out, open_atomically(rejects_path(output)) as rejects:
        for decisions in decided(sources, params, processor, stats, formats):
            out.write(b"".join([decisions.guide[k] for k in decisions.kept]))
            rejects.write(reject_lines(decisions))
    return stats.summary(sources, formats)


def refuse_overwriting_inputs(inputs: list[str], outputs: list[Path]) -> None:
    """Stop before anything is opened for writing when an output is one of the inputs: the same path, or the
    same file through a symlink, `..` or a hard link. Opening it for writing would empty the input."""
    for output in outputs:
        for name in inputs:
            source = Path(name)
            same = output.resolve() == source.resolve()
            if not same and output.exists() and source.exists():
                same = os.path.samefile(output, source)
            if same:
                raise PrepareError(
                    f"{output}: this output is the input {name}; writing it would destroy the input. "
                    "Choose another --output (the rejects go to <output stem>.rejects.jsonl)"
                )


def rejects_path(output: Path) -> Path:
    return output.with_name(f"{output.stem}.rejects.jsonl")


def _write_lines(path: Path, lines: Iterable[bytes]) -> None:
    """JSON lines (each ends with its \\n) to a file, whole or not at all."""
    with open_atomically(path) as f:
        f.writelines(lines)
