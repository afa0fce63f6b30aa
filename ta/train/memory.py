"""Peak GPU memory of a fine-tuning run, estimated from the model's shape: `python -m tools.estimate`.

With no arguments it prints the guide's table 1.2 (Qwen2-7B-Instruct, sequence length 2048, batch 1 and 4,
gradient checkpointing on as in the guide's command) beside this estimate. With arguments it breaks one
run down, e.g.

    python -m tools.estimate --model qwen2-7b --method qlora --batch-size 4 --zero-stage 2 --num-gpus 4
    python -m tools.estimate --model models/base --method full --precision fp32 --no-gradient-checkpointing

Per GPU, in GiB (2^30 bytes, what "24GB" on a GPU means). P parameters, T trainable ones, N GPUs, ZeRO
stage z, w bytes per weight (2 for fp16/bf16, 4 for fp32), s sequence length, b batch size:

  weights      full, lora: P·w (full without DeepSpeed: fp32 weights, AMP casts on the fly); ZeRO-3: /N.
               qlora: linear layers in NF4 with double-quantized constants (4.127 bits), the rest
               (embeddings, output head, norms, biases) in w.
  trainable    full: T·w gradients + 12 bytes Adam state (fp32 master copy, m, v), or 4 + 8 bytes without
               DeepSpeed; lora/qlora: the adapter in fp32 (PEFT's default) + 4 gradients + 8 Adam.
               Gradients /N from ZeRO-2, optimizer state /N from ZeRO-1.
  activations  per layer and token, kept for backward (SDPA/flash attention: no s×s score matrix):
               w·(4h + 2·q + 2·kv + 4i) — norm inputs, projections, attention output, the SwiGLU
               intermediates — plus the inputs LoRA dropout copies. Without gradient checkpointing every
               layer keeps them; with it each layer keeps its input (s·h·w) and one layer is recomputed.
  loss head    logits b·s·V in w, plus the fp32 log-softmax and its gradient: b·s·V·(w + 8).
  overhead     1 GiB: CUDA context and allocator slack.

It is an estimate of the allocations a run makes, not of fragmentation; trust it to ~15%.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ta.errors import MissingInputError

GIB = 2**30
OVERHEAD_BYTES = GIB
NF4_BITS = 4 + 8 / 64 + 32 / (64 * 256)  # 4-bit weight + 8-bit absmax per 64-block + fp32 per 256 absmax
METHODS = ("full", "lora", "qlora")
WEIGHT_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2}
LINEAR_NAMES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass(frozen=True)
class ModelShape:
    """What memory depends on in a Qwen2/Llama-style decoder."""

    name: str
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    intermediate: int
    vocab: int
    tied_embeddings: bool
    qkv_bias: bool = True

    @classmethod
    def from_config(cls, name: str, config: dict[str, Any]) -> ModelShape:
        return cls(
            name=name,
            hidden=config["hidden_size"],
            layers=config["num_hidden_layers"],
            heads=config["num_attention_heads"],
            kv_heads=config.get("num_key_value_heads") or config["num_attention_heads"],
            intermediate=config["intermediate_size"],
            vocab=config["vocab_size"],
            tied_embeddings=bool(config.get("tie_word_embeddings", False)),
            qkv_bias=config.get("model_type", "qwen2") == "qwen2",
        )

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads

    def linears(self) -> dict[str, tuple[int, int]]:
        """(in, out) features of each linear layer of one decoder layer."""
        q, kv, h, i = self.heads * self.head_dim, self.kv_heads * self.head_dim, self.hidden, self.intermediate
        return {
            "q_proj": (h, q),
            "k_proj": (h, kv),
            "v_proj": (h, kv),
            "o_proj": (q, h),
            "gate_proj": (h, i),
            "up_proj": (h, i),
            "down_proj": (i, h),
        }

    def linear_params(self) -> int:
        return self.layers * sum(n_in * n_out for n_in, n_out in self.linears().values())

    def other_params(self) -> int:
        """Embeddings, output head, norms and attention biases: what bitsandbytes leaves unquantized."""
        embeddings = self.vocab * self.hidden * (1 if self.tied_embeddings else 2)
        biases = self.heads * self.head_dim + 2 * self.kv_heads * self.head_dim if self.qkv_bias else 0
        return embeddings + self.layers * (2 * self.hidden + biases) + self.hidden

    def params(self) -> int:
        return self.linear_params() + self.other_params()


# Shapes from the models' config.json on the hub (Qwen2.5-7B has the shape of Qwen2-7B).
KNOWN_MODELS = {
    "qwen2-0.5b": ModelShape("Qwen2-0.5B", 896, 24, 14, 2, 4864, 151936, tied_embeddings=True),
    "qwen2-1.5b": ModelShape("Qwen2-1.5B", 1536, 28, 12, 2, 8960, 151936, tied_embeddings=True),
    "qwen2-7b": ModelShape("Qwen2-7B", 3584, 28, 28, 4, 18944, 152064, tied_embeddings=False),
    "qwen2.5-7b": ModelShape("Qwen2.5-7B", 3584, 28, 28, 4, 18944, 152064, tied_embeddings=False),
    "qwen2.5-14b": ModelShape("Qwen2.5-14B", 5120, 48, 40, 8, 13824, 152064, tied_embeddings=False),
}


@dataclass(frozen=True)
class Run:
    """The training knobs memory depends on."""

    method: str = "lora"
    precision: str = "fp16"
    seq_len: int = 2048
    batch_size: int = 1  # per GPU
    zero_stage: int = 0  # 0 = no DeepSpeed
    num_gpus: int = 1
    gradient_checkpointing: bool = True
    lora_r: int = 16
    lora_dropout: float = 0.05
    lora_targets: list[str] | str = field(default="all-linear")


def trainable_params(shape: ModelShape, run: Run) -> int:
    if run.method == "full":
        return shape.params()
    targets = LINEAR_NAMES if run.lora_targets == "all-linear" else run.lora_targets
    per_layer = sum(run.lora_r * (n_in + n_out) for name, (n_in, n_out) in shape.linears().items() if name in targets)
    return shape.layers * per_layer


def activation_bytes_per_token(shape: ModelShape, run: Run) -> tuple[int, int]:
    """(bytes one layer keeps per token for backward, bytes of a layer's input per token)."""
    w = WEIGHT_BYTES[run.precision]
    n_in = {name: dims[0] for name, dims in shape.linears().items()}
    q, kv = shape.linears()["q_proj"][1], shape.linears()["k_proj"][1]
    layer = w * (4 * shape.hidden + 2 * q + 2 * kv + 4 * shape.intermediate)
    if run.method != "full" and run.lora_dropout > 0:
        # PEFT applies dropout to each adapted module's input separately and keeps the result.
        targets = LINEAR_NAMES if run.lora_targets == "all-linear" else run.lora_targets
        layer += w * sum(n_in[name] for name in LINEAR_NAMES if name in targets)
    return layer, w * shape.hidden


def estimate(shape: ModelShape, run: Run) -> dict[str, float]:
    """Bytes per GPU by component, and their sum under "total"."""
    if run.method not in METHODS:
        raise ValueError(f"method {run.method!r} is not one of {', '.join(METHODS)}")
    w, n, z = WEIGHT_BYTES[run.precision], run.num_gpus, run.zero_stage
    trainable = trainable_params(shape, run)
    if run.method == "qlora":
        weights = shape.linear_params() * NF4_BITS / 8 + shape.other_params() * w
    elif run.method == "full" and z == 0:
        weights = shape.params() * 4.0  # AMP keeps fp32 weights, which double as the master copy
    else:
        weights = shape.params() * float(w)
    if z >= 3:
        weights /= n
    if run.method == "full":
        grad_bytes, optim_bytes, adapter_bytes = (4, 8, 0) if z == 0 else (w, 12, 0)
    else:
        grad_bytes, optim_bytes, adapter_bytes = 4, 8, 4
    per_layer, layer_input = activation_bytes_per_token(shape, run)
    tokens = run.seq_len * run.batch_size
    if run.gradient_checkpointing:
        activations = tokens * (shape.layers * layer_input + per_layer)
    else:
        activations = tokens * shape.layers * per_layer
    parts = {
        "weights": weights,
        "adapter": trainable * adapter_bytes,
        "gradients": trainable * grad_bytes / (n if z >= 2 else 1),
        "optimizer": trainable * optim_bytes / (n if z >= 1 else 1),
        "activations": float(activations),
        "loss_head": float(tokens * shape.vocab * (w + 8)),
        "overhead": float(OVERHEAD_BYTES),
    }
    parts["total"] = sum(parts.values())
    return parts


def peak_gib(shape: ModelShape, run: Run) -> float:
    return estimate(shape, run)["total"] / GIB


# The guide's table 1.2: (label, method, run precision, batch 1, batch 4). Full fine-tuning at batch 4: "-".
GUIDE_TABLE = (
    ("Full Finetune", "full", "FP16/BF16", "~80GB+ (OOM)", "-"),
    ("LoRA (ZeRO-2)", "lora", "FP16", "~24GB", "~28GB"),
    ("QLoRA (4-bit)", "qlora", "FP16 + Int4", "~14GB", "~16GB"),
)


def guide_table(shape: ModelShape = KNOWN_MODELS["qwen2-7b"], seq_len: int = 2048) -> str:
    """Markdown: the guide's table 1.2 beside this estimate (per GPU, fp16, gradient checkpointing on)."""
    lines = [
        f"{shape.name}, sequence length {seq_len}, fp16, gradient checkpointing on; GiB per GPU.",
        "",
        "| mode | precision | guide, batch 1 | estimate, batch 1 | guide, batch 4 | estimate, batch 4 "
        "| estimate, batch 4, ZeRO-2 on 4 GPUs |",
        "| :--- | :--- | :--- | ---: | :--- | ---: | ---: |",
    ]
    for label, method, precision, guide_b1, guide_b4 in GUIDE_TABLE:
        runs = [Run(method=method, seq_len=seq_len, batch_size=b) for b in (1, 4)]
        runs.append(Run(method=method, seq_len=seq_len, batch_size=4, zero_stage=2, num_gpus=4))
        b1, b4, zero2 = (f"{peak_gib(shape, run):.1f}" for run in runs)
        lines.append(f"| {label} | {precision} | {guide_b1} | {b1} | {guide_b4} | {b4} | {zero2} |")
    return "\n".join(lines)


def breakdown(shape: ModelShape, run: Run) -> str:
    parts = estimate(shape, run)
    zero = f"ZeRO-{run.zero_stage}" if run.zero_stage else "no ZeRO"
    ckpt = "on" if run.gradient_checkpointing else "off"
    lines = [
        f"{shape.name} ({shape.params() / 1e9:.2f}B params, {trainable_params(shape, run) / 1e6:.1f}M trainable), "
        f"{run.method}, {run.precision}, seq {run.seq_len}, batch {run.batch_size} per GPU, {zero} over "
        f"{run.num_gpus} GPU(s), gradient checkpointing {ckpt}"
    ]
    lines += [f"  {name:<12} {value / GIB:8.2f} GiB" for name, value in parts.items()]
    return "\n".join(lines)


def known_name(model: str) -> str:
    """The KNOWN_MODELS key of a name or hub id: Qwen/Qwen2.5-7B-Instruct -> qwen2.5-7b (instruct and base
    models have the same shape)."""
    return model.lower().rsplit("/", 1)[-1].removesuffix("-instruct")


def load_shape(model: str) -> ModelShape:
    """A known model name or hub id, or a directory (or config.json) of a Qwen2/Llama-style model."""
    if known_name(model) in KNOWN_MODELS and not Path(model).exists():
        return KNOWN_MODELS[known_name(model)]
    path = Path(model)
    config_file = path / "config.json" if path.is_dir() else path
    if not config_file.is_file():
        raise MissingInputError(f"{model}: neither a known model ({', '.join(KNOWN_MODELS)}) nor a config.json")
    try:
        return ModelShape.from_config(model, json.loads(config_file.read_text(encoding="utf-8")))
    except KeyError as err:
        raise MissingInputError(f"{config_file}: field {err} is missing; is it a decoder LM's config?") from None
