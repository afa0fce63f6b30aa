"""The lock files (every package pinned with its hashes) and libraries.yaml, the versions stages are built with.

    python -m tools.lock            # re-resolve the three lock files from requirements*.txt, rewrite libraries.yaml
    python -m tools.lock --check    # offline: exit 1, one line per problem, unless locks and manifest agree
    python -m tools.lock --manifest # rewrite libraries.yaml only (after editing a lock by hand)

The people-edited files stay `requirements*.txt` (top-level pins); the locks are resolved from them by standard
tools, never edited by hand:

    requirements.lock       ← requirements.txt                          pip-compile (pip-tools), hashes
    requirements-test.lock  ← requirements.txt + requirements-test.txt  pip-compile, hashes
    requirements-gpu.lock   ← requirements-gpu.txt (vLLM's own venv)    uv, for Linux x86_64 / CUDA / Python 3.11

`make install` / `make test` install the CPU locks with `pip --require-hashes`; CI therefore runs on exactly
the locked set. torch is the one package left out of the CPU locks: its build differs per machine (the CPU
wheel here, a CUDA one on a GPU box) while its version does not, so the Makefile installs `torch==<pin>`
first and the locks record only its dependencies. Re-resolving needs the package index (PyPI); `make lock`
runs this module with pinned pip-tools and uv in a throwaway venv.

libraries.yaml records the versions of the libraries whose upgrade can change what a stage produces. Each
stage lists, in dvc.yaml, the keys of the libraries its code imports (directly or through another listed
library's requirements) as params from that file, so a changed version reruns exactly the stages that use it;
ta/libraries.py makes a stage refuse to run when the installed versions differ from the file.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MANIFEST = ROOT / "libraries.yaml"


@dataclass(frozen=True)
class Lock:
    """One lock file: the inputs it is resolved from and by which tool."""

    path: str
    inputs: tuple[str, ...]
    tool: str  # "pip-compile" or "uv"


LOCKS = (
    Lock("requirements.lock", ("requirements.txt",), "pip-compile"),
    Lock("requirements-test.lock", ("requirements.txt", "requirements-test.txt"), "pip-compile"),
    Lock("requirements-gpu.lock", ("requirements-gpu.txt",), "uv"),
)
UNLOCKED = ("torch",)  # installed first, per machine (see the module docstring)

# The libraries whose version can change a stage's outputs (numerics, formats, tokenisation, training loops),
# by distribution name. Pure-Python helpers (yaml, orjson, tqdm, dvc itself) do not belong here.
LIBRARIES = (
    "torch",
    "transformers",
    "tokenizers",
    "sentencepiece",
    "safetensors",
    "accelerate",
    "peft",
    "trl",
    "datasets",
    "bitsandbytes",
    "deepspeed",
    "gguf",
    "llama-cpp-python",
)

PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(\[[^\]]*\])?==([^\s;\\]+)")
HASH = re.compile(r"--hash=sha256:[0-9a-f]{64}")


def canonical(name: str) -> str:
    """PEP 503 name: `Llama_CPP.python` → `llama-cpp-python`."""
    return re.sub(r"[-_.]+", "-", name).lower()


def read_pins(path: Path) -> dict[str, str]:
    """The `name==version` pins of a requirements or lock file, by canonical name."""
    pins: dict[str, str] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        m = PIN.match(line.strip())
        if m:
            pins[canonical(m.group(1))] = m.group(3)
    return pins


def read_lock(path: Path) -> tuple[dict[str, str], list[str]]:
    """(pins, problems) of a lock file: every entry must be `name==version` with at least one sha256 hash."""
    pins: dict[str, str] = {}
    problems: list[str] = []
    entry: tuple[str, str, int] | None = None
    hashes = 0

    def close() -> None:
        if entry is not None and hashes == 0:
            problems.append(f"{path.name}:{entry[2]}: {entry[0]}=={entry[1]} has no --hash")

    for number, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if raw[0].isspace():  # a continuation of the entry above
            hashes += len(HASH.findall(line))
            continue
        close()
        m = PIN.match(line)
        if not m:
            problems.append(f"{path.name}:{number}: not a pinned requirement: {line[:80]}")
            entry = None
            continue
        entry, hashes = (canonical(m.group(1)), m.group(3), number), len(HASH.findall(line))
        pins[entry[0]] = entry[1]
    close()
    return pins, problems


def manifest_from(pins: dict[str, str]) -> dict[str, str]:
    """libraries.yaml's content: the locked version of each of LIBRARIES (torch from requirements.txt)."""
    return {name: pins[name] for name in LIBRARIES if name in pins}


