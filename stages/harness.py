"""Stage `harness`: lm-evaluation-harness, the standard harness, on the merged model and the quantized GGUF.

Reads   models/merged (lm-eval's hf backend),
        models/gguf/teachingassistant-q4_k_m.gguf (llama.cpp's OpenAI-compatible server, started on a free
        loopback port for the run), data/prepared/pref_eval.jsonl (the local task ta_pref);
        params: reproducibility.*, harness.*, serve.lora_name, serve.max_model_len.
Writes  metrics/harness.json   <artifact> -> <task> -> {acc, acc_norm, ..., samples}; {} while
        `harness.enabled` is false (the default: it adds ~30 s to a run on 2 CPU cores)

Tasks: ta_pref (the held-out preference pairs as multiple choice, offline) and, on a machine with network,
any of lm-eval's own by name (ceval-valid, cmmlu: docs/evaluation.md). The library is ta/eval/harness.py.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time

from ta import libraries, paths, process, reproducibility
from ta.base_model import is_bnb_quantized
from ta.config import load_params
from ta.errors import report
from ta.files import write_atomically

log = logging.getLogger("harness")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")

    def body() -> None:
        libraries.check("harness")  # the installed versions are the ones libraries.yaml records
        params = load_params()
        if not params.harness.enabled:
            write_atomically(paths.HARNESS_METRICS, "{}\n")
            log.info("harness.enabled is false: nothing measured (dvc exp run -S harness.enabled=true)")
            return
        reproducibility.apply(params.reproducibility)  # before torch loads
        process.skip_bitsandbytes(needed=is_bnb_quantized())  # before transformers and PEFT load
        from ta.eval.harness import run

        started = time.perf_counter()
        results = run(params.harness, params.serve)
        log.info("wrote %s in %.1f s", paths.HARNESS_METRICS, time.perf_counter() - started)
        print(json.dumps(results, ensure_ascii=False, indent=2))

    return report("harness", body)


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    process.run(main)
