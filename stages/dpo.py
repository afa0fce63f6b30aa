"""Stage `dpo`: Direct Preference Optimization on top of the SFT model (TRL DPOTrainer).

Reads  params `reproducibility` and `dpo`; models/base; models/sft; data/prepared/pref_{train,eval}.jsonl;
       ds_config_zero2.json when dpo.num_processes > 1
Writes models/dpo/ (a LoRA adapter over the base: the SFT adapter, further trained; after `sft.method:
       full` the whole model), dvclive/dpo/ (loss, rewards chosen/rejected, margins, accuracies per step);
       checkpoints/dpo/ while it runs (empty once it finishes)

The reference policy is the SFT model (a frozen copy of its adapter) unless `dpo.ref_model` names another;
see ta/train/dpo.py.
"""

from __future__ import annotations

import argparse
import logging

from ta import libraries, paths, process, reproducibility
from ta.base_model import is_bnb_quantized
from ta.config import load_params
from ta.errors import report
from ta.train import launch

log = logging.getLogger("dpo")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--local_rank", "--local-rank", type=int, help=argparse.SUPPRESS)  # deepspeed launcher
    parser.parse_args(argv)
    launch.setup_logging()

    def body() -> int:
        libraries.check("dpo")  # the installed versions are the ones libraries.yaml records
        everything = load_params()
        reproducibility.apply(everything.reproducibility)  # before torch loads; the workers it launches inherit it
        process.skip_bitsandbytes(needed=is_bnb_quantized())  # before transformers and PEFT load
        from ta.train import checkpoints, dpo

        params = everything.dpo
        if not launch.launched():
            dpo.check(params)
            checkpoints.prepare_resume(paths.DPO_CHECKPOINTS, dpo.fingerprint(params, everything.reproducibility))
            if params.num_processes > 1:
                return launch.relaunch("stages.dpo", params.num_processes)
        metrics = dpo.train(params)
        launch.finish()  # every rank, once the model is saved
        accuracy = metrics.get("eval_rewards/accuracies", float("nan"))
        log.info(
            "eval reward accuracy %.3f after %d steps; model in %s", accuracy, metrics["global_step"], paths.DPO_DIR
        )
        return 0

    return report("dpo", body)


if __name__ == "__main__":
    process.run(main)
