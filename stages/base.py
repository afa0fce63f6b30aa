"""Stage `base`: resolve the base model and pin it.

Reads  params `reproducibility` and `base`; for `tiny` only, prepare's sources (params `prepare`: sft_sources,
       preference_sources, seed, eval_fraction and the row rules), read with prepare's own code
       (ta/data/pretrain.py); the hub model or local directory named by `base.model`
Writes models/base/: the configs and tokenizer files every later stage reads (chat template included),
       base.json — where the weights are and their pin — and the weights themselves unless they are on
       the hub (ta/base_model.py):
       - `tiny`: a Qwen2-architecture causal LM with a SentencePiece BPE tokenizer, both trained on the
         raw rows that prepare puts in the *train* split (ta/train/tiny.py); a malformed row stops it with
         prepare's `file:line` error (or is skipped, as prepare.on_error says);
       - a local directory: copied, pinned by a digest of its files' contents;
       - a hub id: snapshot into the Hugging Face cache, pinned by the commit sha it resolved to.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from ta import libraries, paths, process, reproducibility
from ta.config import load_params
from ta.errors import report

log = logging.getLogger("base")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", type=Path, default=paths.BASE_DIR, help="output dir (default: models/base)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")

    def body() -> None:
        libraries.check("base")  # the installed versions are the ones libraries.yaml records
        params = load_params()
        reproducibility.apply(params.reproducibility)  # before torch loads
        process.skip_bitsandbytes(needed=False)  # building tiny or snapshotting a model loads no weights
        from ta.base_model import snapshot_base, snapshot_files

        args.output.mkdir(parents=True, exist_ok=True)
        for stale in snapshot_files(args.output):  # a snapshot of another model must not leave its files behind
            stale.unlink()
        if params.base.model == "tiny":
            from ta.data.pretrain import pretrain_rows
            from ta.train.tiny import build_tiny

            rows = pretrain_rows(params.prepare)
            log.info("%d of %d raw rows in the train split (%d rejected)", len(rows.texts), rows.rows_in, rows.rejected)
            build_tiny(params.base.tiny, params.base.seed, rows, args.output)
            info: dict[str, object] = {"model": "tiny", "source": "tiny", "revision": None}
        else:
            info = snapshot_base(params.base.model, params.base.revision, args.output)
        info["trust_remote_code"] = params.base.trust_remote_code
        (args.output / "base.json").write_text(json.dumps(info, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        log.info("base model ready in %s: %s", args.output, info)

    return report("base", body)


if __name__ == "__main__":
    process.run(main)
