"""One typed loader for params.yaml, which is the only source of defaults.

Every stage calls `load_params()` and reads its own section. Each section is a dataclass without defaults:
a key missing from params.yaml is an error, never a value invented here. Types, enums (`Literal`),
ranges (`Range`) and the rules between fields are checked when the file is loaded, so a bad value stops in
well under a second with its key path — `params.yaml: sft.lora.r: expected int, got 'sixteen'` — before
any model loads. `python -m ta.config` checks a file.

PyYAML reads `1e-4` as a string (YAML 1.1) while DVC writes it back in that form after
`dvc exp run -S lr=1e-4`; the loader accepts such strings wherever a float is expected.
"""

from __future__ import annotations

import dataclasses
import logging
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

from ta.errors import ParamsError
from ta.paths import PARAMS_FILE

log = logging.getLogger("params")

# The params.yaml shipped with the project: what the standalone CLIs read when run outside a checkout.
SHIPPED_PARAMS = Path(__file__).resolve().parent.parent / "params.yaml"


@dataclass(frozen=True)
class Range:
    """Bounds a number must respect (Annotated metadata), checked by the loader."""

    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None

    def violation(self, value: float) -> str | None:
        for bound, ok, word in (
            (self.ge, lambda b: value >= b, ">="),
            (self.gt, lambda b: value > b, ">"),
            (self.le, lambda b: value <= b, "<="),
            (self.lt, lambda b: value < b, "<"),
        ):
            if bound is not None and not ok(bound):
                return f"must be {word} {bound:g}, got {value!r}"
        return None


NonNegative = Annotated[int, Range(ge=0)]
Positive = Annotated[int, Range(ge=1)]
Fraction = Annotated[float, Range(ge=0, le=1)]
PositiveFloat = Annotated[float, Range(gt=0)]
StepsOrAll = Annotated[int, Range(ge=-1)]  # -1 = run the epochs

Precision = Literal["auto", "fp32", "bf16", "fp16"]  # auto: bf16 on a GPU that has it, fp16 on older GPUs, fp32 on CPU
ComputeDtype = Literal["fp32", "bf16", "fp16"]
AttnImplementation = Literal["sdpa", "eager", "flash_attention_2"]
TrainMethod = Literal["lora", "qlora", "full"]
MergeDtype = Literal["float32", "float16", "bfloat16"]
GgufOuttype = Literal["f16", "bf16", "q8_0"]
QuantType = Literal["q4_k_m", "q4_k_s", "q5_k_m", "q6_k", "q8_0", "q4_0"]
Artifact = Literal["base", "sft", "dpo", "merged", "gguf_f16", "gguf_q4_k_m"]
SourceFormat = Literal[
    "auto",
    "qa",
    "alpaca",
    "sharegpt",
    "openai",
    "firefly",
    "pairs",
    "sharegpt_pairs",
    "hh_rlhf",
    "ultrafeedback",
    "ultrafeedback_raw",
    "selfinstruct",
]
SchedulerType = Literal[
    "linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup", "inverse_sqrt"
]
DpoLoss = Literal[
    "sigmoid", "hinge", "ipo", "exo_pair", "nca_pair", "robust", "bco_pair", "sppo_hard", "aot", "aot_pair", "apo_zero"
]


@dataclass
class Reproducibility:
    """How every torch stage computes, so that another machine writes the same bytes (ta/reproducibility.py)."""

    threads: NonNegative  # compute threads; 0 = every core (then the bytes depend on the core count)
    cpu_capability: Literal["avx2", "native"]  # widest CPU instruction set the kernels use; native: the CPU's own
    deterministic: bool  # torch.use_deterministic_algorithms (warn only) and cuBLAS's fixed workspace on GPUs


@dataclass
class TinyModel:
    vocab_size: Positive
    hidden_size: Positive
    intermediate_size: Positive
    num_hidden_layers: Positive
    num_attention_heads: Positive
    num_key_value_heads: Positive
    max_position_embeddings: Positive
    pretrain_steps: Positive
    pretrain_lr: PositiveFloat
    pretrain_batch_size: Positive
    pretrain_seq_len: Positive

    def check(self, where: str) -> None:
        for name in ("hidden_size", "intermediate_size"):
            if getattr(self, name) % 256:
                raise ParamsError(f"{where}.{name}: must be a multiple of 256 (llama.cpp Q4_K blocks)")
        if self.hidden_size % self.num_attention_heads or self.num_attention_heads % self.num_key_value_heads:
            raise ParamsError(
                f"{where}: num_attention_heads must divide hidden_size and num_key_value_heads must divide it"
            )


