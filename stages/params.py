"""One typed loader for params.yaml.

Every stage calls `load_params()` and reads its own section. Each section is a dataclass, so a typo in
params.yaml (an unknown key, a string where a number belongs) is reported with its path, e.g.
`params.yaml: sft.lora.r: expected int, got 'sixteen'`, instead of surfacing later as a KeyError.

PyYAML reads `1e-4` as a string (YAML 1.1) while DVC writes it back in that form after
`dvc exp run -S lr=1e-4`; the loader accepts such strings wherever a float is expected.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

PARAMS_FILE = Path("params.yaml")


class ParamsError(ValueError):
    """A params.yaml problem, with the file and the key path in the message."""


@dataclass
class TinyModel:
    vocab_size: int = 2560
    hidden_size: int = 256
    intermediate_size: int = 512
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    max_position_embeddings: int = 1024
    pretrain_steps: int = 600
    pretrain_lr: float = 3.0e-3
    pretrain_batch_size: int = 8
    pretrain_seq_len: int = 128


@dataclass
class Base:
    model: str = "tiny"
    revision: str = "main"
    trust_remote_code: bool = False
    seed: int = 42
    tiny: TinyModel = field(default_factory=TinyModel)


@dataclass
class PrepareColumns:
    """Which column of a source fills each field of its format (empty = the field's own name)."""

    question: str = ""
    answer: str = ""
    instruction: str = ""
    input: str = ""
    output: str = ""
    system: str = ""
    history: str = ""
    conversations: str = ""
    messages: str = ""
    prompt: str = ""
    chosen: str = ""
    rejected: str = ""


@dataclass
class PrepareSource:
    """One input of prepare: a local file (`path`) or a hub dataset (`hub`, loaded with datasets)."""

    path: str = ""
    hub: str = ""  # e.g. YeungNLP/firefly-train-1.1M
    name: str = ""  # hub config name
    data_files: str = ""  # hub file inside the repo, when the set is several files
    split: str = "train"
    revision: str = ""  # hub commit/tag to pin; empty = the hub default branch
    format: str = "auto"  # auto | qa | alpaca | sharegpt | openai | firefly | pairs | sharegpt_pairs | ...
    columns: PrepareColumns = field(default_factory=PrepareColumns)
    weight: float = 1.0  # share of the source's rows kept (hash-based sample), 0 < weight <= 1
    max_rows: int = 0  # cap on kept rows from this source; 0 = no cap


@dataclass
class Prepare:
    seed: int = 42
    system_prompt: str = ""
    sft_sources: list[str | PrepareSource] = field(default_factory=list)
    preference_sources: list[str | PrepareSource] = field(default_factory=list)
    min_tokens: int = 10
    max_tokens: int = 4096
    refusal_patterns: list[str] = field(default_factory=list)
    eval_fraction: float = 0.1
    on_error: str = "stop"  # stop | skip: what a structural error (bad JSON, not UTF-8) does
    near_dup_threshold: float = 0.8  # MinHash Jaccard estimate above which a row is a near-duplicate; 0 = off
    near_dup_num_perm: int = 64
    redact_pii: bool = False  # replace e-mails, phone and ID-card numbers with [EMAIL]/[PHONE]/[ID_CARD]
    num_proc: int = 2  # worker processes for sources larger than one chunk (2000 rows)


@dataclass
class Lora:
    r: int = 16
    alpha: int = 32
    dropout: float = 0.05
    target_modules: str | list[str] = "all-linear"  # "all-linear" = every linear layer but the output head
    modules_to_save: list[str] = field(default_factory=list)  # trained in full beside the adapter, e.g. [lm_head]


@dataclass
class Qlora:
    """bitsandbytes 4-bit loading of the base for `method: qlora` (the QLoRA paper's recipe by default)."""

    quant_type: str = "nf4"  # nf4 | fp4
    double_quant: bool = True  # also quantize the quantization constants (~0.4 bit/param saved)
    compute_dtype: str = "bf16"  # fp32 | bf16 | fp16: dtype the 4-bit weights are dequantized to for matmuls


@dataclass
class Sft:
    method: str = "lora"  # lora | qlora | full
    seed: int = 42
    num_epochs: float = 3
    max_steps: int = -1  # stop after N optimizer steps; -1 = run num_epochs
    per_device_train_batch_size: int = 4
    gradient_accumulation_steps: int = 8
    max_seq_len: int = 2048
    warmup_ratio: float = 0.03
    lr_scheduler_type: str = "cosine"
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    eval_steps: int = 50
    logging_steps: int = 10
    save_steps: int = 50  # checkpoint every N steps into checkpoints/sft (resume after a kill); 0 = none
    save_total_limit: int = 2  # checkpoints kept while running (the best one too); all removed at the end
    early_stopping_patience: int = 0  # evals without improvement before stopping; 0 = off
    early_stopping_threshold: float = 0.01  # eval-loss drop below which an eval counts as no improvement
    gradient_checkpointing: bool = False
    train_sampling_strategy: str = "group_by_length"
    packing: bool = False  # pack samples into max_seq_len blocks (best-fit decreasing, padding-free)
    padding_free: bool = False  # one flattened sequence per batch, no pad tokens
    precision: str = "fp32"
    num_processes: int = 1  # > 1: one process per GPU (CPU: gloo) under DeepSpeed, as `deepspeed --num_gpus=N`
    deepspeed_config: str = "ds_config_zero2.json"  # used when num_processes > 1; "" = plain DDP
    gpu_memory_gb: float = 0  # per-GPU memory the estimate is checked against; 0 = the detected GPU's
    lora: Lora = field(default_factory=Lora)
    qlora: Qlora = field(default_factory=Qlora)


@dataclass
class Dpo:
    seed: int = 42
    beta: float = 0.1
    learning_rate: float = 5.0e-7
    num_epochs: float = 1
    max_steps: int = -1  # stop after N optimizer steps; -1 = run num_epochs
    per_device_train_batch_size: int = 4
    gradient_accumulation_steps: int = 1
    max_length: int = 2048
    loss_type: str = "sigmoid"
    ref_model: str = ""  # "" = the SFT model (a frozen copy of its adapter); or a model/adapter dir
    warmup_ratio: float = 0.1
    lr_scheduler_type: str = "linear"
    max_grad_norm: float = 1.0
    eval_steps: int = 50
    logging_steps: int = 5
    save_steps: int = 50  # checkpoint every N steps into checkpoints/dpo; 0 = none
    save_total_limit: int = 2
    gradient_checkpointing: bool = False
    precision: str = "fp32"
    num_processes: int = 1
    deepspeed_config: str = "ds_config_zero2.json"


@dataclass
class Merge:
    dtype: str = "float16"


@dataclass
class Gguf:
    llama_cpp_dir: str = ""
    outtype: str = "f16"
    parity_samples: int = 8
    parity_max_tokens: int = 256
    logit_tolerance: float = 0.05
    min_top1_agreement: float = 0.98


@dataclass
class Quantize:
    types: list[str] = field(default_factory=lambda: ["q4_k_m"])
    max_fallback_share: float = 0.0
    threads: int = 2


@dataclass
class Eval:
    artifacts: list[str] = field(default_factory=lambda: ["base", "sft", "dpo", "merged", "gguf_f16", "gguf_q4_k_m"])
    max_samples: int = 32
    max_generations: int = 8
    max_new_tokens: int = 64
    batch_size: int = 16
    n_threads: int = 1
    sample_prompts: list[str] = field(
        default_factory=lambda: [
            "你好，请介绍一下你自己。",
            "计算 47 + 38 等于多少？",
            "把 3 千克换算成克。",
            "什么是光合作用？",
        ]
    )
    gate_action: str = "warn"
    max_q4_k_m_vs_f16_ppl_ratio: float = 1.10
    max_task_drop_dpo_vs_sft: float = 0.05
    judge_enabled: bool = False
    judge_base_url: str = "http://127.0.0.1:8080/v1"
    judge_model: str = "judge"
    judge_api_key_env: str = "TA_JUDGE_API_KEY"
    judge_max_samples: int = 8


@dataclass
class Serve:
    host: str = "127.0.0.1"
    port: int = 8000
    api_key_env: str = "TA_API_KEY"
    lora_name: str = "ta-lora"
    adapter_dir: str = "models/dpo"
    dtype: str = "auto"
    max_model_len: int = 1024
    gguf: str = "models/gguf/teachingassistant-q4_k_m.gguf"
    ollama_model: str = "teachingassistant"
    ollama_url: str = "http://127.0.0.1:11434"
    temperature: float = 0.7
    top_p: float = 0.9
    repeat_penalty: float = 1.1


@dataclass
class Params:
    lr: float = 2.0e-4
    base: Base = field(default_factory=Base)
    prepare: Prepare = field(default_factory=Prepare)
    sft: Sft = field(default_factory=Sft)
    dpo: Dpo = field(default_factory=Dpo)
    merge: Merge = field(default_factory=Merge)
    gguf: Gguf = field(default_factory=Gguf)
    quantize: Quantize = field(default_factory=Quantize)
    eval: Eval = field(default_factory=Eval)
    serve: Serve = field(default_factory=Serve)


def load_params(path: str | Path = PARAMS_FILE) -> Params:
    """Read and validate params.yaml; raise ParamsError naming the file and key on bad input."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except FileNotFoundError as err:
        raise ParamsError(f"{path}: not found (run from the repository root)") from err
    except yaml.YAMLError as err:
        raise ParamsError(f"{path}: not valid YAML: {err}") from err
    return _build(Params, raw, str(path), "")


def _build(cls: type, raw: Any, file: str, prefix: str) -> Any:
    if not isinstance(raw, dict):
        raise ParamsError(f"{file}: {prefix or 'top level'}: expected a mapping, got {raw!r}")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - known)
    if unknown:
        where = f"{prefix}." if prefix else ""
        raise ParamsError(f"{file}: unknown key {where}{unknown[0]} (known: {', '.join(sorted(known))})")
    values = {name: _coerce(hints[name], raw[name], file, f"{prefix}.{name}".lstrip(".")) for name in raw}
    return cls(**values)


def _coerce(hint: Any, value: Any, file: str, key: str) -> Any:
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, file, key)
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        for option in typing.get_args(hint):
            try:
                return _coerce(option, value, file, key)
            except ParamsError:
                continue
        raise ParamsError(f"{file}: {key}: {value!r} does not match {hint}")
    if origin is list:
        if not isinstance(value, list):
            raise ParamsError(f"{file}: {key}: expected a list, got {value!r}")
        (item,) = typing.get_args(hint)
        return [_coerce(item, v, file, f"{key}[{i}]") for i, v in enumerate(value)]
    if hint is bool:
        if isinstance(value, bool):
            return value
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
    elif hint is str:
        if isinstance(value, str):
            return value
    raise ParamsError(f"{file}: {key}: expected {getattr(hint, '__name__', hint)}, got {value!r}")


def params_table(path: str | Path = PARAMS_FILE) -> str:
    """A markdown table of every param in params.yaml: key path, value, and the comment beside it.

    README.md's parameter table is this output, so the documentation is the file's own comments.
    """
    import re

    rows, stack = [], []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        match = re.match(r"^( *)([A-Za-z_][A-Za-z0-9_]*):(.*)$", line)
        if not match:
            continue
        depth, key, rest = len(match[1]) // 2, match[2], match[3]
        stack = [*stack[:depth], key]
        value, _, comment = rest.partition(" #")
        if value.strip() or comment.strip():
            cell = value.strip().replace("|", r"\|") or "(list below)"
            meaning = comment.strip().replace("|", r"\|")
            rows.append(f"| `{'.'.join(stack)}` | `{cell}` | {meaning} |")
    return "\n".join(["| param | default | meaning |", "|---|---|---|", *rows])


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(description="Validate params.yaml, or print its parameter table.")
    parser.add_argument("--file", type=Path, default=PARAMS_FILE)
    parser.add_argument("--markdown", action="store_true", help="print the README parameter table")
    args = parser.parse_args(argv)
    try:
        load_params(args.file)
    except ParamsError as err:
        print(f"params: error: {err}")
        return 2
    print(params_table(args.file) if args.markdown else f"{args.file}: ok")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
