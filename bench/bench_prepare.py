"""Benchmark: the guide's prepare command on a generated Firefly-sized file (1.1 M rows).

    python bench/bench_prepare.py [--rows 1100000] [--tokenizer models/base] [--repeat N] [--compare DIR]

Writes a JSONL file in Firefly's layout ({"kind", "input", "target"}): Chinese rows made of random
clauses of the shipped data/raw text (so the tokenizer sees real words), with a sprinkling of damage
(exact duplicates, empty answers, refusals, bad JSON); runs the guide's command on it,
`python -m stages.prepare --input F --output OUT --max_length 2048 --on-error skip`, and reports rows/s
end to end, the CPU time it used, and the peak memory of the whole process tree (the main process
plus its workers, sampled from /proc). Prints one JSON object; timings never go into tracked files.
`python -m bench --only prepare` runs the same measurement and writes its section of BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

KINDS = ["ClassicalChinese", "Couplet", "MusicComment", "Composition", "NER", "Summary", "BELLE", "MRC"]
CLAUSE_END = re.compile(r"(?<=[。！？；\n])")


def clause_pool(raw_dir: Path) -> list[str]:
    """Clauses of the shipped Chinese raw data: generated rows read like real text to the tokenizer."""
    clauses = []
    for path in sorted(raw_dir.glob("*.jsonl")):
        for line in path.read_text(encoding="utf-8").splitlines():
            for value in json.loads(line).values():
                if isinstance(value, str):
                    clauses += [c.strip() for c in CLAUSE_END.split(value) if len(c.strip()) > 3]
    return sorted(set(clauses))


def generate(path: Path, rows: int, clauses: list[str], seed: int = 0) -> None:
    """Firefly's layout; about 2% exact duplicates, 1% empty answers, 0.5% refusals, 0.5% broken JSON."""
    rng = random.Random(seed)
    recent: list[str] = []
    with open(path, "w", encoding="utf-8") as f:
        for i in range(rows):
            roll = rng.random()
            if roll < 0.02 and recent:
                f.write(rng.choice(recent))
                continue
            if roll < 0.025:
                f.write('{"kind": "NER", "input": "broken\n')
                continue
            question = "".join(rng.choices(clauses, k=rng.randint(1, 2)))
            answer = "".join(rng.choices(clauses, k=rng.randint(3, 8)))
            if roll < 0.035:
                answer = "   "
            elif roll < 0.04:
                answer = "作为一个AI语言模型，" + answer
            line = json.dumps({"kind": rng.choice(KINDS), "input": question, "target": answer}, ensure_ascii=False)
            f.write(line + "\n")
            if i % 97 == 0:
                recent = [*recent[-50:], line + "\n"]


def peak_tree_memory(pid: int, stop: threading.Event, result: list[tuple[int, int]]) -> None:
    """Largest sums of RSS and of PSS (shared pages divided among the processes sharing them: forked
    workers share most of the parent's memory) over the process and its descendants, every 0.5 s."""
    peak_rss = peak_pss = 0
    while not stop.is_set():
        rss = pss = 0
        for p in [pid, *_descendants(pid)]:
            try:
                for line in Path(f"/proc/{p}/smaps_rollup").read_text().splitlines():
                    if line.startswith("Rss:"):
                        rss += int(line.split()[1]) * 1024
                    elif line.startswith("Pss:"):
                        pss += int(line.split()[1]) * 1024
            except OSError:
                continue
        peak_rss, peak_pss = max(peak_rss, rss), max(peak_pss, pss)
        time.sleep(0.5)
    result.append((peak_rss, peak_pss))


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _descendants(pid: int) -> list[int]:
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return []
    found = [int(c) for c in children]
    for child in list(found):
        found += _descendants(child)
    return found


