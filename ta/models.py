"""Loading and saving the models the stages pass along: the pinned base, an adapter over it, the merged model.

Where the base lives is ta/base_model.py's business (models/base/base.json); this module loads and saves.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ta.base_model import BaseModelRef

TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "tokenizer.model",
    "chat_template.jinja",
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


def torch_dtype(precision: str) -> Any:
    import torch

    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def load_tokenizer(path: str | Path, ref: BaseModelRef | None = None) -> Any:
    """The tokenizer as its tokenizer.json defines it.

    transformers 5's AutoTokenizer ignores tokenizer.json for model_type qwen2 and rebuilds a byte-level
    Qwen2Tokenizer, which is wrong for the tiny model's SentencePiece vocabulary (and would break
    HF/llama.cpp token parity). tokenizer.json is the complete definition for real Qwen models too.
    """
    from transformers import PreTrainedTokenizerFast  # without AutoTokenizer, which imports torch (~3 s)

    if ref is None and (Path(path) / "tokenizer.json").is_file():
        return PreTrainedTokenizerFast.from_pretrained(str(path))
    if ref is not None and Path(ref.name_or_path, "tokenizer.json").is_file():
        return PreTrainedTokenizerFast.from_pretrained(ref.name_or_path)
    from transformers import AutoTokenizer

    kwargs = ref.from_pretrained_kwargs() if ref else {}
    kwargs.pop("use_safetensors", None)
    return AutoTokenizer.from_pretrained(str(path), **kwargs)


def load_base_model(ref: BaseModelRef, dtype: Any = None, **extra: Any) -> Any:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(ref.name_or_path, dtype=dtype, **ref.from_pretrained_kwargs(), **extra)


def load_adapter_model(ref: BaseModelRef, adapter_dir: Path, dtype: Any = None) -> Any:
    """The base with a PEFT adapter on top (not merged), in eval mode."""
    from peft import PeftModel

    model = PeftModel.from_pretrained(load_base_model(ref, dtype), str(adapter_dir))
    return model.eval()
