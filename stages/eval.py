"""Stage `eval`: every artifact of the chain measured on the same held-out data.

Reads   models/base, models/sft, models/dpo, models/merged (transformers + PEFT),
        models/gguf/teachingassistant-{f16,q4_k_m}.gguf (llama.cpp),
        data/prepared/sft_eval.jsonl, data/prepared/pref_eval.jsonl;
        params: reproducibility.*, eval.*, prepare.system_prompt (sample prompts), prepare.refusal_patterns.
Writes  metrics/eval.json          perplexity / task / preference_accuracy / refusal_rate .<artifact>,
                                   quantization.* (and judge.<artifact> when the judge is on)
        metrics/eval_intervals.json  bootstrap intervals of those numbers, paired comparisons (sft vs base, dpo vs
                                   sft, q4_k_m vs f16) and the gates' verdicts; tracked, not a metric
        metrics/eval_timing.json   seconds per artifact (loading it; scoring and generating) and the threads: a
                                   metric (`dvc metrics diff` shows a slower eval), the one output that differs
                                   from run to run
        metrics/samples.md, .json  greedy answers of every artifact to eval.sample_prompts (the JSON also
                                   holds each held-out task question with every artifact's answer and score;
                                   the Markdown opens with what the intervals say the evidence supports)
        metrics/eval_plots/        per-artifact bars for `dvc plots`

Every runtime scores the same token ids (ta/eval/evaluate.py); metric definitions: ta/eval/metrics.py.
A breached gate warns; with `eval.gate_action: fail` a breach beyond noise (any breach with
`eval.gate_evidence: point`; ta/eval/gates.py) ends the stage with exit code 1.
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

log = logging.getLogger("eval")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")

    def body() -> None:
        libraries.check("eval")  # the installed versions are the ones libraries.yaml records
        started = time.perf_counter()
        params = load_params()
        reproducibility.apply(params.reproducibility)  # before torch loads
        process.skip_bitsandbytes(needed=is_bnb_quantized())  # before transformers and PEFT load
        from ta.eval.evaluate import apply_gates, run
        from ta.eval.metrics import finite_or_null

        results, verdicts = run(params.eval, params.prepare.system_prompt, params.prepare.refusal_patterns)
        apply_gates(verdicts, params.eval)
        elapsed = time.perf_counter() - started
        written = (paths.EVAL_METRICS, paths.EVAL_INTERVALS, paths.EVAL_TIMING, paths.SAMPLES_MD, paths.SAMPLES_JSON)
        log.info("wrote %s in %.1f s", ", ".join(map(str, written)), elapsed)
        print(json.dumps(finite_or_null(results), ensure_ascii=False, indent=2, allow_nan=False))

    return report("eval", body)


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    process.run(main)
