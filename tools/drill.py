"""Write the drill sets shipped in data/raw/ (ta/data/drill.py makes the rows).

    python -m tools.drill --seed 1234 --sft 600 --pairs 150

rewrites data/raw/sft_drill.jsonl and data/raw/preference_drill.jsonl byte for byte.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

from ta.data.drill import preference_rows, sft_rows


def write_jsonl(path: Path, rows: list[dict[str, str]]) -> None:
    with path.open("w", encoding="utf-8", newline="\n") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--sft", type=int, default=600, help="number of SFT drill rows")
    parser.add_argument("--pairs", type=int, default=150, help="number of preference drill pairs")
    parser.add_argument("--out-dir", type=Path, default=Path("data/raw"))
    args = parser.parse_args()
    rng = random.Random(args.seed)
    sft = sft_rows(args.sft, rng)
    pairs = preference_rows(args.pairs, rng, exclude={row["question"] for row in sft})
    args.out_dir.mkdir(parents=True, exist_ok=True)
    write_jsonl(args.out_dir / "sft_drill.jsonl", sft)
    write_jsonl(args.out_dir / "preference_drill.jsonl", pairs)
    print(f"wrote {len(sft)} SFT drill rows and {len(pairs)} preference pairs to {args.out_dir}")


if __name__ == "__main__":
    main()
