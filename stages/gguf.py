"""Stage `gguf`: convert the merged model to GGUF with llama.cpp's own converter, then prove parity.

Reads  params `reproducibility` and `gguf`; models/merged; data/prepared/sft_eval.jsonl (parity probes)
Writes models/gguf/teachingassistant-<outtype>.gguf, metrics/gguf.json

Two checks stop the stage before a broken file is shipped (the most common GGUF failure reports): the
same chat-templated text must become the same token ids in HF and llama.cpp, and the GGUF's logits must
match the merged model's (ta/export/gguf.py). The file is written beside its final path (`<name>.tmp`) and
renamed there only once both checks passed; a file that fails them is removed.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from ta import libraries, paths, process, reproducibility
from ta.base_model import is_bnb_quantized
from ta.config import load_params
from ta.errors import report
from ta.files import atomic_output, write_atomically

log = logging.getLogger("gguf")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=paths.MERGED_DIR, help="HF model dir (default: models/merged)")
    parser.add_argument("--outfile", type=Path, help="default: models/gguf/teachingassistant-<outtype>.gguf")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")

    def body() -> None:
        libraries.check("gguf")  # the installed versions are the ones libraries.yaml records
        everything = load_params()
        reproducibility.apply(everything.reproducibility)  # before torch loads
        process.skip_bitsandbytes(needed=is_bnb_quantized())  # before transformers and PEFT load
        from ta.export.gguf import check_parity, convert

        params = everything.gguf
        outfile = args.outfile or paths.gguf_file(params.outtype)
        with atomic_output(outfile) as unchecked:  # at outfile only once parity passed; removed otherwise
            convert(args.model, unchecked, params.outtype, params.llama_cpp_dir)
            parity = check_parity(args.model, unchecked, paths.SFT_EVAL, params)
        write_atomically(paths.GGUF_METRICS, json.dumps(parity, indent=2, ensure_ascii=False) + "\n")
        texts = parity["token_parity"]["texts"]
        log.info(
            "wrote %s; token parity %d/%d texts, logits max |Δ| %s",
            outfile,
            texts,
            texts,
            parity["logit_parity"]["max_abs_diff"],
        )

    return report("gguf", body)


if __name__ == "__main__":
    process.run(main)
