"""Render and run vLLM's OpenAI-compatible server: the base model plus our LoRA adapter, unmerged (guide 4.1).

Reads models/base/base.json (which base model: models/base itself for tiny and local models, else the hub
"model" at its pinned "revision"), <serve.adapter_dir>/adapter_config.json (the LoRA rank) and the `serve`
params. The API key comes from the environment variable named by `serve.api_key_env`, never from params or git,
and reaches vLLM as its own `VLLM_API_KEY` environment variable: on the command line (`--api-key`) it would show
in `ps` and in vLLM's start-up log of its arguments.

    python -m serve.vllm --dry-run     # print the command (API key masked)
    python -m serve.vllm               # run it (needs a GPU and `pip install -r requirements-gpu.txt`)
"""

from __future__ import annotations

import argparse
import importlib.util
import ipaddress
import json
import logging
import os
import shlex
import subprocess
import sys
from pathlib import Path

from ta import paths
from ta.config import Serve, load_params
from ta.errors import ServeError, report

log = logging.getLogger(__name__)

# vLLM accepts only these --max-lora-rank values (vllm/config/lora.py, MaxLoRARanks).
VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
VLLM_DTYPES = ("auto", "half", "float16", "bfloat16", "float", "float32")
INSTALL_HINT = "vLLM is not installed: pip install -r requirements-gpu.txt (Linux + NVIDIA GPU)"
MASK = "****"
KEY_VARIABLE = "VLLM_API_KEY"  # vLLM's own: `vllm serve` requires it as a bearer token when set


def base_model(base_json: Path) -> tuple[str, str | None]:
    """(model, revision): the directory base.json sits in when the weights are there (tiny, a local model:
    models/base, after `dvc pull` on any machine), else the hub id at its pinned commit."""
    from ta.base_model import read_base_info
    from ta.errors import MissingInputError

    try:
        info = read_base_info(base_json)
    except MissingInputError as err:
        raise ServeError(str(err)) from None
    if info["source"] != "hub":
        return str(base_json.parent), None
    if not info.get("model"):
        raise ServeError(f'{base_json}: field "model" is missing')
    return str(info["model"]), info.get("revision") or None


def adapter_rank(adapter_dir: Path) -> int:
    """The largest LoRA rank in the adapter: `r`, or a bigger one from PEFT's per-module `rank_pattern`."""
    config_file = adapter_dir / "adapter_config.json"
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except FileNotFoundError as err:
        raise ServeError(f"{config_file}: not found (train the adapter first, or set serve.adapter_dir)") from err
    if not isinstance(config.get("r"), int):
        raise ServeError(f'{config_file}: field "r" (LoRA rank) is missing or not an integer')
    return max([config["r"], *(config.get("rank_pattern") or {}).values()])


def max_lora_rank(rank: int) -> int:
    """The smallest value vLLM accepts for --max-lora-rank that still holds an adapter of rank `rank`."""
    for allowed in VLLM_LORA_RANKS:
        if allowed >= rank:
            return allowed
    raise ServeError(f"adapter rank {rank} exceeds vLLM's largest --max-lora-rank {VLLM_LORA_RANKS[-1]}")


def vllm_command(params: Serve, base_json: Path = paths.BASE_INFO) -> list[str]:
    """The `vllm serve` argv for the base model with our adapter as the LoRA module `params.lora_name`.
    It never holds the API key: that goes in the environment (`vllm_env`)."""
    if params.dtype not in VLLM_DTYPES:
        raise ServeError(f"params.yaml: serve.dtype: {params.dtype!r} is not one of {', '.join(VLLM_DTYPES)}")
    model, revision = base_model(base_json)
    adapter_dir = Path(params.adapter_dir)
    argv = ["vllm", "serve", model]
    if revision:
        argv += ["--revision", revision]
    argv += [
        "--enable-lora",
        "--lora-modules",
        f"{params.lora_name}={adapter_dir}",
        "--max-lora-rank",
        str(max_lora_rank(adapter_rank(adapter_dir))),
        "--dtype",
        params.dtype,
        "--max-model-len",
        str(params.max_model_len),
        "--host",
        params.host,
        "--port",
        str(params.port),
    ]
    return argv


def vllm_env(api_key: str | None) -> dict[str, str]:
    """The server's environment: ours, with the key as VLLM_API_KEY. Without a key an inherited VLLM_API_KEY is
    dropped, so the server runs with exactly the key `serve.api_key_env` names, or none."""
    env = {name: value for name, value in os.environ.items() if name != KEY_VARIABLE}
    if api_key:
        env[KEY_VARIABLE] = api_key
    return env


def shown(argv: list[str], api_key: str | None) -> str:
    """The command as a shell line for printing and logs, the key masked."""
    return (f"{KEY_VARIABLE}={MASK} " if api_key else "") + shlex.join(argv)


def api_key_from_env(params: Serve) -> str | None:
    """The API key from the environment; refuse to listen beyond loopback without one."""
    key = os.environ.get(params.api_key_env) or None
    if key is None and not _is_loopback(params.host):
        raise ServeError(
            f"params.yaml: serve.host is {params.host} but ${params.api_key_env} is not set: "
            f"export {params.api_key_env}=<secret> before exposing the server"
        )
    if key is None:
        log.warning("$%s is not set: the server accepts requests without an API key", params.api_key_env)
    return key


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Render and run the vLLM server for the LoRA adapter.")
    parser.add_argument("--dry-run", action="store_true", help="print the command instead of running it")
    parser.add_argument("--base-json", type=Path, default=paths.BASE_INFO)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    def body() -> int:
        params = load_params().serve
        api_key = api_key_from_env(params)
        command = vllm_command(params, args.base_json)
        if args.dry_run:
            print(shown(command, api_key))
            return 0
        if importlib.util.find_spec("vllm") is None:
            raise ServeError(INSTALL_HINT)
        log.info("running %s", shown(command, api_key))
        # the `vllm` entry point sits beside this interpreter, whether or not its venv is activated
        return subprocess.call([str(Path(sys.executable).with_name("vllm")), *command[1:]], env=vllm_env(api_key))

    return report("vllm", body)


if __name__ == "__main__":
    sys.exit(main())
