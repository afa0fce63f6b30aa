"""Stage `dpo`: Direct Preference Optimization on top of the SFT model (TRL DPOTrainer).

Reads  params `dpo`; models/base; models/sft; data/prepared/pref_{train,eval}.jsonl;
       ds_config_zero2.json when dpo.num_processes > 1
Writes models/dpo/ (a LoRA adapter over the base: the SFT adapter, further trained; after `sft.method:
       full` the whole model), dvclive/dpo/ (loss, rewards chosen/rejected, margins, accuracies per step);
       checkpoints/dpo/ while it runs (empty once it finishes)

The reference policy is the SFT model itself, without a second copy of the base weights: given a
PeftModel whose trainable "default" adapter is the SFT adapter, TRL adds a frozen copy of it ("ref")
and switches adapters to compute the reference log-probs. After a full SFT, TRL loads a second copy of
models/sft as the reference. `dpo.ref_model` names another reference instead (a model dir, or an adapter
dir over the pinned base), like the guide's `--ref_model_name_or_path`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
from pathlib import Path
from typing import Any

from stages import launch
from stages.models import (
    BASE_DIR,
    BaseModelRef,
    copy_tokenizer_files,
    load_base_model,
    load_tokenizer,
    read_base_ref,
    save_model,
    torch_dtype,
)
from stages.params import Dpo, ParamsError, load_params

log = logging.getLogger("dpo")

SFT_DIR = Path("models/sft")
TRAIN_FILE = Path("data/prepared/pref_train.jsonl")
EVAL_FILE = Path("data/prepared/pref_eval.jsonl")
OUT_DIR = Path("models/dpo")
LIVE_DIR = Path("dvclive/dpo")
CHECKPOINT_DIR = Path("checkpoints/dpo")  # persisted DVC output: survives a killed run, empty after a finished one


def read_pairs(path: Path) -> list[dict[str, list[dict[str, str]]]]:
    with path.open(encoding="utf-8") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    return [{k: row[k] for k in ("prompt", "chosen", "rejected")} for row in rows]


def is_adapter(path: Path) -> bool:
    return (path / "adapter_config.json").is_file()


def check(params: Dpo) -> None:
    """Reject a config that cannot run here, before any process is launched or any weight loaded."""
    import torch

    if params.precision == "fp16" and not torch.cuda.is_available():
        raise ParamsError("params.yaml: dpo.precision: fp16 needs a GPU; use fp32 or bf16 on CPU")
    launch.check_deepspeed("dpo", params.num_processes, params.deepspeed_config)
    ref_model = Path(params.ref_model)
    if params.ref_model and not (ref_model / "config.json").is_file() and not is_adapter(ref_model):
        raise ParamsError(f"params.yaml: dpo.ref_model: {params.ref_model}: not a model or adapter directory")
    if not SFT_DIR.is_dir():
        raise FileNotFoundError(f"{SFT_DIR}: missing; run `dvc repro sft` first")


def fingerprint(params: Dpo) -> dict[str, Any]:
    inputs = [TRAIN_FILE, EVAL_FILE, Path(params.deepspeed_config), *sorted(BASE_DIR.glob("*"))]
    inputs += sorted(SFT_DIR.glob("*.safetensors"))
    return launch.run_fingerprint({"dpo": dataclasses.asdict(params)}, inputs)


def load_policy(ref: BaseModelRef, params: Dpo) -> Any:
    """The SFT model, trainable: its adapter over the base, or the fully fine-tuned model in fp32."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    if is_adapter(SFT_DIR):
        base = load_base_model(ref, torch_dtype(params.precision))
        return PeftModel.from_pretrained(base, str(SFT_DIR), is_trainable=True)
    return AutoModelForCausalLM.from_pretrained(str(SFT_DIR), dtype=torch_dtype("fp32"))


