"""Run the benchmarks and rewrite their sections of BENCHMARKS.md.

    python -m bench                                   # all of them, 3 rounds each (turnaround takes ~30 min)
    python -m bench --only runtime --only train       # some of them
    python -m bench --smoke --only prepare --output /tmp/B.md   # minimal sizes, seconds: does it still run?

Each benchmark runs its compared variants side by side in one run, alternating them round by round (--repeat
rounds), and reports medians and ratios: these machines are shared and their speed swings, so only figures
from one run compare. A run rewrites each benchmark's own section of the output file (between
`<!-- bench:NAME -->` markers) with the machine, the exact command and the figures, and prints the figures as
JSON. A --smoke run writes only where --output points.

Benchmarks: prepare (rows/s of the guide's prepare command, bench/bench_prepare.py), turnaround (a forced
`dvc repro` of the default in a temporary clone, per stage, and the no-op one), runtime (llama.cpp q4_k_m and
f16 GGUFs vs the merged HF model: prompt and generation tokens/s), train (useful tokens/s and pad share of
our SFT setup, its padding-free and packing knobs, and a plain TRL SFTTrainer), dpo (the same for our DPO setup
and a plain TRL DPOTrainer).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import logging
import shlex
import sys
from pathlib import Path

from bench.report import REPO, Options, header, machine, rewrite_section

BENCHMARKS = (
    "prepare",
    "turnaround",
    "pretrain",
    "runtime",
    "train",
    "dpo",
)  # modules bench/<name>.py, each with run(Options)


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--only", action="append", choices=BENCHMARKS, metavar="NAME", help="run NAME (repeatable)")
    parser.add_argument("--repeat", type=int, help="rounds of every variant; medians are reported (default 3; smoke 1)")
    parser.add_argument("--smoke", action="store_true", help="minimal sizes (seconds): checks that it runs")
    parser.add_argument("--output", type=Path, help="the file whose sections are rewritten (default BENCHMARKS.md)")
    parser.add_argument(
        "--workspace", type=Path, default=Path.cwd(), help="where the pipeline ran: models/, data/prepared/ (default .)"
    )
    parser.add_argument("--rows", type=int, help="prepare: generated rows (default 1100000; smoke 2000)")
    parser.add_argument("--compare", type=Path, metavar="DIR", help="prepare: another checkout, run alternately")
    parser.add_argument("--baseline", metavar="REF", help="turnaround: also a commit/branch to compare, alternately")
    parser.add_argument("--train-model", type=Path, help="train: model dir (default: a Qwen2.5-shaped one, built)")
    parser.add_argument("--train-steps", type=int, help="train, dpo: optimizer steps per run (default 20; smoke 2)")
    parser.add_argument("--max-new-tokens", type=int, help="runtime: tokens generated per prompt (default 64)")
    parser.add_argument("--prompts", type=int, help="runtime: held-out questions per round (default 8)")
    parser.add_argument("--threads", type=int, help="runtime: llama.cpp and torch threads (default: every core)")
    args = parser.parse_args(argv)
    if args.repeat is None:
        args.repeat = 1 if args.smoke else 3
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    typed = ["python", "-m", "bench", *(sys.argv[1:] if argv is None else argv)]
    own = ("rows", "compare", "baseline", "train_model", "train_steps", "max_new_tokens", "prompts", "threads")
    extra = {key: value for key, value in vars(args).items() if key in own and value is not None}
    options = Options(args.workspace.resolve(), args.repeat, args.smoke, shlex.join(typed), extra)
    output = args.output or (None if args.smoke else REPO / "BENCHMARKS.md")
    figures = {}
    for name in args.only or BENCHMARKS:
        info = machine()
        with contextlib.redirect_stdout(sys.stderr):  # the trainers print their logs: stdout stays the JSON
            result = importlib.import_module(f"bench.{name}").run(options)
        figures[name] = {"machine": info, **result.figures}
        if output:
            rewrite_section(output, name, header(options, info) + "\n" + result.markdown)
    print(json.dumps(figures, ensure_ascii=False, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
