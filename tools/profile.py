"""A profile: a run's params that differ from params.yaml, applied with one command. `make real` runs the guide's.

    python -m tools.profile run profiles/qwen2.5-7b-guide.yaml [dvc exp run options, e.g. --queue, -n guide-7b]
    python -m tools.profile check profiles/qwen2.5-7b-guide.yaml
    python -m tools.profile overrides profiles/qwen2.5-7b-guide.yaml

`run` is `dvc exp run -S key=value ...`, one override per value of the profile (a list, such as
`prepare.sft_sources`, is one value), so the experiment records exactly what it changed. `check` proves the
profile coherent on any machine, without a GPU and without downloading anything: params.yaml with the
profile applied must load and validate; it prints the estimated peak memory per GPU of sft and dpo (from the
model's known shape, ta/train/memory.py), builds both trainer configurations (precision, checkpointing,
DeepSpeed, batch sizes: no weight is loaded) and prints how to launch on one machine and on several.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from ta import paths
from ta.errors import ParamsError, report


def load_profile(path: Path) -> dict[str, Any]:
    import yaml

    try:
        profile = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError as err:
        raise ParamsError(f"{path}: not found") from err
    if not isinstance(profile, dict):
        raise ParamsError(f"{path}: expected a mapping of params.yaml sections")
    return profile


def leaves(profile: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    """(dotted key, value) of every value the profile sets; mappings are descended, lists are values."""
    found = []
    for key, value in profile.items():
        if isinstance(value, dict):
            found += leaves(value, f"{prefix}{key}.")
        else:
            found.append((f"{prefix}{key}", value))
    return found


def hydra_value(value: Any) -> str:
    """`value` in the grammar of Hydra overrides (what `dvc exp run -S` parses)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, list):
        return "[" + ",".join(hydra_value(item) for item in value) + "]"
    if isinstance(value, dict):
        return "{" + ",".join(f"{key}:{hydra_value(item)}" for key, item in value.items()) + "}"
    return "'" + str(value).replace("\\", "\\\\").replace("'", "\\'") + "'"  # quoted: never read as a number


def overrides(profile: dict[str, Any]) -> list[str]:
    return [f"{key}={hydra_value(value)}" for key, value in leaves(profile)]


def applied(params: dict[str, Any], profile: dict[str, Any]) -> dict[str, Any]:
    """params.yaml's values with the profile's over them (what `dvc exp run -S` writes)."""
    merged = json.loads(json.dumps(params))
    for key, value in leaves(profile):
        *sections, name = key.split(".")
        node = merged
        for section in sections:
            node = node.setdefault(section, {})
        if name not in node:
            raise ParamsError(f"profile: {key}: not a key of params.yaml (dvc exp run -S only sets existing keys)")
        node[name] = value
    return merged


def validated_params(profile: dict[str, Any], params_file: Path = paths.PARAMS_FILE) -> Any:
    """The typed params of params.yaml with the profile applied; ParamsError names a bad key."""
    import yaml

    from ta.config import load_params

    params = yaml.safe_load(params_file.read_text(encoding="utf-8"))
    with tempfile.TemporaryDirectory() as tmp:
        merged_file = Path(tmp) / "params.yaml"
        merged_file.write_text(yaml.safe_dump(applied(params, profile), allow_unicode=True), encoding="utf-8")
        try:
            return load_params(merged_file)
        except ParamsError as err:
            raise ParamsError(str(err).replace(str(merged_file), f"{params_file} with the profile")) from None


def memory_lines(params: Any) -> list[str]:
    """Estimated peak memory per GPU of sft and of dpo (policy and reference share the base; chosen and
    rejected go through together, so twice the batch), from the base's known shape or its config.json."""
    from ta.train import memory, sft

    shape = memory.load_shape(params.base.model)
    sft_run = sft.memory_run(params.sft)
    dpo_run = dataclasses.replace(
        sft_run,
        seq_len=params.dpo.max_length,
        batch_size=2 * params.dpo.per_device_train_batch_size,
        gradient_checkpointing=params.dpo.gradient_checkpointing,
    )
    lines = []
    for stage, run in (("sft", sft_run), ("dpo", dpo_run)):
        lines.append(f"{stage}: estimated peak GPU memory {memory.peak_gib(shape, run):.1f} GiB per GPU")
        lines += [f"  {line}" for line in memory.breakdown(shape, run).splitlines()]
    return lines


