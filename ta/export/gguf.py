"""HF -> GGUF with llama.cpp's own converter, and the parity checks that stop a broken file.

- token parity: chat-templated text, special tokens included, becomes the same ids in the HF tokenizer
  and in llama.cpp;
- logit parity: on those ids (at most `gguf.parity_max_tokens`, the context llama.cpp is opened with), the
  GGUF's logits match the merged HF model's, loaded in its own dtype, and agree on the top-1 token.

The tolerance scales with the model: a difference is measured against the spread of the HF logits over the
vocabulary (their standard deviation, averaged over positions), so `gguf.logit_tolerance` means the same for
the tiny model (logits of ±10) as for a random one (±1) or a 7B one (±30). An HF model that computes in bf16
gets 8× that budget: bf16 keeps 8 mantissa bits to f16's 11, and its rounding grows with depth (measured on
random Qwen2 models against their f16 GGUF: 0.03 of the spread at 2 layers, 0.11 at 24; in fp32 0.003 and
0.007). A top-1 "disagreement" within the budget is a tie at this precision, not a disagreement.
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


# How much more rounding an HF model computing in this dtype adds than the f16 GGUF's own weights (2^-11).
DTYPE_BUDGET = {"float32": 1.0, "float16": 1.0, "bfloat16": 8.0}
# ... and a GGUF written in this type: bf16 keeps 8 mantissa bits; q8_0 rounds every weight to 1/127 of its
# block's largest (measured on the tiny model: 0.12 of the spread, where f16 gives 0.01).
OUTTYPE_BUDGET = {"f16": 1.0, "bf16": 8.0, "q8_0": 16.0}


def logit_parity(model: Any, llm: Any, ids: list[int], tolerance: float, outtype: str = "f16") -> dict[str, float]:
    """Logits of the HF model and the GGUF on `ids`; `tolerance` is relative to the HF logits' spread, and
    scaled by the coarser of the HF compute dtype (DTYPE_BUDGET) and the GGUF's type (OUTTYPE_BUDGET)."""
    import numpy as np
    import torch

    with torch.no_grad():
        hf_logits = model(torch.tensor([ids], device=model.device)).logits[0].float().cpu().numpy()
    llm.reset()
    llm.eval(ids)
    cpp_logits = np.asarray(llm.scores[: len(ids)], dtype=np.float32)
    diff = np.abs(hf_logits - cpp_logits)
    scale = float(hf_logits.std(axis=-1).mean())
    budget = max(DTYPE_BUDGET[str(model.dtype).removeprefix("torch.")], OUTTYPE_BUDGET[outtype])
    allowed = tolerance * scale * budget
    cpp_pick = hf_logits[np.arange(len(ids)), cpp_logits.argmax(-1)]  # HF's logit for llama.cpp's top token
    return {
        "tokens": len(ids),
        "hf_dtype": str(model.dtype).removeprefix("torch."),
        "gguf_type": outtype,
        "max_abs_diff": round(float(diff.max()), 6),
        "mean_abs_diff": round(float(diff.mean()), 6),
        "logit_spread": round(scale, 6),
        "relative_max_diff": round(float(diff.max()) / scale, 6),
        "allowed_max_abs_diff": round(allowed, 6),
        "top1_agreement": round(float((cpp_pick >= hf_logits.max(-1) - allowed).mean()), 6),
    }


def check_parity(model_dir: Path, gguf_file: Path, probe_file: Path, params: Gguf) -> dict[str, Any]:
    import os

    import torch
    from transformers import AutoModelForCausalLM

    from ta.export.llama_cpp import open_gguf
    from ta.models import load_tokenizer

    if not any((model_dir / name).is_file() for name in ("tokenizer.json", "tokenizer.model", "vocab.json")):
        raise ParityError(
            f"{model_dir}: no tokenizer files (tokenizer.json, tokenizer.model or vocab.json); token parity needs "
            "the tokenizer the model was saved with (merge copies it beside the weights)"
        )
    tokenizer = load_tokenizer(model_dir)
    texts = probe_texts(tokenizer, probe_file, params.parity_samples)
    ids = tokenizer(texts[0], add_special_tokens=False)["input_ids"][: params.parity_max_tokens]
    llm = open_gguf(gguf_file, n_ctx=len(ids), n_threads=os.cpu_count() or 1, logits_all=True)
    try:
        tokens = token_parity(tokenizer, llm, texts)
        if tokens["mismatches"]:
            first = tokens["first_mismatch"]
            raise ParityError(
                f"{gguf_file}: tokenizer mismatch on {tokens['mismatches']}/{tokens['texts']} probe texts; "
                f"first: {first['text']!r}: HF {first['hf']} vs llama.cpp {first['llama_cpp']}"
            )
        device = "cuda" if torch.cuda.is_available() else "cpu"
        model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype="auto", device_map=device).eval()
        logits = logit_parity(model, llm, ids, params.logit_tolerance, params.outtype)
    finally:
        llm.close()
    if logits["max_abs_diff"] > logits["allowed_max_abs_diff"] or logits["top1_agreement"] < params.min_top1_agreement:
        raise ParityError(
            f"{gguf_file}: logits differ from {model_dir}: max |Δ| {logits['max_abs_diff']} = "
            f"{logits['relative_max_diff']} of the logits' spread {logits['logit_spread']} (allowed "
            f"{logits['allowed_max_abs_diff']}: gguf.logit_tolerance {params.logit_tolerance} for a "
            f"{logits['hf_dtype']} model and a {logits['gguf_type']} GGUF), top-1 agreement {logits['top1_agreement']} "
            f"(minimum gguf.min_top1_agreement {params.min_top1_agreement})"
        )
    return {"token_parity": tokens, "logit_parity": logits}