def render_manifest(versions: dict[str, str]) -> str:
    lines = [
        "# Generated by `python -m tools.lock` from the lock files; do not edit by hand.",
        "# The versions the pipeline's artifacts are built with. Each stage in dvc.yaml lists the keys it",
        "# depends on as params, so an upgrade here reruns exactly those stages; a stage refuses to run when",
        "# the installed version differs (ta/libraries.py). torch: the version, whatever the build (cpu, cu128).",
    ]
    lines += [f'{name}: "{version}"' for name, version in versions.items()]  # quoted: YAML reads 1.10 as a float
    return "\n".join(lines) + "\n"


def expected_manifest(root: Path = ROOT) -> dict[str, str]:
    pins, _ = read_lock(root / "requirements.lock")
    pins.update({k: v for k, v in read_pins(root / "requirements.txt").items() if k in UNLOCKED})
    return manifest_from(pins)


def check(root: Path = ROOT) -> list[str]:
    """Every problem with the locks and the manifest, one line each; [] when all agree."""
    import yaml

    problems: list[str] = []
    locked: dict[str, dict[str, str]] = {}
    for lock in LOCKS:
        path = root / lock.path
        if not path.is_file():
            problems.append(f"{lock.path}: missing; run `make lock`")
            continue
        pins, bad = read_lock(path)
        locked[lock.path] = pins
        problems += bad
        for source in lock.inputs:
            for name, version in read_pins(root / source).items():
                if lock.tool == "pip-compile" and name in UNLOCKED:
                    if name in pins:
                        problems.append(f"{lock.path}: {name} must not be locked (installed first, per machine)")
                    continue
                if pins.get(name) != version:
                    problems.append(
                        f"{lock.path}: {name} is {pins.get(name, 'missing')}, {source} pins {version}; run `make lock`"
                    )
    torch = read_pins(root / "requirements.txt").get("torch")
    makefile = re.search(r"^TORCH_VERSION := (\S+)$", (root / "Makefile").read_text(encoding="utf-8"), re.M)
    if makefile is None or makefile.group(1) != torch:
        problems.append(
            f"Makefile: TORCH_VERSION is {makefile and makefile.group(1)}, requirements.txt pins torch {torch}"
        )
    if "requirements.lock" in locked and "requirements-test.lock" in locked:
        test = locked["requirements-test.lock"]
        for name, version in locked["requirements.lock"].items():
            if test.get(name) != version:
                problems.append(
                    f"requirements-test.lock: {name} is {test.get(name, 'missing')}, requirements.lock has {version}"
                )
    if (root / "requirements.lock").is_file():
        want = expected_manifest(root)
        have = (
            yaml.safe_load((root / MANIFEST.name).read_text(encoding="utf-8"))
            if (root / MANIFEST.name).is_file()
            else None
        )
        if have != want:
            problems.append(f"{MANIFEST.name}: differs from the locks ({want}); run `python -m tools.lock --manifest`")
    return problems


def resolve(lock: Lock, upgrade: bool, root: Path = ROOT) -> None:
    """Re-resolve one lock file from its inputs (needs the package index). Without `upgrade`, pins that still
    satisfy the inputs are kept, so bumping one top-level pin changes only what it must."""
    if lock.tool == "pip-compile":
        command = [
            "pip-compile", "--quiet", "--generate-hashes", "--strip-extras", "--no-emit-find-links",
            "--no-emit-index-url", "--no-emit-trusted-host", "--no-annotate", *(["--upgrade"] if upgrade else []),
            *[f"--unsafe-package={name}" for name in UNLOCKED],
            "--output-file", lock.path, *lock.inputs,
        ]  # fmt: skip
    else:
        command = [
            "uv", "pip", "compile", "--quiet", "--generate-hashes", "--no-annotate",
            *(["--upgrade"] if upgrade else []), "--python-platform", "x86_64-manylinux_2_28",
            "--python-version", "3.11", "--output-file", lock.path, *lock.inputs,
        ]  # fmt: skip
    if shutil.which(command[0]) is None:
        sys.exit(f"tools.lock: error: {command[0]} not found; run `make lock` (it installs pip-tools and uv)")
    print("$", " ".join(command), flush=True)
    subprocess.run(command, cwd=root, check=True)


def write_manifest(root: Path = ROOT) -> None:
    (root / MANIFEST.name).write_text(render_manifest(expected_manifest(root)), encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--check", action="store_true", help="offline: report where locks and manifest disagree")
    mode.add_argument("--manifest", action="store_true", help="rewrite libraries.yaml from the locks only")
    parser.add_argument("--upgrade", action="store_true", help="move every unpinned dependency to its newest release")
    parser.add_argument("--only", action="append", choices=[lock.path for lock in LOCKS], help="re-resolve this lock")
    args = parser.parse_args(argv)
    if args.check:
        problems = check()
        for problem in problems:
            print(f"tools.lock: {problem}", file=sys.stderr)
        return 1 if problems else 0
    if not args.manifest:
        for lock in LOCKS:
            if not args.only or lock.path in args.only:
                resolve(lock, args.upgrade)
    write_manifest()
    print(f"wrote {MANIFEST.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
