"""Write the Ollama Modelfile for a quantized GGUF, its TEMPLATE derived from the model's own chat template.

    python -m serve.modelfile [--model-dir models/merged] [--gguf …q4_k_m.gguf] [--out models/ollama/Modelfile]

The quantize stage writes models/ollama/Modelfile the same way (ta/export/modelfile.py); this command
regenerates it, e.g. for another GGUF or after editing serve params.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from ta import paths
from ta.config import load_project_params
from ta.errors import report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", type=Path, default=paths.MERGED_DIR)
    parser.add_argument("--gguf", type=Path, default=paths.gguf_file("q4_k_m"))
    parser.add_argument("--out", type=Path, default=paths.MODELFILE)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    def body() -> None:
        from ta.export.modelfile import write_modelfile

        params = load_project_params()
        write_modelfile(args.model_dir, args.gguf, args.out, params.prepare.system_prompt, params.serve)
        print(args.out)

    return report("modelfile", body)


if __name__ == "__main__":
    sys.exit(main())
