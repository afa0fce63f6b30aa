"""Stage `quantize`: GGUF f16 → the quant types in params (default q4_k_m), through llama.cpp's C API.

Reads  params `quantize`, `gguf.outtype`; models/gguf/teachingassistant-<outtype>.gguf; models/merged
       (chat template for the Modelfile); params `serve` (Modelfile sampling) and `prepare.system_prompt`
Writes models/gguf/teachingassistant-<type>.gguf per type, models/ollama/Modelfile, metrics/quantize.json

llama.cpp silently falls back to another type for tensors whose rows are not a multiple of the block
size (256 for k-quants). The file name would still say q4_k_m, so after writing, the file is read back
with gguf's reader and the stage fails when more than `quantize.max_fallback_share` of the weight
tensors are not of the requested family.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections import Counter
from pathlib import Path
from typing import Any

from stages.gguf import gguf_path
from stages.params import ParamsError, load_params

log = logging.getLogger("quantize")

METRICS_FILE = Path("metrics/quantize.json")
MERGED_DIR = Path("models/merged")
MODELFILE = Path("models/ollama/Modelfile")

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


class QuantizeError(RuntimeError):
    pass


def quantize(src: Path, dst: Path, qtype: str, threads: int) -> None:
    import llama_cpp

    ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{qtype.upper()}", None)
    if ftype is None or qtype not in FAMILIES:
        raise ParamsError(f"params.yaml: quantize.types: unknown type {qtype!r} (known: {', '.join(FAMILIES)})")
    qparams = llama_cpp.llama_model_quantize_default_params()
    qparams.ftype = ftype
    qparams.nthread = threads
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        params = load_params()
        src = gguf_path(params.gguf.outtype)
        report: dict[str, Any] = {params.gguf.outtype: {"bytes": src.stat().st_size}}
        for qtype in params.quantize.types:
            dst = gguf_path(qtype)
            quantize(src, dst, qtype, params.quantize.threads)
            report[qtype] = check_types(dst, qtype, params.quantize.max_fallback_share)
            log.info("%s: %s bytes, types %s", dst, report[qtype]["bytes"], report[qtype]["tensor_types"])
        from serve.modelfile import write_modelfile

        write_modelfile(
            MERGED_DIR, gguf_path(params.quantize.types[0]), MODELFILE, params.prepare.system_prompt, params.serve
        )
    except (ParamsError, FileNotFoundError, QuantizeError, ValueError) as err:
        print(f"quantize: error: {err}", file=sys.stderr)
        return 2
    METRICS_FILE.parent.mkdir(parents=True, exist_ok=True)
    METRICS_FILE.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
