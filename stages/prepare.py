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
weight and cap -> written to an output or to the rejects file with its reason code. The per-row part is
stages/judging.py, the decisions over the set and the counts stages/tally.py.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import multiprocessing
import os
import sys
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, field, fields
from itertools import chain
from pathlib import Path
from typing import Any

from stages import filters
from stages.data import DataError, LineBlock, RawRow, Record, chunked, dumpb, parse_jsonl_line, read_chunks
from stages.formats import NORMALISERS, detect_format, is_preference_format
from stages.judging import Judge, PrepareError, TokenizerCounter, Verdicts, make_judge
from stages.params import ParamsError, Prepare, PrepareSource, load_params
from stages.tally import SetDecisions, Tally, print_summary, write_plot_data

log = logging.getLogger("prepare")

TOKENIZER_DIR = Path("models/base")
PREPARED_DIR = Path("data/prepared")
PROCESSED_FILE = Path("data/processed_data.jsonl")
METRICS_FILE = Path("metrics/prepare.json")
OPENINGS_PLOT = Path("metrics/prepare_openings.csv")
LENGTHS_PLOT = Path("metrics/prepare_lengths.csv")
SPLITS = ("sft_train", "sft_eval", "pref_train", "pref_eval")
CHUNK_ROWS = 2000  # lines per task sent to a worker; a source of one chunk is done in-process
LENGTH_SAMPLE = 20_000  # kept rows per source whose token length the statistics count (at least)

# ------------------------------------------------------------------------------------------- sources


@dataclass
class Source:
    """One input, resolved from params or the command line."""

    name: str  # file path or hub id: what rejects and metrics call it
    kind: str  # sft | preference | any (the CLI takes both)
    config: PrepareSource = field(default_factory=PrepareSource)
    length_every: int = 1  # token lengths counted in one of this many rows (length_sample_every)
    expected_rows: int = 0  # estimated from a large JSONL file's size (0: not estimated)

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


# ------------------------------------------------------------------ running the judge on both cores

_worker_judge: Judge | None = None


def _start_worker(judge: Judge) -> None:
    global _worker_judge
    _worker_judge = judge


def _judge_chunk(*task: Any) -> Verdicts:
    assert _worker_judge is not None
    return _worker_judge.chunk(*task)


def judge_sources(
    sources: list[Source], judge: Judge, num_proc: int, formats: dict[str, str]
) -> Iterator[tuple[Source, Verdicts]]:
    """Verdicts for every row of every source, chunk by chunk, in input order. Sources larger than one
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
            fmt = formats[source.name] = source_format(source, head)
            log.info("%s: format %s", source.name, fmt)
            source.expected_rows = expected_rows(source, head)
            columns, source.length_every = source.column_map, length_sample_every(source, head)
            tasks = ((chunk, source.name, fmt, columns, source.length_every) for chunk in chain(opening, chunks))
            if num_proc > 1 and len(opening) > 1:
                if pool is None:
                    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # one thread per worker
                    filters.normalise_texts([])  # builds its character tables once, before the fork
                    # what exists now lives as long as the run: out of the collector's way (fewer, shorter
                    # collections in every process, and the workers' copies of these pages stay shared)
                    gc.freeze()
                    pool = ProcessPoolExecutor(num_proc, multiprocessing.get_context("fork"), _start_worker, (judge,))
                results: Iterable[Verdicts] = _ordered(pool, tasks, window=2 * num_proc)
            else:
                results = (judge.chunk(*task) for task in tasks)
            for verdicts in results:
                yield source, verdicts
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
            gc.unfreeze()


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


def _ordered(pool: ProcessPoolExecutor, tasks: Iterator[Any], window: int) -> Iterator[Verdicts]:
    """Like pool.map, but reads ahead at most `window` chunks (map would read the whole input)."""
    pending: deque[Future[Verdicts]] = deque()
    for task in tasks:
        pending.append(pool.submit(_judge_chunk, *task))
        if len(pending) >= window:
            yield pending.popleft().result()
    while pending:
        yield pending.popleft().result()


# --------------------------------------------------------------------------------------------- runs


def decided(
    sources: list[Source], params: Prepare, judge: Judge, tally: Tally, formats: dict[str, str]
) -> Iterator[Verdicts]:
    """Every row's final verdict, a chunk at a time in input order, counted in `tally`; progress shows
    rows/s."""
    from tqdm import tqdm

    decisions = SetDecisions(params.seed, params.on_error)
    with tqdm(unit=" rows", desc="prepare", disable=None, smoothing=0.1) as progress:
        for source, verdicts in judge_sources(sources, judge, params.num_proc, formats):
            decisions.decide(source, verdicts)
            tally.add(source, verdicts)
            yield verdicts
            progress.update(len(verdicts.lines))


def reject_lines(verdicts: Verdicts) -> bytes:
    """The rejects file's lines for a chunk: where, why, and the row as read."""
    lines = []
    for i in verdicts.rejected():
        head = dumpb({"source": verdicts.source(i), "reason": verdicts.reasons[i], "detail": verdicts.details[i]})
        lines += [head[:-1], b',"row":', verdicts.rows[i], b"}\n"]
    return b"".join(lines)