def run_prepare(cwd: Path, raw: Path, out: Path, tokenizer: str, num_proc: int) -> dict[str, float]:
    """One run of the guide's command in `cwd` (this checkout, or another one to compare with)."""
    command = [
        sys.executable,
        "-m",
        "stages.prepare",
        "--input",
        str(raw),
        "--output",
        str(out),
        "--max_length",
        "2048",
        "--on-error",
        "skip",
        "--tokenizer",
        str(Path(tokenizer).resolve()),
        "--num-proc",
        str(num_proc),
    ]
    started, cpu_before = time.perf_counter(), _children_cpu()
    process = subprocess.Popen(command, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    stop, peak = threading.Event(), []
    sampler = threading.Thread(target=peak_tree_memory, args=(process.pid, stop, peak))
    sampler.start()
    stdout, stderr = process.communicate()
    elapsed = time.perf_counter() - started
    cpu = _children_cpu() - cpu_before  # the prepare process and its workers, user + system
    stop.set()
    sampler.join()
    if process.returncode != 0:
        sys.exit(f"prepare in {cwd} failed ({process.returncode}): {stderr[-2000:]}")
    return {
        "prepare_s": elapsed,
        "cpu_s": cpu,
        "peak_rss_sum_mib": peak[0][0] / 2**20,
        "peak_pss_sum_mib": peak[0][1] / 2**20,
        "summary": stdout.strip().splitlines(),
    }


def measure(
    rows: int,
    tokenizer: str,
    num_proc: int = 2,
    repeat: int = 1,
    compare: Path | None = None,
    keep: Path | None = None,
    raw_dir: Path = Path("data/raw"),
    this: Path | None = None,
) -> dict[str, Any]:
    """Generate the file, run prepare on it `repeat` times in this checkout (and in `compare`, alternately),
    and report rows/s, CPU per row and peak memory (medians over the runs)."""
    with tempfile.TemporaryDirectory() as tmp:
        folder = keep or Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        raw, out = folder / "firefly_bench.jsonl", folder / "processed.jsonl"
        started = time.perf_counter()
        generate(raw, rows, clause_pool(raw_dir))
        generated = time.perf_counter() - started
        checkouts = {"this": this or Path.cwd(), **({"compare": compare.resolve()} if compare else {})}
        runs: dict[str, list[dict[str, Any]]] = {name: [] for name in checkouts}
        for _ in range(repeat):
            for name, cwd in checkouts.items():
                runs[name].append(run_prepare(cwd, raw, out, tokenizer, num_proc))
        report: dict[str, Any] = {
            "rows": rows,
            "input_mib": round(raw.stat().st_size / 2**20, 1),
            "generate_s": round(generated, 1),
            "num_proc": num_proc,
        }
    for name, results in runs.items():
        seconds = statistics.median(r["prepare_s"] for r in results)
        cpu = statistics.median(r["cpu_s"] for r in results)
        report[name] = {
            "checkout": str(checkouts[name]),
            "prepare_s": [round(r["prepare_s"], 1) for r in results],
            "rows_per_s_median": round(rows / seconds),
            "rows_per_s_best": round(rows / min(r["prepare_s"] for r in results)),
            "cpu_us_per_row_median": round(cpu / rows * 1e6),
            "peak_rss_sum_mib": round(max(r["peak_rss_sum_mib"] for r in results)),
            "peak_pss_sum_mib": round(max(r["peak_pss_sum_mib"] for r in results)),
            "summary": results[-1]["summary"],
        }
    if compare:
        report["speedup_median"] = round(
            report["this"]["rows_per_s_median"] / report["compare"]["rows_per_s_median"], 2
        )
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_100_000)
    parser.add_argument("--tokenizer", default="models/base")
    parser.add_argument("--num-proc", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=1, help="runs of each checkout; medians are reported")
    parser.add_argument(
        "--compare",
        type=Path,
        metavar="DIR",
        help="another checkout (e.g. `git worktree add /tmp/base <rev>`) run on the same file, alternately",
    )
    parser.add_argument("--keep", type=Path, help="write the files here instead of a temporary folder")
    args = parser.parse_args()
    report = measure(args.rows, args.tokenizer, args.num_proc, args.repeat, args.compare, args.keep)
    print(json.dumps(report, ensure_ascii=False, indent=2))


if __name__ == "__main__":
    main()
