"""Stage `merge`: fold the DPO adapter into the base weights (PEFT merge_and_unload).

Reads  params `reproducibility` and `merge`; models/base; models/dpo
Writes models/merged/: safetensors weights, the tokenizer files and chat template, and a
       generation_config.json whose eos lists the chat end token (<|im_end|>) and the base eos, so that
       every runtime stops at the end of the assistant turn (ta/export/merge.py).

Standalone, as in the guide (section 4.2):
    python -m stages.merge --adapter checkpoints/ta-lora-v1 --base Qwen/Qwen2-7B-Instruct --output merged_model
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from ta import libraries, paths, process, reproducibility
from ta.base_model import is_bnb_quantized
from ta.config import MergeDtype, choices, load_project_params
from ta.errors import report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--adapter", type=Path, default=paths.DPO_DIR, help="PEFT adapter dir (default: models/dpo)")
    parser.add_argument("--base", help="base model id or path (default: the one pinned in models/base/base.json)")
    parser.add_argument("--output", type=Path, default=paths.MERGED_DIR, help="output dir (default: models/merged)")
    parser.add_argument("--dtype", choices=choices(MergeDtype), help="weight dtype (default: params.yaml merge.dtype)")
    parser.add_argument("--trust-remote-code", action="store_true", help="allow the base repo's own model code")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")

    def body() -> None:
        libraries.check("merge")  # the installed versions are the ones libraries.yaml records
        params = load_project_params()
        reproducibility.apply(params.reproducibility)  # before torch loads
        process.skip_bitsandbytes(needed=is_bnb_quantized())  # before transformers and PEFT load
        from ta.base_model import BaseModelRef, read_base_ref
        from ta.export.merge import merge

        dtype = args.dtype or params.merge.dtype
        ref = BaseModelRef(args.base, None, args.trust_remote_code) if args.base else read_base_ref()
        merge(ref, args.adapter, args.output, dtype)

    return report("merge", body)


if __name__ == "__main__":
    process.run(main)