def run_stage(params: Prepare, counter: filters.TokenCounter | None = None) -> dict[str, Any]:
    """The DVC stage: params sources -> data/prepared/*, data/processed_data.jsonl, metrics."""
    check_params(params)
    sources = sources_from_params(params)
    judge = make_judge(params, counter or TokenizerCounter(TOKENIZER_DIR))
    tally, formats = Tally(), {}
    kept: list[tuple[str, str, bytes, bytes]] = []  # (id, split, chat row, guide row): sorted by id below
    PREPARED_DIR.mkdir(parents=True, exist_ok=True)
    with open(PREPARED_DIR / "rejects.jsonl", "wb") as rejects:
        for verdicts in decided(sources, params, judge, tally, formats):
            rejects.write(reject_lines(verdicts))
            for k in verdicts.still:
                row_id = verdicts.ids[k]
                split = "eval" if filters.is_eval(params.seed, row_id, params.eval_fraction) else "train"
                kept.append((row_id, f"{verdicts.kinds[k]}_{split}", verdicts.chat[k], verdicts.guide[k]))
    kept.sort()
    for name in SPLITS:
        _write_lines(PREPARED_DIR / f"{name}.jsonl", (chat for _, split, chat, _ in kept if split == name))
    _write_lines(PROCESSED_FILE, (guide for _, split, _, guide in kept if split.startswith("sft_")))
    summary = tally.summary(sources, formats)
    summary["splits"] = {name: sum(split == name for _, split, _, _ in kept) for name in SPLITS}
    METRICS_FILE.parent.mkdir(parents=True, exist_ok=True)
    METRICS_FILE.write_text(json.dumps(summary, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    write_plot_data(summary, tally.lengths, OPENINGS_PLOT, LENGTHS_PLOT)
    return summary


def run_cli(
    params: Prepare, inputs: list[str], output: Path, fmt: str, counter: filters.TokenCounter
) -> dict[str, Any]:
    """The guide's command: every kept row to `output` in input order (guide forms), rejects beside it."""
    check_params(params)
    sources = [Source(path, "any", PrepareSource(path=path, format=fmt)) for path in inputs]
    judge = make_judge(params, counter, guide_only=True)
    tally, formats = Tally(), {}
    output.parent.mkdir(parents=True, exist_ok=True)
    with open(output, "wb") as out, open(rejects_path(output), "wb") as rejects:
        for verdicts in decided(sources, params, judge, tally, formats):
            out.write(b"".join([verdicts.guide[k] for k in verdicts.still]))
            rejects.write(reject_lines(verdicts))
    return tally.summary(sources, formats)


def rejects_path(output: Path) -> Path:
    return output.with_name(f"{output.stem}.rejects.jsonl")


def _write_lines(path: Path, lines: Iterable[bytes]) -> None:
    """JSON lines (each ends with its \\n) to a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        f.writelines(lines)


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