@dataclass
class Base:
    model: str
    revision: str
    trust_remote_code: bool
    seed: int
    tiny: TinyModel

    def check(self, where: str) -> None:
        if not self.model.strip():
            raise ParamsError(f"{where}.model: empty; use tiny, a hub id or a local path")


@dataclass
class PrepareColumns:
    """Which column of a source fills each field of its format (empty = the field's own name).

    A source entry's schema, not a params default: every field is optional in a source mapping."""

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
    format: SourceFormat = "auto"
    columns: PrepareColumns = field(default_factory=PrepareColumns)
    weight: Annotated[float, Range(gt=0, le=1)] = 1.0  # share of the source's rows kept (hash-based sample)
    max_rows: NonNegative = 0  # cap on kept rows from this source; 0 = no cap

    def check(self, where: str) -> None:
        if bool(self.path) == bool(self.hub):
            raise ParamsError(f"{where}: give exactly one of path or hub")


@dataclass
class Prepare:
    seed: int
    system_prompt: str
    sft_sources: list[str | PrepareSource]
    preference_sources: list[str | PrepareSource]
    min_tokens: NonNegative
    max_tokens: Positive
    refusal_patterns: list[str]
    eval_fraction: Annotated[float, Range(gt=0, lt=1)]  # sft, dpo, gguf and eval need held-out rows
    on_error: Literal["stop", "skip"]
    near_dup_threshold: Annotated[float, Range(ge=0, lt=1)]  # 0 = off
    near_dup_num_perm: Positive
    redact_pii: bool
    num_proc: Positive

    def check(self, where: str) -> None:
        if self.min_tokens > self.max_tokens:
            raise ParamsError(f"{where}.min_tokens: {self.min_tokens} exceeds max_tokens {self.max_tokens}")

    def sources(self, kind: str) -> list[PrepareSource]:
        """The `sft` or `preference` sources, plain paths as PrepareSource mappings."""
        entries = self.sft_sources if kind == "sft" else self.preference_sources
        return [PrepareSource(path=entry) if isinstance(entry, str) else entry for entry in entries]


@dataclass
class SelfInstruct:
    """The selfinstruct stage: new instruction/answer pairs from an OpenAI-compatible model, for a person to
    review before prepare takes them (ta/selfinstruct/)."""

    enabled: bool  # off: the stage passes the review file through and contacts nothing
    require_review: bool  # prepare takes only accepted/edited pairs; false: every pair not rejected
    base_url: str
    model: str
    api_key_env: str  # the NAME of the variable holding the key, never the key; "" = a server without one
    language: str  # the prompt templates' folder: prompts/selfinstruct/<language>/
    seed: int
    seed_sources: list[str | PrepareSource]
    subjects: list[str]
    difficulties: list[str]
    num_pairs: Positive
    pairs_per_request: Positive
    seed_examples: NonNegative
    generated_examples: NonNegative
    example_max_chars: Positive
    round_size: Positive
    concurrency: Positive
    temperature: Annotated[float, Range(ge=0, le=2)]
    top_p: Annotated[float, Range(gt=0, le=1)]
    max_tokens: Positive
    json_mode: bool
    extra_body: dict[str, Any]  # request fields sent as written
    timeout_s: PositiveFloat
    max_retries: NonNegative
    max_requests: Positive
    max_total_tokens: Positive
    rouge_l_threshold: Annotated[float, Range(gt=0, le=1)]
    min_instruction_chars: NonNegative
    max_instruction_chars: Positive
    min_answer_chars: NonNegative
    max_answer_chars: Positive
    media_patterns: list[str]

    def check(self, where: str) -> None:
        if not self.base_url.startswith(("http://", "https://")):
            raise ParamsError(
                f"{where}.base_url: {self.base_url!r} is not an http(s) URL, e.g. http://127.0.0.1:8000/v1"
            )
        for name in ("model", "language"):
            if not getattr(self, name).strip():
                raise ParamsError(f"{where}.{name}: empty")
        for name in ("seed_sources", "subjects", "difficulties"):
            if not getattr(self, name):
                raise ParamsError(f"{where}.{name}: empty; list at least one")
        if self.seed_examples + self.generated_examples == 0:
            raise ParamsError(f"{where}.seed_examples: 0 with generated_examples 0; the prompt needs an example")
        for low, high in (("min_instruction_chars", "max_instruction_chars"), ("min_answer_chars", "max_answer_chars")):
            if getattr(self, low) > getattr(self, high):
                raise ParamsError(f"{where}.{low}: {getattr(self, low)} exceeds {high} {getattr(self, high)}")

    def sources(self) -> list[PrepareSource]:
        """The seed sources, plain paths as PrepareSource mappings."""
        return [PrepareSource(path=entry) if isinstance(entry, str) else entry for entry in self.seed_sources]