def trainer_lines(params: Any) -> list[str]:
    """The SFT and DPO trainer configurations the stages would build (no model is loaded)."""
    from ta.train import dpo, sft

    configs = {
        "sft": sft.sft_config(params.sft, params.lr, paths.SFT_CHECKPOINTS),
        "dpo": dpo.dpo_config(params.dpo, paths.DPO_CHECKPOINTS),
    }
    lines = []
    for stage, config in configs.items():
        shown = {
            "bf16": config.bf16,
            "fp16": config.fp16,
            "activation_checkpointing": config.activation_checkpointing,
            "deepspeed": config.deepspeed,
            "learning_rate": config.learning_rate,
            "num_train_epochs": config.num_train_epochs,
            "per_device_train_batch_size": config.per_device_train_batch_size,
            "gradient_accumulation_steps": config.gradient_accumulation_steps,
            "max_length": config.max_length,
        }
        if stage == "dpo":
            shown["beta"] = config.beta
        fields = ", ".join(f"{key}={value!r}" for key, value in shown.items())
        lines.append(f"{stage} trainer: {type(config).__name__}({fields})")
    return lines


def launch_lines(params: Any) -> list[str]:
    from ta.train import launch

    lines = []
    for stage in ("sft", "dpo"):
        section = getattr(params, stage)
        zero = launch.zero_stage(section.num_processes, section.deepspeed_config)
        one = launch.local_command(f"stages.{stage}", section.num_processes)
        many = launch.node_command(f"stages.{stage}", section.num_processes, 2, "R", "<host of machine 0>:29500")
        lines.append(f"{stage}: {section.num_processes} processes per machine, DeepSpeed ZeRO stage {zero}")
        lines.append(f"  one machine (dvc repro runs it): {' '.join(one)}")
        lines.append(f"  machine R (0, 1) of 2:           {' '.join(many)}")
    return lines


def check(profile_file: Path) -> list[str]:
    """Everything `check` prints: validation, memory, trainer configs, launch commands."""
    from ta.models import check_attn_implementation
    from ta.train import launch

    profile = load_profile(profile_file)
    params = validated_params(profile)
    for stage in ("sft", "dpo"):
        section = getattr(params, stage)
        launch.check_deepspeed(stage, section.num_processes, section.deepspeed_config)
        check_attn_implementation(f"{stage}.attn_implementation", section.attn_implementation)
    lines = [f"{profile_file}: {len(leaves(profile))} values over params.yaml; params valid"]
    lines.append(f"base: {params.base.model} at {params.base.revision} (pinned to its commit sha by the base stage)")
    return lines + memory_lines(params) + trainer_lines(params) + launch_lines(params)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("action", choices=("run", "check", "overrides"))
    parser.add_argument("profile", type=Path)
    parser.add_argument("dvc_args", nargs=argparse.REMAINDER, help="passed to `dvc exp run` (run only)")
    args = parser.parse_args(argv)

    def body() -> int:
        if args.action == "check":
            print("\n".join(check(args.profile)))
            return 0
        profile = load_profile(args.profile)
        validated_params(profile)  # a bad profile stops here, before DVC starts anything
        if args.action == "overrides":
            print("\n".join(overrides(profile)))
            return 0
        command = ["dvc", "exp", "run", *args.dvc_args]
        for override in overrides(profile):
            command += ["-S", override]
        print(" ".join(command), flush=True)
        dvc = Path(sys.executable).with_name("dvc")
        return subprocess.call([str(dvc) if dvc.is_file() else "dvc", *command[1:]])

    return report("profile", body)


if __name__ == "__main__":
    sys.exit(main())
