"""HF -> GGUF with llama.cpp's own converter, and the parity checks that stop a broken file.

- token parity: chat-templated text, special tokens included, becomes the same ids in the HF tokenizer
  and in llama.cpp;
- logit parity: on those ids, the GGUF's logits match the merged HF model's within
  `gguf.logit_tolerance` (max absolute difference) and agree on the top-1 token.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path
from typing import Any

from ta.config import Gguf
from ta.errors import ExportError
from ta.export.llama_cpp import converter_dir

log = logging.getLogger("gguf")


class ParityError(ExportError):
    """The GGUF does not tokenize or compute what the HF model does."""


def convert(model_dir: Path, outfile: Path, outtype: str, llama_cpp_dir: str) -> None:
    converter = converter_dir(llama_cpp_dir) / "convert_hf_to_gguf.py"
    outfile.parent.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, str(converter), str(model_dir), "--outtype", outtype, "--outfile", str(outfile)]
    log.info("running %s", " ".join(cmd))
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        tail = "\n".join(result.stderr.strip().splitlines()[-15:])
        raise ExportError(f"{converter} failed on {model_dir} (exit {result.returncode}):\n{tail}")


def probe_texts(tokenizer: Any, probe_file: Path, n: int) -> list[str]:
    """Chat-templated conversations from the eval split, plus edge cases around special tokens."""
    with probe_file.open(encoding="utf-8") as f:
        conversations = [json.loads(line)["messages"] for line, _ in zip(f, range(n), strict=False)]
    texts = [tokenizer.apply_chat_template(m, tokenize=False) for m in conversations]
    texts += [
        tokenizer.apply_chat_template(conversations[0][:-1], tokenize=False, add_generation_prompt=True),
        "<|im_start|>user\n  两个空格 and  English, 123 + 4.5 = ?<|im_end|>\n",
        "emoji 🙂 and rare 龘 characters<|endoftext|>",
    ]
    return texts


def token_parity(tokenizer: Any, llm: Any, texts: list[str]) -> dict[str, Any]:
    mismatches = []
    for text in texts:
        hf_ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        cpp_ids = llm.tokenize(text.encode("utf-8"), add_bos=False, special=True)
        if hf_ids != cpp_ids:
            mismatches.append({"text": text[:80], "hf": hf_ids[:40], "llama_cpp": cpp_ids[:40]})
    return {"texts": len(texts), "mismatches": len(mismatches), "first_mismatch": mismatches[0] if mismatches else None}


def logit_parity(model: Any, llm: Any, ids: list[int]) -> dict[str, float]:
    import numpy as np
    import torch

    with torch.no_grad():
        hf_logits = model(torch.tensor([ids])).logits[0].float().numpy()
    llm.reset()
    llm.eval(ids)
    cpp_logits = np.asarray(llm.scores[: len(ids)], dtype=np.float32)
    diff = np.abs(hf_logits - cpp_logits)
    return {
        "tokens": len(ids),
        "max_abs_diff": round(float(diff.max()), 6),
        "mean_abs_diff": round(float(diff.mean()), 6),
        "top1_agreement": round(float((hf_logits.argmax(-1) == cpp_logits.argmax(-1)).mean()), 6),
    }


def check_parity(model_dir: Path, gguf_file: Path, probe_file: Path, params: Gguf) -> dict[str, Any]:
    import torch
    from llama_cpp import Llama
    from transformers import AutoModelForCausalLM

    from ta.models import load_tokenizer

    if not any((model_dir / name).is_file() for name in ("tokenizer.json", "tokenizer.model", "vocab.json")):
        raise ParityError(
            f"{model_dir}: no tokenizer files (tokenizer.json, tokenizer.model or vocab.json); token parity needs "
            "the tokenizer the model was saved with (merge copies it beside the weights)"
        )
    tokenizer = load_tokenizer(model_dir)
    texts = probe_texts(tokenizer, probe_file, params.parity_samples)
    llm = Llama(str(gguf_file), n_ctx=0, logits_all=True, verbose=False, seed=0, n_threads=2)
    tokens = token_parity(tokenizer, llm, texts)
    if tokens["mismatches"]:
        first = tokens["first_mismatch"]
        raise ParityError(
            f"{gguf_file}: tokenizer mismatch on {tokens['mismatches']}/{tokens['texts']} probe texts; "
            f"first: {first['text']!r}: HF {first['hf']} vs llama.cpp {first['llama_cpp']}"
        )
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).eval()
    ids = tokenizer(texts[0], add_special_tokens=False)["input_ids"][: params.parity_max_tokens]
    logits = logit_parity(model, llm, ids)
    if logits["max_abs_diff"] > params.logit_tolerance or logits["top1_agreement"] < params.min_top1_agreement:
        raise ParityError(
            f"{gguf_file}: logits differ from {model_dir}: max |Δ| {logits['max_abs_diff']} "
            f"(tolerance {params.logit_tolerance}), top-1 agreement {logits['top1_agreement']} "
            f"(minimum {params.min_top1_agreement})"
        )
    return {"token_parity": tokens, "logit_parity": logits}