@dataclass
class Lora:
    r: Positive
    alpha: Positive  # lora_alpha (an int, as PEFT writes it)
    dropout: Annotated[float, Range(ge=0, lt=1)]
    target_modules: str | list[str]  # "all-linear" = every linear layer but the output head
    modules_to_save: list[str]  # trained in full beside the adapter, e.g. [lm_head]


@dataclass
class Qlora:
    """bitsandbytes 4-bit loading of the base for `method: qlora` (the QLoRA paper's recipe by default)."""

    quant_type: Literal["nf4", "fp4"]
    double_quant: bool  # also quantize the quantization constants (~0.4 bit/param saved)
    compute_dtype: ComputeDtype  # dtype the 4-bit weights are dequantized to for matmuls


@dataclass
class Sft:
    method: TrainMethod
    seed: int
    num_epochs: PositiveFloat
    max_steps: StepsOrAll
    per_device_train_batch_size: Positive
    gradient_accumulation_steps: Positive
    max_seq_len: Positive
    warmup_ratio: Annotated[float, Range(ge=0, lt=1)]
    lr_scheduler_type: SchedulerType
    weight_decay: Annotated[float, Range(ge=0)]
    max_grad_norm: Annotated[float, Range(ge=0)]
    eval_steps: Positive
    logging_steps: Positive
    save_steps: NonNegative  # 0 = no checkpoints
    save_total_limit: Positive
    early_stopping_patience: NonNegative  # 0 = off
    early_stopping_threshold: Annotated[float, Range(ge=0)]
    gradient_checkpointing: bool
    train_sampling_strategy: Literal["group_by_length", "random", "sequential"]
    packing: bool
    padding_free: bool
    precision: Precision
    attn_implementation: AttnImplementation
    liger_kernels: bool
    num_processes: Positive
    deepspeed_config: str  # used when num_processes > 1; "" = plain DDP
    gpu_memory_gb: Annotated[float, Range(ge=0)]  # 0 = the detected GPU's
    lora: Lora
    qlora: Qlora

    def check(self, where: str) -> None:
        if self.early_stopping_patience > 0 and (self.save_steps <= 0 or self.save_steps % self.eval_steps):
            section = where.rpartition(": ")[2]  # `where` is "<file>: sft"
            raise ParamsError(
                f"{where}.save_steps: {self.save_steps} must be a positive multiple of {section}.eval_steps "
                f"({self.eval_steps}) with early stopping on: the best checkpoint is kept and loaded at the end"
            )


@dataclass
class Dpo:
    seed: int
    beta: PositiveFloat
    learning_rate: PositiveFloat
    num_epochs: PositiveFloat
    max_steps: StepsOrAll
    per_device_train_batch_size: Positive
    gradient_accumulation_steps: Positive
    max_length: Positive
    loss_type: DpoLoss
    ref_model: str  # "" = the SFT model (a frozen copy of its adapter); or a model/adapter dir
    warmup_ratio: Annotated[float, Range(ge=0, lt=1)]
    lr_scheduler_type: SchedulerType
    max_grad_norm: Annotated[float, Range(ge=0)]
    eval_steps: Positive
    logging_steps: Positive
    save_steps: NonNegative  # 0 = no checkpoints
    save_total_limit: Positive
    gradient_checkpointing: bool
    train_sampling_strategy: Literal["group_by_length", "random", "sequential"]
    split_rows_min_saving: NonNegative  # 0 = one padded forward per batch, as TRL
    precision: Precision
    attn_implementation: AttnImplementation
    liger_kernels: bool
    num_processes: Positive
    deepspeed_config: str


