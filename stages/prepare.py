"""Stage prepare: raw conversation data -> cleaned, filtered, deduplicated, split SFT and preference sets.

Reads   params `prepare` (sources, limits, patterns), the source files under data/raw/ (or hub datasets),
        and the base model's tokenizer in models/base/ (token counts and the chat template); with
        selfinstruct.enabled, also data/selfinstruct/review.jsonl (the reviewed pairs: accepted and edited
        ones, or every one not rejected when selfinstruct.require_review is false).
Writes  data/prepared/{sft_train,sft_eval,pref_train,pref_eval}.jsonl  (TRL conversational form, by id)
        data/prepared/rejects.jsonl    every row that was not kept: source file:line, reason, detail, row
        data/processed_data.jsonl      every kept SFT row in the guide's Alpaca form
        metrics/prepare.json           rows in = kept + rejected per reason, per source; diversity report
        metrics/prepare_openings.csv   plot data (dvc plots): most common instruction openings
        metrics/prepare_lengths.csv    plot data (dvc plots): kept samples per token-length bucket

Also the guide's standalone command (section 2.2), for any supported format:
    python -m stages.prepare --input raw_data.jsonl --output data/processed_data.jsonl --max_length 2048
which writes every kept row to --output (input order) and the rejects to <output stem>.rejects.jsonl.
The library behind it is ta/data/ (ta/data/prepare.py runs it).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
from pathlib import Path

from ta import libraries, paths
from ta.config import SourceFormat, choices, load_params, load_project_params, validated
from ta.errors import report


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
        choices=choices(SourceFormat),
        help="input format (default: detected from the first row)",
    )
    parser.add_argument(
        "--on-error",
        choices=["stop", "skip"],
        help="structural errors (bad JSON, not UTF-8) stop the run (default) or become rejects",
    )
    parser.add_argument("--num-proc", type=int, help="worker processes (params prepare.num_proc)")
    parser.add_argument("--tokenizer", type=Path, default=paths.BASE_DIR, help="tokenizer dir (default models/base)")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    if (args.input is None) != (args.output is None):
        parser.error("--input and --output go together")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(name)s: %(message)s")

    def body() -> None:
        if args.input is None:  # the DVC stage, not the guide's CLI on the user's own files
            libraries.check("prepare")
        from ta.data.prepare import run_cli, run_stage
        from ta.data.stats import print_summary
        from ta.data.tokens import TokenizerCounter
        from ta.selfinstruct.review import taken_statuses, with_review_file

        loaded = load_params() if args.input is None else load_project_params()
        params = with_review_file(loaded.prepare, loaded.selfinstruct) if args.input is None else loaded.prepare
        overrides = {
            "max_tokens": args.max_length,
            "min_tokens": args.min_length,
            "on_error": args.on_error,
            "num_proc": args.num_proc,
        }
        params = dataclasses.replace(params, **{k: v for k, v in overrides.items() if v is not None})
        params = validated(params, "command line", "prepare")
        if args.input is None:
            summary = run_stage(params, review_statuses=taken_statuses(loaded.selfinstruct.require_review))
        else:
            summary = run_cli(params, args.input, args.output, args.format, TokenizerCounter(args.tokenizer))
        print_summary(summary)

    return report("prepare", body)


if __name__ == "__main__":
    sys.exit(main())
