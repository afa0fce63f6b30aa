"""tools/gpu_check.py, without a GPU: its plan validates, it refuses to run on a CPU, and it reads the figures the
training stages really log."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import yaml

from ta.config import load_params
from tools import gpu_check

REPO = Path(__file__).resolve().parents[2]


def test_dry_run_plans_the_0_5b_build_the_pipeline_stages_and_vllm(tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "tools.gpu_check", "--work", str(tmp_path), "--dry-run"]
    result = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    plan = json.loads(result.stdout)
    assert plan["build"][1:4] == ["-m", "tools.qwen_shaped", "--out"]
    assert plan["build"][5:] == ["--hidden=896", "--intermediate=4864", "--layers=24", "--heads=14", "--kv-heads=2"]
    train = plan["train"]
    assert train[:3] == ["dvc", "exp", "run"] and train[-1] == "dpo"  # base → prepare → sft → dpo, as dvc.yaml says
    overrides = dict(arg.split("=", 1) for arg in train[3:-1] if arg != "-S")
    assert overrides["sft.max_steps"] == "40" and overrides["sft.precision"] == "'auto'"
    assert overrides["base.model"] == f"'{tmp_path / 'qwen2.5-0.5b-shaped'}'"
    assert plan["serve"][1:] == ["-m", "serve.vllm"] and plan["ask"][1:3] == ["-m", "serve.vllm_client"]
    params = load_params(tmp_path / "params.plan.yaml")  # the run's params validate as the stages load them
    assert params.sft.max_steps == 40 and params.dpo.max_steps == 20 and params.sft.attn_implementation == "sdpa"
    assert yaml.safe_load((tmp_path / "params.plan.yaml").read_text())["base"]["model"].endswith("0.5b-shaped")


def test_refuses_to_run_without_a_gpu(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "tools.gpu_check", "--work", str(tmp_path)], cwd=REPO, capture_output=True, text=True
    )
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == (
        "gpu_check: error: no CUDA GPU here; `--dry-run` shows the plan on any machine"
    )


def test_reads_the_figures_the_trainer_callback_logs(caplog) -> None:
    from ta.train.launch import engine_report

    state = SimpleNamespace(
        is_world_process_zero=True,
        log_history=[{"loss": 1.0, "num_tokens": 4096.0}, {"eval_loss": 1.0}, {"train_runtime": 2.0}],
    )
    with caplog.at_level(logging.INFO, logger="launch"):
        engine_report().on_train_end(SimpleNamespace(), state, None)
    logged = "\n".join(record.getMessage() for record in caplog.records)
    figures = gpu_check.training_figures(f"Running stage 'sft':\n{logged}\n", estimate_gib=3.0)
    assert figures == {"tokens": 4096, "seconds": 2.0, "tokens_per_second": 2048, "estimated_peak_gib": 3.0}
    measured = gpu_check.training_figures("peak GPU memory on rank 0: 2.50 GiB allocated, 3.10 GiB reserved", 3.0)
    assert measured["peak_allocated_gib"] == 2.5 and measured["estimate_over_measured"] == 1.2
    parts = gpu_check.stage_logs("Running stage 'sft':\nA\nRunning stage 'dpo':\nB\n")
    assert parts == {"sft": "\nA\n", "dpo": "\nB\n"}


def test_mfu_is_tokens_per_second_times_flops_per_token_over_the_gpus_peak(tmp_path: Path) -> None:
    from transformers import Qwen2Config

    # A Qwen2.5-0.5B shape; FLOPs per token by hand: 3 x 2 x (the matmuls' weights + the attention scores).
    Qwen2Config(
        vocab_size=151936,
        hidden_size=896,
        intermediate_size=4864,
        num_hidden_layers=24,
        num_attention_heads=14,
        num_key_value_heads=2,
    ).save_pretrained(tmp_path)
    h, layers, vocab, head, seq = 896, 24, 151936, 64, 512
    per_layer = h * (14 * head + 2 * 2 * head) + 14 * head * h + 2 * 14 * head * seq + 3 * h * 4864
    by_hand = 3 * 2 * (layers * per_layer + h * vocab)
    flops = gpu_check.flops_per_token(tmp_path, seq)
    assert flops == by_hand

    peak = gpu_check.peak_flops("NVIDIA H200")
    assert peak == 989e12 and gpu_check.peak_flops("NVIDIA H100 PCIe") == 756e12
    assert gpu_check.peak_flops("Tesla K80") is None  # no MFU rather than a wrong one
    figures = gpu_check.training_figures("throughput: 1000000 tokens in 20.0 s, 50000 tokens/s", None, flops, peak)
    assert figures["mfu_percent"] == round(100 * 50000 * by_hand / 989e12, 2)
    assert "mfu_percent" not in gpu_check.training_figures("throughput: 10 tokens in 1.0 s, 10 tokens/s", None, flops)
