"""Stage `sft`: supervised fine-tuning, LoRA / QLoRA / full, on the assistant tokens (TRL SFTTrainer + PEFT).

Reads  params `reproducibility`, `lr` (the learning rate) and `sft`; models/base; data/prepared/sft_{train,eval}.jsonl;
       ds_config_zero2.json when sft.num_processes > 1
Writes models/sft/ (the LoRA adapter + tokenizer; for `method: full` the whole model), dvclive/sft/
       (loss, eval loss, lr, grad norm per step); checkpoints/sft/ while it runs (empty once it finishes)

`sft.num_processes: N` > 1 reruns this module as N workers under DeepSpeed with `sft.deepspeed_config`
(the guide's `deepspeed --num_gpus=N ... --deepspeed ds_config_zero2.json`); see ta/train/launch.py.
A run killed after a checkpoint resumes from it on the next `dvc repro` ("Resuming from checkpoint-N").
The training itself is ta/train/sft.py.
"""

from __future__ import annotations

import argparse
import logging

from ta import libraries, paths, process, reproducibility
from ta.base_model import is_bnb_quantized
from ta.config import load_params
from ta.errors import report
from ta.train import launch

log = logging.getLogger("sft")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--local_rank", "--local-rank", type=int, help=argparse.SUPPRESS)  # deepspeed launcher
    parser.parse_args(argv)
    launch.setup_logging()

    def body() -> int:
        libraries.check("sft")  # the installed versions are the ones libraries.yaml records
        params = load_params()
        reproducibility.apply(params.reproducibility)  # before torch loads; the workers it launches inherit it
        process.skip_bitsandbytes(needed=params.sft.method == "qlora" or is_bnb_quantized())
        from ta.base_model import read_base_ref
        from ta.train import checkpoints, sft

        if not launch.launched():
            sft.check(params.sft, read_base_ref())
            checkpoints.prepare_resume(
                paths.SFT_CHECKPOINTS, sft.fingerprint(params.sft, params.lr, params.reproducibility)
            )
            if params.sft.num_processes > 1:
                return launch.relaunch("stages.sft", params.sft.num_processes)
        metrics = sft.train(params.sft, params.lr)
        launch.finish()  # every rank, once the model is saved
        log.info(
            "final eval loss %.4f after %d steps; model in %s",
            metrics["eval_loss"],
            metrics["global_step"],
            paths.SFT_DIR,
        )
        return 0

    return report("sft", body)


if __name__ == "__main__":
    process.run(main)
