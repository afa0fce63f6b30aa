"""Print the guide's memory table beside our estimate, or break one run down (ta/train/memory.py):

    python -m tools.estimate
    python -m tools.estimate --model qwen2-7b --method qlora --batch-size 4 --zero-stage 2 --num-gpus 4
    python -m tools.estimate --model models/base --method full --precision fp32 --no-gradient-checkpointing

The estimate's formulas and their sources are in ta/train/memory.py.
"""

from __future__ import annotations

import argparse
import sys

from ta.errors import report
from ta.train.memory import KNOWN_MODELS, METHODS, WEIGHT_BYTES, Run, breakdown, guide_table, load_shape


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help=f"{' | '.join(KNOWN_MODELS)} | a model dir; omit for the guide's table")
    parser.add_argument("--method", choices=METHODS, default="lora")
    parser.add_argument("--precision", choices=tuple(WEIGHT_BYTES), default="fp16")
    parser.add_argument("--seq-len", type=int, default=2048)
    parser.add_argument("--batch-size", type=int, default=1, help="per GPU")
    parser.add_argument("--zero-stage", type=int, choices=(0, 1, 2, 3), default=0, help="0 = no DeepSpeed")
    parser.add_argument("--num-gpus", type=int, default=1)
    parser.add_argument("--no-gradient-checkpointing", dest="gradient_checkpointing", action="store_false")
    parser.add_argument("--lora-r", type=int, default=16)
    args = parser.parse_args(argv)

    def body() -> None:
        if args.model is None:
            print(guide_table(seq_len=args.seq_len))
            return
        run = Run(
            method=args.method,
            precision=args.precision,
            seq_len=args.seq_len,
            batch_size=args.batch_size,
            zero_stage=args.zero_stage,
            num_gpus=args.num_gpus,
            gradient_checkpointing=args.gradient_checkpointing,
            lora_r=args.lora_r,
        )
        print(breakdown(load_shape(args.model), run))

    return report("estimate", body)


if __name__ == "__main__":
    sys.exit(main())
