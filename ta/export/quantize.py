"""GGUF -> quantized GGUF through llama.cpp's C API, and a read-back of the tensor types it really wrote.

llama.cpp silently falls back to another type for tensors whose rows are not a multiple of the block
size (256 for k-quants). The file name would still say q4_k_m, so after writing, the file is read back
with gguf's reader and the stage fails when more than `quantize.max_fallback_share` of the weight
tensors are not of the requested family.
"""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path
from typing import Any

from ta.errors import ExportError

log = logging.getLogger("quantize")

# Tensor types a quant "family" may legitimately contain: q4_k_m keeps some tensors in q6_k by design,
# and 1-D tensors (norms, biases) always stay f32.
FAMILIES = {
    "q4_k_m": {"Q4_K", "Q6_K"},
    "q4_k_s": {"Q4_K", "Q5_K"},
    "q5_k_m": {"Q5_K", "Q6_K"},
    "q6_k": {"Q6_K"},
    "q8_0": {"Q8_0"},
    "q4_0": {"Q4_0", "Q6_K"},
}


class QuantizeError(ExportError):
    """llama.cpp could not quantize, or fell back from the requested type."""


def quantize(src: Path, dst: Path, qtype: str, threads: int) -> None:
    import llama_cpp

    ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{qtype.upper()}", None)
    if ftype is None or qtype not in FAMILIES:
        raise QuantizeError(f"llama.cpp {llama_cpp.__version__} has no quantization type {qtype!r}")
    qparams = llama_cpp.llama_model_quantize_default_params()
    qparams.ftype = ftype
    qparams.nthread = threads
    # A q8_0 source (gguf.outtype) is already quantized: llama.cpp refuses it unless asked. Rounding twice costs a
    # little more than quantizing from f16 once, which quantize.json's parity and eval's perplexity then show.
    source_types, _ = tensor_types(src)
    if any(t.startswith(("Q", "IQ", "TQ")) for t in source_types):
        log.warning("%s is already quantized (%s): requantizing it to %s", src, dict(source_types), qtype)
        qparams.allow_requantize = True
    rc = llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), qparams)
    if rc != 0:
        raise QuantizeError(f"{src}: llama_model_quantize to {qtype} failed (code {rc})")


def tensor_types(path: Path) -> tuple[Counter[str], Counter[str]]:
    """Histogram of tensor types in a GGUF: all tensors, and the 2-D weight matrices only."""
    from gguf import GGUFReader

    every, matrices = Counter(), Counter()
    for tensor in GGUFReader(str(path)).tensors:
        name = tensor.tensor_type.name
        every[name] += 1
        if len(tensor.shape) >= 2:
            matrices[name] += 1
    return every, matrices


def check_types(path: Path, qtype: str, max_fallback_share: float) -> dict[str, Any]:
    every, matrices = tensor_types(path)
    expected = FAMILIES[qtype]
    fallback = sum(n for t, n in matrices.items() if t not in expected)
    share = fallback / max(1, sum(matrices.values()))
    if share > max_fallback_share:
        raise QuantizeError(
            f"{path}: {fallback} of {sum(matrices.values())} weight matrices are not {'/'.join(sorted(expected))} "
            f"({dict(matrices)}); llama.cpp fell back from {qtype} — are hidden/intermediate sizes multiples of 256?"
        )
    return {
        "tensor_types": dict(sorted(every.items())),
        "fallback_share": round(share, 6),
        "bytes": path.stat().st_size,
    }