def load_reference(ref: BaseModelRef, params: Dpo) -> Any:
    """The explicit reference model of `dpo.ref_model` (frozen), or None for TRL's default."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    if not params.ref_model:
        return None
    path = Path(params.ref_model)
    if is_adapter(path):
        base = load_base_model(ref, torch_dtype(params.precision))
        return PeftModel.from_pretrained(base, str(path)).merge_and_unload().eval()
    return AutoModelForCausalLM.from_pretrained(str(path), dtype=torch_dtype(params.precision)).eval()


def dpo_config(params: Dpo, checkpoint_dir: Path) -> Any:
    import torch
    from trl import DPOConfig

    use_deepspeed = params.num_processes > 1 and params.deepspeed_config
    return DPOConfig(
        output_dir=str(checkpoint_dir),
        beta=params.beta,
        loss_type=params.loss_type,
        learning_rate=params.learning_rate,
        num_train_epochs=params.num_epochs,
        max_steps=params.max_steps,
        per_device_train_batch_size=params.per_device_train_batch_size,
        per_device_eval_batch_size=params.per_device_train_batch_size,
        gradient_accumulation_steps=params.gradient_accumulation_steps,
        warmup_steps=params.warmup_ratio,  # transformers 5: a float < 1 is a ratio of the total steps
        lr_scheduler_type=params.lr_scheduler_type,
        max_grad_norm=params.max_grad_norm,
        max_length=params.max_length,
        activation_checkpointing=params.gradient_checkpointing,  # transformers 5 name of gradient checkpointing
        activation_checkpointing_kwargs={"use_reentrant": False} if params.gradient_checkpointing else None,
        bf16=params.precision == "bf16",
        fp16=params.precision == "fp16",
        eval_strategy="steps",
        eval_steps=params.eval_steps,
        logging_steps=params.logging_steps,
        save_strategy="steps" if params.save_steps > 0 else "no",
        save_steps=params.save_steps if params.save_steps > 0 else 500,
        save_total_limit=params.save_total_limit,
        deepspeed=params.deepspeed_config if use_deepspeed else None,
        report_to="none",
        seed=params.seed,
        data_seed=params.seed,
        use_cpu=not torch.cuda.is_available(),
        dataloader_num_workers=0,
    )


def train(
    params: Dpo, out_dir: Path = OUT_DIR, live_dir: Path = LIVE_DIR, checkpoint_dir: Path = CHECKPOINT_DIR
) -> dict[str, float]:
    from datasets import Dataset
    from transformers import set_seed
    from trl import DPOTrainer

    from stages.tracking import dvclive_callbacks

    set_seed(params.seed)
    ref = read_base_ref()
    tokenizer = load_tokenizer(SFT_DIR)
    resume_from = launch.last_checkpoint(checkpoint_dir)
    callbacks = [launch.engine_report()]
    callbacks += dvclive_callbacks(
        live_dir,
        {"dpo": dataclasses.asdict(params)},
        resume_step=int(resume_from.name.split("-")[-1]) if resume_from else None,
    )
    trainer = DPOTrainer(
        model=load_policy(ref, params),
        ref_model=load_reference(ref, params),
        args=dpo_config(params, checkpoint_dir),
        train_dataset=Dataset.from_list(read_pairs(TRAIN_FILE)),
        eval_dataset=Dataset.from_list(read_pairs(EVAL_FILE)),
        processing_class=tokenizer,
        callbacks=callbacks,
    )
    if resume_from:
        log.info("Resuming from %s", resume_from.name)
    trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    state = trainer.state
    last_eval = next(entry for entry in reversed(state.log_history) if "eval_loss" in entry)  # the last step's
    metrics = {**last_eval, "global_step": state.global_step}
    if trainer.is_world_process_zero():
        model = trainer.model
        if is_adapter(SFT_DIR):
            save_model(model, out_dir, selected_adapters=["default"])
        else:
            save_model(model, out_dir)
        copy_tokenizer_files(SFT_DIR, out_dir)
        launch.clear_checkpoints(checkpoint_dir)
    return metrics


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--local_rank", "--local-rank", type=int, help=argparse.SUPPRESS)  # deepspeed launcher
    parser.parse_args(argv)
    launch.setup_logging()
    try:
        params = load_params().dpo
        if not launch.launched():
            check(params)
            launch.prepare_resume(CHECKPOINT_DIR, fingerprint(params))
            if params.num_processes > 1:
                return launch.relaunch("stages.dpo", params.num_processes)
        metrics = train(params)
    except (ParamsError, FileNotFoundError) as err:
        print(f"dpo: error: {err}", file=sys.stderr)
        return 2
    accuracy = metrics.get("eval_rewards/accuracies", float("nan"))
    log.info("eval reward accuracy %.3f after %d steps; model in %s", accuracy, metrics["global_step"], OUT_DIR)
    return 0


if __name__ == "__main__":
    sys.exit(main())