@dataclass
class Merge:
    dtype: MergeDtype


@dataclass
class Gguf:
    llama_cpp_dir: str
    outtype: GgufOuttype
    parity_samples: Positive
    parity_max_tokens: Positive
    logit_tolerance: PositiveFloat
    min_top1_agreement: Fraction


@dataclass
class Quantize:
    types: list[QuantType]
    max_fallback_share: Fraction
    threads: Positive

    def check(self, where: str) -> None:
        if not self.types:
            raise ParamsError(f"{where}.types: empty; list at least one type, e.g. [q4_k_m]")


@dataclass
class Eval:
    artifacts: list[Artifact]
    max_samples: Positive
    max_generations: NonNegative
    max_new_tokens: Positive
    batch_size: Positive
    precision: Precision
    attn_implementation: AttnImplementation
    sample_prompts: list[str]
    gate_action: Literal["warn", "fail"]
    gate_evidence: Literal["interval", "point"]  # interval: a breach fails only beyond noise (ta/eval/gates.py)
    max_q4_k_m_vs_f16_ppl_ratio: PositiveFloat
    max_task_drop_dpo_vs_sft: Annotated[float, Range(ge=0)]
    # fewer resamples make the interval's own ends noisy; more cost memory (resamples x held-out items)
    bootstrap_samples: Annotated[int, Range(ge=100, le=100_000)]
    bootstrap_seed: NonNegative  # numpy's generators take no negative seed
    bootstrap_confidence: Annotated[float, Range(ge=0.5, lt=1)]
    judge_enabled: bool
    judge_base_url: str
    judge_model: str
    judge_api_key_env: str  # the NAME of the variable holding the key, never the key
    judge_max_samples: Positive


@dataclass
class Harness:
    enabled: bool  # off: the stage writes {} without loading a model
    artifacts: list[Literal["merged", "gguf_q4_k_m"]]
    tasks: list[str]  # local (ta_pref) or lm-eval's own task names
    limit: NonNegative  # 0 = every document
    batch_size: Positive
    precision: Precision

    def check(self, where: str) -> None:
        if not self.artifacts or not self.tasks:
            raise ParamsError(f"{where}.{'artifacts' if not self.artifacts else 'tasks'}: empty; name at least one")


@dataclass
class Serve:
    host: str
    port: Annotated[int, Range(ge=1, le=65535)]
    api_key_env: str  # the NAME of the variable holding the key, never the key
    lora_name: str
    adapter_dir: str
    dtype: Literal["auto", "half", "float16", "bfloat16", "float", "float32"]
    max_model_len: Positive
    gguf: str
    ollama_model: str
    ollama_url: str
    temperature: Annotated[float, Range(ge=0)]
    top_p: Annotated[float, Range(gt=0, le=1)]
    repeat_penalty: PositiveFloat


@dataclass
class Params:
    lr: PositiveFloat  # the SFT learning rate, top level so that `dvc exp run -S lr=1e-4` works as typed
    reproducibility: Reproducibility
    base: Base
    selfinstruct: SelfInstruct
    prepare: Prepare
    sft: Sft
    dpo: Dpo
    merge: Merge
    gguf: Gguf
    quantize: Quantize
    eval: Eval
    harness: Harness
    serve: Serve

    def check(self, where: str) -> None:
        """Rules between sections."""
        if self.sft.padding_free and not self.sft.packing and self.prepare.max_tokens > self.sft.max_seq_len:
            raise ParamsError(
                f"{where}prepare.max_tokens: {self.prepare.max_tokens} exceeds sft.max_seq_len {self.sft.max_seq_len}"
                " with sft.padding_free on: padding-free batches cannot truncate a sample; lower"
                " prepare.max_tokens or raise sft.max_seq_len"
            )


def load_params(path: str | Path = PARAMS_FILE) -> Params:
    """Read and validate params.yaml; raise ParamsError naming the file and key on bad input."""
    import yaml

    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except FileNotFoundError as err:
        raise ParamsError(f"{path}: not found (run from the repository root)") from err
    except yaml.YAMLError as err:
        raise ParamsError(f"{path}: not valid YAML: {' '.join(str(err).split())}") from err
    return _build(Params, _without_retired_keys(raw, str(path)), str(path), "")


