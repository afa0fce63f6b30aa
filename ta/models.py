"""Loading and saving the models the stages pass along: the pinned base, an adapter over it, the merged model.

Where the base's weights live is ta/base_model.py's business (models/base/base.json); its tokenizer is always
in models/base. This module loads and saves.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from ta.base_model import BaseModelRef

log = logging.getLogger(__name__)

TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "tokenizer.model",
    "chat_template.jinja",
    "chat_template.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
)


def copy_tokenizer_files(src: str | Path, dst: Path) -> None:
    """Copy the tokenizer files as they are, rather than re-saving them through transformers, which
    drops keys llama.cpp's converter reads (add_bos_token, added_tokens_decoder)."""
    import shutil

    dst.mkdir(parents=True, exist_ok=True)
    for name in TOKENIZER_FILES:
        if (Path(src) / name).is_file():
            shutil.copyfile(Path(src) / name, dst / name)


def save_model(model: Any, out_dir: Path, **kwargs: Any) -> None:
    """`save_pretrained` as safetensors; for a PEFT adapter, with a byte-stable adapter_config.json.

    PEFT holds some settings as sets (`target_modules`, into which "all-linear" expands) and writes them as
    lists in set order, which follows the interpreter's string-hash seed: two identical runs would write
    different bytes, and DVC would see a changed output. Sorted, they load back as the same sets.
    """
    model.save_pretrained(str(out_dir), safe_serialization=True, **kwargs)
    config_file = out_dir / "adapter_config.json"
    if config_file.is_file():
        from peft import PeftConfig

        loaded = PeftConfig.from_pretrained(str(out_dir)).to_dict()
        config = json.loads(config_file.read_text(encoding="utf-8"))
        for key in [key for key, value in loaded.items() if isinstance(value, set)]:
            config[key] = sorted(config[key])
        config_file.write_text(json.dumps(config, indent=2, sort_keys=True), encoding="utf-8")  # as PEFT does


def resolve_precision(precision: str) -> str:
    """`auto`: bf16 on a GPU that has it (Ampere and later), fp16 on an older GPU, fp32 on CPU; a concrete
    precision as it is."""
    if precision != "auto":
        return precision
    import torch

    if not torch.cuda.is_available():
        return "fp32"
    return "bf16" if torch.cuda.is_bf16_supported() else "fp16"


def torch_dtype(precision: str) -> Any:
    import torch

    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[resolve_precision(precision)]


def check_attn_implementation(key: str, attn_implementation: str) -> None:
    """flash_attention_2 needs the flash-attn package and a CUDA GPU; say so before any weight loads."""
    import importlib.util

    if attn_implementation != "flash_attention_2":
        return
    import torch

    from ta.errors import ParamsError

    if importlib.util.find_spec("flash_attn") is None or not torch.cuda.is_available():
        raise ParamsError(
            f"params.yaml: {key}: flash_attention_2 needs a CUDA GPU and the flash-attn package "
            "(see requirements-gpu.txt); use sdpa"
        )


# Liger-Kernel's layer kernels; its (fused linear) cross-entropy would replace the forward TRL gives the model for
# its fused LM head, which already computes the loss without materialising the logits.
LIGER_KERNELS = {
    "rope": True,
    "rms_norm": True,
    "swiglu": True,
    "cross_entropy": False,
    "fused_linear_cross_entropy": False,
}
LIGER_VERSION = "0.8.5"


def check_liger_kernels(key: str, enabled: bool) -> None:
    """Liger's kernels are Triton kernels for CUDA GPUs, in the liger-kernel package; say so before any weight
    loads."""
    import importlib.util

    if not enabled:
        return
    import torch

    from ta.errors import ParamsError

    if importlib.util.find_spec("liger_kernel") is None:
        raise ParamsError(
            f"params.yaml: {key}: liger-kernel is not installed; on the GPU machine: "
            f".venv/bin/pip install liger-kernel=={LIGER_VERSION} (or set it to false)"
        )
    if not torch.cuda.is_available():
        raise ParamsError(f"params.yaml: {key}: Liger's kernels run on CUDA GPUs and this machine has none; set false")


def apply_liger_kernels(model: Any) -> None:
    """Liger's RMSNorm, SwiGLU and RoPE kernels in place of the decoder's own (a PEFT model's base model)."""
    from liger_kernel.transformers import _apply_liger_kernel_to_instance

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    log.info("Liger kernels for %s: %s", base.config.model_type, ", ".join(k for k, on in LIGER_KERNELS.items() if on))
    _apply_liger_kernel_to_instance(model=base, **LIGER_KERNELS)


def load_tokenizer(path: str | Path) -> Any:
    """The tokenizer of a model dir (models/base, an adapter or merged dir) as its tokenizer.json defines it.

    transformers 5's AutoTokenizer rebuilds a byte-level Qwen2Tokenizer from the vocabulary of any model_type
    qwen2 dir, which is right for Qwen's own tokenizer.json (same ids: tests/e2e/test_real_model.py) but not
    for the tiny model's SentencePiece one; the tiny tokenizer_config.json routes AutoTokenizer to
    tokenizer.json too (ta/train/tiny.py), and reading tokenizer.json here gives the same ids without
    importing torch (~3 s), which prepare's workers would pay.
    """
    from transformers import PreTrainedTokenizerFast  # without AutoTokenizer, which imports torch (~3 s)

    if (Path(path) / "tokenizer.json").is_file():
        return PreTrainedTokenizerFast.from_pretrained(str(path))
    from transformers import AutoTokenizer  # e.g. a SentencePiece tokenizer.model only

    return AutoTokenizer.from_pretrained(str(path))


def load_base_model(ref: BaseModelRef, dtype: Any = None, **extra: Any) -> Any:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(ref.name_or_path, dtype=dtype, **ref.from_pretrained_kwargs(), **extra)


def load_adapter_model(ref: BaseModelRef, adapter_dir: Path, dtype: Any = None) -> Any:
    """The base with a PEFT adapter on top (not merged), in eval mode."""
    from peft import PeftModel

    model = PeftModel.from_pretrained(load_base_model(ref, dtype), str(adapter_dir))
    return model.eval()
