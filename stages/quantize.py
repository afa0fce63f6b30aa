"""Stage `quantize`: GGUF f16 → the quant types in params (default q4_k_m), through llama.cpp's C API.

Reads  params `quantize`, `gguf.outtype`; models/gguf/teachingassistant-<outtype>.gguf; models/merged
       (chat template for the Modelfile); params `serve` (Modelfile sampling) and `prepare.system_prompt`
Writes models/gguf/teachingassistant-<type>.gguf per type, models/ollama/Modelfile, metrics/quantize.json

Each file is read back and the stage fails if llama.cpp fell back to other tensor types
(ta/export/quantize.py): it is written beside its final path (`<name>.tmp`) and renamed there only once its
types passed, removed otherwise; the Modelfile's TEMPLATE is derived from the model's own chat template
(ta/export/modelfile.py).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import Any

from ta import libraries, paths
from ta.config import load_params
from ta.errors import MissingInputError, report
from ta.files import atomic_output, write_atomically

log = logging.getLogger("quantize")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")

    def body() -> None:
        libraries.check("quantize")  # the installed versions are the ones libraries.yaml records
        from ta.export.modelfile import write_modelfile
        from ta.export.quantize import check_types, quantize

        params = load_params()
        src = paths.gguf_file(params.gguf.outtype)
        if not src.is_file():
            raise MissingInputError(f"{src}: missing; run `dvc repro gguf` first")
        report_: dict[str, Any] = {params.gguf.outtype: {"bytes": src.stat().st_size}}
        for qtype in params.quantize.types:
            dst = paths.gguf_file(qtype)
            with atomic_output(dst) as unchecked:  # at dst only once its tensor types passed; removed otherwise
                quantize(src, unchecked, qtype, params.quantize.threads)
                report_[qtype] = check_types(unchecked, qtype, params.quantize.max_fallback_share)
            log.info("%s: %s bytes, types %s", dst, report_[qtype]["bytes"], report_[qtype]["tensor_types"])
        first = paths.gguf_file(params.quantize.types[0])
        write_modelfile(paths.MERGED_DIR, first, paths.MODELFILE, params.prepare.system_prompt, params.serve)
        write_atomically(paths.QUANTIZE_METRICS, json.dumps(report_, indent=2) + "\n")

    return report("quantize", body)


if __name__ == "__main__":
    sys.exit(main())
