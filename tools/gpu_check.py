"""The GPU check: the pipeline's SFT and DPO on a Qwen2.5-0.5B-shaped model, then its adapter served by vLLM.

    python -m tools.gpu_check --work /tmp/gpu-check               # on a CUDA machine: ~5-8 min on one H200
    python -m tools.gpu_check --work /tmp/gpu-check --dry-run     # anywhere: the plan, params validated
    python -m tools.gpu_check --work /tmp/gpu-check --vllm-python .venv-gpu/bin/python   # vLLM in its own venv

1. tools/qwen_shaped.py builds a random model of Qwen2.5-0.5B's shape (hidden 896, MLP 4864, 24 layers, 14
   heads, 2 key/value heads, tied 151,936-row embedding, bf16 in two shards) with the real Qwen2 tokenizer;
2. a fresh copy of this repository runs `dvc exp run -S base.model=<that dir> ... dpo`: base → prepare → sft
   → dpo, exactly the stages a user runs, with short budgets (CHECK_PARAMS), precision auto (bf16) and sdpa;
3. from each training stage's log: tokens per second, the MFU they make (training FLOPs per token as TRL
   counts them, 6 per parameter plus attention, over the GPU's dense bf16 peak in TRL's table) and the
   measured peak GPU memory, set against the estimate of ta/train/memory.py for the same run;
4. `python -m serve.vllm` serves models/base with the DPO adapter (vLLM, requirements-gpu.txt) and
   serve/vllm_client.py must get an answer from the adapter.

Writes <work>/gpu_check.json and prints it; exit code 1 when a step failed (or vLLM was not found).
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from ta.errors import UserError, report

REPO = Path(__file__).resolve().parent.parent
SHAPE_0_5B = {"hidden": 896, "intermediate": 4864, "layers": 24, "heads": 14, "kv_heads": 2}
CHECK_PARAMS: dict[str, Any] = {
    "sft": {
        "max_steps": 40,
        "per_device_train_batch_size": 8,
        "max_seq_len": 512,
        "eval_steps": 40,
        "save_steps": 0,
        "logging_steps": 5,
        "early_stopping_patience": 0,
        "precision": "auto",
        "attn_implementation": "sdpa",
    },
    "dpo": {
        "max_steps": 20,
        "per_device_train_batch_size": 4,
        "max_length": 512,
        "eval_steps": 20,
        "save_steps": 0,
        "logging_steps": 5,
        "precision": "auto",
        "attn_implementation": "sdpa",
    },
}
PROMPT = "你好，请介绍一下你自己。"
THROUGHPUT = re.compile(r"throughput: (\d+) tokens in ([\d.]+) s, (\d+) tokens/s")
PEAK = re.compile(r"peak GPU memory on rank 0: ([\d.]+) GiB allocated, ([\d.]+) GiB reserved")


def peak_flops(gpu_name: str) -> float | None:
    """The GPU's dense bf16 peak FLOP/s, from TRL's table (TorchTitan's figures); None for a GPU it lacks."""
    from trl.trainer.utils import get_peak_flops

    return get_peak_flops(gpu_name, "bfloat16")


def flops_per_token(model_dir: Path, seq_len: int) -> int:
    """Training FLOPs per token (forward and backward) of the model, as TRL counts them for its own MFU."""
    from transformers import AutoConfig
    from trl.trainer.utils import compute_flops_per_token

    return compute_flops_per_token(AutoConfig.from_pretrained(str(model_dir)), seq_len)


class CheckFailed(UserError):
    exit_code = 1


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def dvc_command(model_dir: Path, port: int) -> list[str]:
    from tools.profile import overrides

    command = ["dvc", "exp", "run"]
    for override in [*overrides(CHECK_PARAMS), f"base.model='{model_dir}'", f"serve.port={port}"]:
        command += ["-S", override]
    return [*command, "dpo"]


def copy_repo(dest: Path) -> None:
    """This repository's files (tracked and untracked-not-ignored) in a fresh git repo with DVC initialised."""
    ls_files = ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"]
    listed = subprocess.run(ls_files, cwd=REPO, check=True, capture_output=True).stdout.decode()
    for rel in filter(None, listed.split("\0")):
        if (REPO / rel).is_file() and rel != "dvc.lock" and rel.split("/")[0] not in ("metrics", "dvclive"):
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / rel, dest / rel)
    git = ["git", "-c", "user.name=gpu-check", "-c", "user.email=gpu-check@localhost"]
    subprocess.run(["git", "init", "-q", "-b", "main"], cwd=dest, check=True)
    if not (dest / ".dvc").is_dir():
        subprocess.run([tool("dvc"), "init", "-q"], cwd=dest, check=True)
    subprocess.run(["git", "add", "-A"], cwd=dest, check=True)
    subprocess.run([*git, "commit", "-q", "-m", "gpu check"], cwd=dest, check=True)


