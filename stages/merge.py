"""Stage `merge`: fold the DPO adapter into the base weights (PEFT merge_and_unload).

Reads  params `merge`; models/base; models/dpo
Writes models/merged/: safetensors weights, the tokenizer files and chat template, and a
       generation_config.json whose eos lists the chat end token (<|im_end|>) and the base eos, so that
       every runtime stops at the end of the assistant turn.

Standalone, as in the guide (section 4.2):
    python -m stages.merge --adapter checkpoints/ta-lora-v1 --base Qwen/Qwen2-7B-Instruct --output merged_model
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from stages import chat
from stages.models import BaseModelRef, copy_tokenizer_files, load_tokenizer, read_base_ref
from stages.params import ParamsError, load_params

log = logging.getLogger("merge")

ADAPTER_DIR = Path("models/dpo")
OUT_DIR = Path("models/merged")
DTYPES = ("float32", "float16", "bfloat16")


def merge(ref: BaseModelRef, adapter_dir: Path, out_dir: Path, dtype: str) -> None:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, GenerationConfig

    if dtype not in DTYPES:
        raise ParamsError(f"params.yaml: merge.dtype: {dtype!r} is not one of {', '.join(DTYPES)}")
    if (adapter_dir / "adapter_config.json").is_file():
        # Merge in float32 whatever the target dtype: folding B·A into low-precision weights loses bits.
        kwargs = ref.from_pretrained_kwargs()
        base = AutoModelForCausalLM.from_pretrained(ref.name_or_path, dtype=torch.float32, **kwargs)
        merged = PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload()
    elif (adapter_dir / "config.json").is_file():  # sft.method: full — dpo wrote a whole model: nothing to fold
        base = merged = AutoModelForCausalLM.from_pretrained(str(adapter_dir), dtype=torch.float32)
    else:
        raise FileNotFoundError(f"{adapter_dir}: neither a PEFT adapter (adapter_config.json) nor a model")
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--adapter", type=Path, default=ADAPTER_DIR, help="PEFT adapter dir (default: models/dpo)")
    parser.add_argument("--base", help="base model id or path (default: the one pinned in models/base/base.json)")
    parser.add_argument("--output", type=Path, default=OUT_DIR, help="output dir (default: models/merged)")
    parser.add_argument("--dtype", choices=DTYPES, help="weight dtype (default: params.yaml merge.dtype)")
    parser.add_argument("--trust-remote-code", action="store_true", help="allow the base repo's own model code")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        dtype = args.dtype or load_params().merge.dtype
        ref = BaseModelRef(args.base, None, args.trust_remote_code) if args.base else read_base_ref()
        merge(ref, args.adapter, args.output, dtype)
    except (ParamsError, FileNotFoundError, OSError) as err:
        print(f"merge: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
