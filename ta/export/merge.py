"""Fold an adapter into its base weights (PEFT merge_and_unload) and save what every runtime needs beside it.

The merged dir holds safetensors weights, the tokenizer files and chat template, and a
generation_config.json whose eos lists the chat end token (<|im_end|>) and the base eos, so that every
runtime stops at the end of the assistant turn.
"""

from __future__ import annotations

import logging
from pathlib import Path

from ta import chat
from ta.base_model import BaseModelRef
from ta.errors import MissingInputError
from ta.models import copy_tokenizer_files, load_tokenizer

log = logging.getLogger("merge")


def merge(ref: BaseModelRef, adapter_dir: Path, out_dir: Path, dtype: str) -> None:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, GenerationConfig

    if (adapter_dir / "adapter_config.json").is_file():
        # Merge in float32 whatever the target dtype: folding B·A into low-precision weights loses bits.
        kwargs = ref.from_pretrained_kwargs()
        try:
            base = AutoModelForCausalLM.from_pretrained(ref.name_or_path, dtype=torch.float32, **kwargs)
        except OSError as err:  # transformers' way of saying: no such model (locally, or offline on the hub)
            raise MissingInputError(f"{ref.name_or_path}: cannot load the base model: {err}") from None
        merged = PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload()
    elif (adapter_dir / "config.json").is_file():  # sft.method: full — dpo wrote a whole model: nothing to fold
        base = merged = AutoModelForCausalLM.from_pretrained(str(adapter_dir), dtype=torch.float32)
    else:
        raise MissingInputError(f"{adapter_dir}: neither a PEFT adapter (adapter_config.json) nor a model")
    merged = merged.to(getattr(torch, dtype))

    tokenizer_dir = adapter_dir if (adapter_dir / "tokenizer_config.json").is_file() else ref.name_or_path
    tokenizer = load_tokenizer(tokenizer_dir)
    end_ids = [tokenizer.convert_tokens_to_ids(chat.IM_END)] if chat.IM_END in tokenizer.get_vocab() else []
    base_eos = base.generation_config.eos_token_id if base.generation_config else None
    for eos in base_eos if isinstance(base_eos, list) else [base_eos, tokenizer.eos_token_id]:
        if eos is not None and eos not in end_ids:
            end_ids.append(eos)
    generation = (
        GenerationConfig.from_model_config(merged.config) if base.generation_config is None else base.generation_config
    )
    generation.eos_token_id = end_ids
    generation.pad_token_id = tokenizer.pad_token_id

    out_dir.mkdir(parents=True, exist_ok=True)
    merged.generation_config = generation
    merged.save_pretrained(str(out_dir), safe_serialization=True)
    copy_tokenizer_files(tokenizer_dir, out_dir)
    log.info("merged %s into %s (%s); eos ids %s", adapter_dir, out_dir, dtype, end_ids)