def tool(name: str) -> str:
    beside = Path(sys.executable).with_name(name)
    return str(beside) if beside.is_file() else name


def stage_logs(output: str) -> dict[str, str]:
    """`dvc exp run` output cut into each stage's part ("Running stage 'sft':" ... next stage)."""
    parts = re.split(r"Running stage '(\w+)':", output)
    return {parts[i]: parts[i + 1] for i in range(1, len(parts) - 1, 2)}


def training_figures(
    log: str, estimate_gib: float | None, flops: int | None = None, peak: float | None = None
) -> dict[str, Any]:
    """What a training stage's log says (tokens/s, peak memory), with the MFU (%) those tokens/s make on one GPU
    given the training FLOPs per token and the GPU's peak FLOP/s (TRL's compute_mfu)."""
    figures: dict[str, Any] = {}
    if match := THROUGHPUT.search(log):
        figures.update(tokens=int(match[1]), seconds=float(match[2]), tokens_per_second=int(match[3]))
        if flops and peak:
            from trl.trainer.utils import compute_mfu

            figures["mfu_percent"] = round(compute_mfu(flops, figures["tokens_per_second"], 1, peak), 2)
    if match := PEAK.search(log):
        figures.update(peak_allocated_gib=float(match[1]), peak_reserved_gib=float(match[2]))
    if estimate_gib is not None:
        figures["estimated_peak_gib"] = round(estimate_gib, 2)
        if "peak_allocated_gib" in figures:
            figures["estimate_over_measured"] = round(estimate_gib / figures["peak_allocated_gib"], 3)
    return figures


def estimates(repo: Path, model_dir: Path) -> dict[str, float]:
    """The memory estimate of the sft and dpo runs as the stages configure them, from the model's config."""
    from ta.config import load_params
    from ta.train import memory, sft

    params = load_params(repo / "params.yaml")  # what `dvc exp run -S` wrote
    config = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    shape = memory.ModelShape.from_config(model_dir.name, config)
    sft_run = sft.memory_run(params.sft)
    dpo_run = dataclasses.replace(
        sft_run, seq_len=params.dpo.max_length, batch_size=2 * params.dpo.per_device_train_batch_size
    )
    return {"sft": memory.peak_gib(shape, sft_run), "dpo": memory.peak_gib(shape, dpo_run)}


def vllm_python(given: str | None) -> str | None:
    if given:
        return given
    return sys.executable if importlib.util.find_spec("vllm") else None


def serve_and_ask(repo: Path, python: str, port: int, timeout: float) -> dict[str, Any]:
    """Start `python -m serve.vllm` (the adapter on models/base), wait for it, ask through the client."""
    log_file = (repo / "vllm.log").open("w")
    server = subprocess.Popen(
        [python, "-m", "serve.vllm"], cwd=repo, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True
    )
    started = time.monotonic()
    try:
        import requests

        while time.monotonic() - started < timeout:
            if server.poll() is not None:
                raise CheckFailed(f"vLLM exited with code {server.returncode}; see {repo / 'vllm.log'}")
            try:
                if requests.get(f"http://127.0.0.1:{port}/v1/models", timeout=2).ok:
                    break
            except requests.RequestException:
                time.sleep(2)
        else:
            raise CheckFailed(f"vLLM did not answer within {timeout:.0f} s; see {repo / 'vllm.log'}")
        ready = time.monotonic() - started
        client = [sys.executable, "-m", "serve.vllm_client", "--prompt", PROMPT, "--max-tokens", "32"]
        answer = subprocess.run(client, cwd=repo, capture_output=True, text=True, timeout=120)
        if answer.returncode != 0:
            raise CheckFailed(f"serve/vllm_client.py failed: {answer.stderr.strip()}")
        return {"ready_seconds": round(ready, 1), "answer": answer.stdout.strip()[:200]}
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=60)
        log_file.close()


