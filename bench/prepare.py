"""Benchmark `prepare`: rows/s of the guide's prepare command on a generated Firefly-sized file.

Reads  data/raw (clauses for the generated rows) of this checkout; <workspace>/models/base (the tokenizer)

bench/bench_prepare.py does the measuring (and keeps its own command line): this checkout, and with
--compare DIR another checkout on the same file, alternately, `--repeat` runs each.
"""

from __future__ import annotations

from bench.bench_prepare import measure
from bench.report import REPO, Options, Result, ratio, table
from ta import paths


def run(options: Options) -> Result:
    rows = options.extra.get("rows") or (2_000 if options.smoke else 1_100_000)
    compare = options.extra.get("compare")
    report = measure(
        rows,
        str(options.workspace / paths.BASE_DIR),
        repeat=options.repeat,
        compare=compare,
        raw_dir=REPO / paths.RAW_DIR,
        this=REPO,
    )
    checkouts = ["this", *(["compare"] if compare else [])]
    lines = [
        (
            name if name == "this" else f"compare ({report[name]['checkout']})",
            f"**{report[name]['rows_per_s_median']:,}** ({report[name]['rows_per_s_best']:,})",
            f"{ratio(report[name]['rows_per_s_median'], report['this']['rows_per_s_median']):.2f}×",
            f"{report[name]['cpu_us_per_row_median']} µs",
            f"{report[name]['peak_pss_sum_mib']:,} MiB",
            f"{report[name]['peak_rss_sum_mib']:,} MiB",
            ", ".join(f"{s} s" for s in report[name]["prepare_s"]),
        )
        for name in checkouts
    ]
    markdown = (
        f"{rows:,} generated rows ({report['input_mib']} MiB), `num_proc` {report['num_proc']}, "
        f"{options.repeat} run(s) per checkout, alternating; end to end (process start and imports included). "
        f"Summary: {report['this']['summary'][0]}.\n\n"
        + table(
            (
                "checkout",
                "rows/s median (best)",
                "vs this",
                "CPU per row",
                "peak PSS (all processes)",
                "peak RSS sum",
                "runs",
            ),
            lines,
        )
    )
    return Result(markdown, report)
