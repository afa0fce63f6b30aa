"""Where llama.cpp's own HF→GGUF converter lives, and how to get it.

PyPI has no wheel of `convert_hf_to_gguf.py`, but the sdist of llama-cpp-python carries it (with the
`conversion/` package and the matching `gguf-py/`) under vendor/llama.cpp. Taking it from the sdist of
the installed version keeps the converter and the runtime that later loads the file in lockstep.

    python -m ta.export.llama_cpp                   # fetch the sdist of the installed version and extract it
    python -m ta.export.llama_cpp --sdist F.tar.gz  # extract from an sdist already downloaded

The files go to <venv>/share/llama.cpp-<version>/, outside the repository, so that queued DVC
experiments (which run in copies of the repo) find them too. `gguf.llama_cpp_dir` in params.yaml
points at a user's own llama.cpp checkout instead, as in the guide.
"""

from __future__ import annotations

import argparse
import logging
import subprocess
import sys
import tarfile
import tempfile
from importlib import metadata
from pathlib import Path
from typing import Any

from ta.errors import ExportError, report

log = logging.getLogger("llama_cpp")

CONVERTER = "convert_hf_to_gguf.py"
NEEDED = (CONVERTER, "conversion/", "gguf-py/")


class ConverterNotFound(ExportError):
    """No convert_hf_to_gguf.py where it should be."""


def installed_version() -> str:
    return metadata.version("llama-cpp-python")


def default_dir() -> Path:
    return Path(sys.prefix) / "share" / f"llama.cpp-{installed_version()}"


def converter_dir(llama_cpp_dir: str = "") -> Path:
    """The directory holding convert_hf_to_gguf.py: the user's checkout, or the extracted sdist."""
    where = Path(llama_cpp_dir).expanduser() if llama_cpp_dir else default_dir()
    if not (where / CONVERTER).is_file():
        hint = "check gguf.llama_cpp_dir in params.yaml" if llama_cpp_dir else "run `python -m ta.export.llama_cpp`"
        raise ConverterNotFound(f"{where / CONVERTER}: not found; {hint}")
    return where


def extract(sdist: Path, dest: Path) -> None:
    """Copy vendor/llama.cpp/{convert_hf_to_gguf.py,conversion/,gguf-py/} out of an sdist."""
    with tarfile.open(sdist) as tar:
        members = []
        for member in tar.getmembers():
            _, _, rest = member.name.partition("/vendor/llama.cpp/")
            if rest and rest.startswith(NEEDED) and (member.isfile() or member.isdir()):
                member.name = rest
                members.append(member)
        if not any(m.name == CONVERTER for m in members):
            raise ConverterNotFound(f"{sdist}: no vendor/llama.cpp/{CONVERTER} inside")
        dest.mkdir(parents=True, exist_ok=True)
        tar.extractall(dest, members=members, filter="data")


def open_gguf(path: Path, n_ctx: int, n_threads: int, logits_all: bool = False) -> Any:
    """A GGUF through llama.cpp with a bounded context (its logits buffer is n_ctx × vocabulary floats when
    logits_all: ~18 GiB at Qwen's 32k × 152k, so never the model's full context), every layer offloaded to
    the GPU when this llama.cpp build has GPU support (a CUDA build), and `n_threads` CPU threads."""
    import llama_cpp

    gpu_layers = -1 if llama_cpp.llama_supports_gpu_offload() else 0
    return llama_cpp.Llama(
        model_path=str(path),
        n_ctx=n_ctx,
        n_threads=n_threads,
        n_gpu_layers=gpu_layers,
        logits_all=logits_all,
        seed=0,
        verbose=False,
    )


def fetch_sdist(version: str, into: Path) -> Path:
    """Download the llama-cpp-python sdist of `version` with pip (honours the user's pip config)."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "-d", str(into)]
    subprocess.run([*cmd, f"llama-cpp-python=={version}"], check=True)
    (sdist,) = into.glob("llama_cpp_python-*.tar.gz")
    return sdist


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sdist", type=Path, help="an already downloaded llama-cpp-python sdist")
    parser.add_argument("--dest", type=Path, help="where to extract (default: <venv>/share/llama.cpp-<version>)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    dest = args.dest or default_dir()

    def body() -> None:
        if (dest / CONVERTER).is_file() and not args.sdist:
            log.info("converter already in %s", dest)
            return
        try:
            if args.sdist:
                extract(args.sdist, dest)
            else:
                with tempfile.TemporaryDirectory() as tmp:
                    extract(fetch_sdist(installed_version(), Path(tmp)), dest)
        except (subprocess.CalledProcessError, tarfile.TarError) as err:
            raise ExportError(f"cannot extract llama.cpp's converter: {err}") from None
        log.info("llama.cpp converter extracted to %s", dest)

    return report("llama_cpp", body)


if __name__ == "__main__":
    sys.exit(main())