def plan(work: Path, vllm: str | None) -> dict[str, Any]:
    """What the check runs, rendered and validated without running it."""
    import yaml

    from ta.config import load_params
    from tools.profile import applied

    model_dir, repo, port = work / "qwen2.5-0.5b-shaped", work / "repo", 8000
    params = applied(yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8")), CHECK_PARAMS)
    params["base"]["model"] = str(model_dir)
    work.mkdir(parents=True, exist_ok=True)
    (work / "params.plan.yaml").write_text(yaml.safe_dump(params, allow_unicode=True), encoding="utf-8")
    load_params(work / "params.plan.yaml")  # the overrides must validate
    build = [sys.executable, "-m", "tools.qwen_shaped", "--out", str(model_dir)]
    build += [f"--{k.replace('_', '-')}={v}" for k, v in SHAPE_0_5B.items()]
    return {
        "build": build,
        "train": dvc_command(model_dir, port),
        "serve": [vllm or "<no vLLM: pass --vllm-python>", "-m", "serve.vllm"],
        "ask": ["python", "-m", "serve.vllm_client", "--prompt", PROMPT, "--max-tokens", "32"],
        "repo": str(repo),
    }


def run_check(work: Path, vllm: str | None, serve_timeout: float) -> dict[str, Any]:
    import torch

    from tools import qwen_shaped

    if not torch.cuda.is_available():
        raise CheckFailed("no CUDA GPU here; `--dry-run` shows the plan on any machine")
    result: dict[str, Any] = {"gpu": torch.cuda.get_device_name(0), "shape": SHAPE_0_5B}
    started = time.monotonic()
    model_dir, repo, port = work / "qwen2.5-0.5b-shaped", work / "repo", free_port()
    qwen_shaped.build(model_dir, qwen_shaped.Shape(**SHAPE_0_5B))
    result["build_seconds"] = round(time.monotonic() - started, 1)
    if repo.exists():
        shutil.rmtree(repo)
    copy_repo(repo)
    command = [tool("dvc"), *dvc_command(model_dir, port)[1:]]
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    env.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TOKENIZERS_PARALLELISM="false", DVC_NO_ANALYTICS="1")
    trained = subprocess.run(command, cwd=repo, env=env, capture_output=True, text=True)
    (work / "train.log").write_text(trained.stdout + trained.stderr, encoding="utf-8")
    if trained.returncode != 0:
        raise CheckFailed(f"dvc exp run failed (exit {trained.returncode}); see {work / 'train.log'}")
    result["train_seconds"] = round(time.monotonic() - started - result["build_seconds"], 1)
    logs, estimate = stage_logs(trained.stdout + trained.stderr), estimates(repo, model_dir)
    result["peak_bf16_flops"] = peak = peak_flops(result["gpu"])
    seq_lens = {"sft": CHECK_PARAMS["sft"]["max_seq_len"], "dpo": CHECK_PARAMS["dpo"]["max_length"]}
    for stage in ("sft", "dpo"):
        flops = flops_per_token(model_dir, seq_lens[stage])
        result[stage] = training_figures(logs.get(stage, ""), estimate[stage], flops, peak)
    python = vllm_python(vllm)
    if python is None:
        result["vllm"] = "not installed: pip install -r requirements-gpu.txt (own venv), then --vllm-python"
        return result
    result["vllm"] = serve_and_ask(repo, python, port, serve_timeout)
    result["total_seconds"] = round(time.monotonic() - started, 1)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, required=True, help="scratch directory (model, repo copy, logs)")
    parser.add_argument("--vllm-python", help="python of a venv with vLLM (default: this one, if it has vLLM)")
    parser.add_argument("--serve-timeout", type=float, default=300, help="seconds to wait for vLLM to start")
    parser.add_argument("--dry-run", action="store_true", help="print the plan; build and run nothing")
    args = parser.parse_args(argv)

    def body() -> int:
        vllm = vllm_python(args.vllm_python)
        if args.dry_run:
            print(json.dumps(plan(args.work, vllm), ensure_ascii=False, indent=2))
            return 0
        result = run_check(args.work, vllm, args.serve_timeout)
        (args.work / "gpu_check.json").write_text(json.dumps(result, ensure_ascii=False, indent=2) + "\n", "utf-8")
        print(json.dumps(result, ensure_ascii=False, indent=2))
        return 0 if isinstance(result["vllm"], dict) else 1

    return report("gpu_check", body)


if __name__ == "__main__":
    sys.exit(main())