# Keys params.yaml once had: still accepted, with a warning naming what replaced them.
RETIRED_KEYS = {
    ("eval", "n_threads"): "reproducibility.threads (the torch and llama.cpp threads of every stage) replaces it",
}


def _without_retired_keys(raw: Any, file: str) -> Any:
    if not isinstance(raw, dict):
        return raw
    raw = dict(raw)
    for (section, key), replacement in RETIRED_KEYS.items():
        if isinstance(raw.get(section), dict) and key in raw[section]:
            raw[section] = {k: v for k, v in raw[section].items() if k != key}
            log.warning("%s: %s.%s is ignored: %s; remove it", file, section, key, replacement)
    return raw


def load_project_params() -> Params:
    """params.yaml of the working directory when there is one, else the one shipped with the project."""
    return load_params(PARAMS_FILE if PARAMS_FILE.is_file() else SHIPPED_PARAMS)


def _build(cls: type, raw: Any, file: str, prefix: str) -> Any:
    where = f"{file}: {prefix}" if prefix else f"{file}: "
    if not isinstance(raw, dict):
        raise ParamsError(f"{where or 'top level'}: expected a mapping, got {raw!r}")
    hints = typing.get_type_hints(cls, include_extras=True)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        dot = f"{prefix}." if prefix else ""
        raise ParamsError(f"{file}: unknown key {dot}{unknown[0]} (known: {', '.join(sorted(fields))})")
    required = [
        name
        for name, f in fields.items()
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    missing = [name for name in required if name not in raw]
    if missing:
        dot = f"{prefix}." if prefix else ""
        raise ParamsError(f"{file}: missing key {dot}{missing[0]} (see the project's params.yaml for its meaning)")
    values = {name: _coerce(hints[name], raw[name], file, f"{prefix}.{name}".lstrip(".")) for name in raw}
    built = cls(**values)
    if hasattr(built, "check"):
        built.check(f"{file}: {prefix}" if prefix else f"{file}: ")
    return built


def _coerce(hint: Any, value: Any, file: str, key: str) -> Any:
    if typing.get_origin(hint) is Annotated:
        inner, *extras = typing.get_args(hint)
        value = _coerce(inner, value, file, key)
        for extra in extras:
            if isinstance(extra, Range) and (problem := extra.violation(value)):
                raise ParamsError(f"{file}: {key}: {problem}")
        return value
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, file, key)
    origin = typing.get_origin(hint)
    if origin is Literal:
        choices = typing.get_args(hint)
        if value in choices and isinstance(value, str):
            return value
        raise ParamsError(f"{file}: {key}: {value!r} is not one of {', '.join(map(str, choices))}")
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(hint)
        for option in options:
            if isinstance(value, dict) and dataclasses.is_dataclass(option):
                return _coerce(option, value, file, key)  # a mapping: its own fields' errors are the ones to show
            try:
                return _coerce(option, value, file, key)
            except ParamsError:
                continue
        names = " or ".join(getattr(o, "__name__", str(o)) for o in options)
        raise ParamsError(f"{file}: {key}: expected {names}, got {value!r}")
    if origin is dict:
        if not isinstance(value, dict):
            raise ParamsError(f"{file}: {key}: expected a mapping, got {value!r}")
        return value
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


def validated(section: Any, file: str, prefix: str) -> Any:
    """A section changed in code (e.g. by command-line options) checked again as if it had been loaded."""
    return _build(type(section), dataclasses.asdict(section), file, prefix)


def choices(literal: Any) -> tuple[str, ...]:
    """The values of a Literal type, e.g. choices(MergeDtype) == ("float32", "float16", "bfloat16")."""
    return typing.get_args(literal)


def main(argv: list[str] | None = None) -> int:
    import argparse

    from ta.errors import report

    parser = argparse.ArgumentParser(description="Validate params.yaml: types, enums, ranges and rules.")
    parser.add_argument("--file", type=Path, default=PARAMS_FILE)
    args = parser.parse_args(argv)

    def body() -> None:
        load_params(args.file)
        print(f"{args.file}: ok")

    return report("params", body)


if __name__ == "__main__":
    raise SystemExit(main())
