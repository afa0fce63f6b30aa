"""Issue-level checks of the training methods through DVC itself, on the tiny default:
`dvc exp run -S sft.method=qlora`, `-S sft.method=full` and `-S sft.num_processes=2` succeed.

Each runs in its own clone of the finished pipeline (sharing its DVC cache), with `max_steps` set so
that CI stays short; the method still goes through every downstream stage it affects."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.helpers import DVC, clone_with_results, run

SHORT = ["-S", "sft.max_steps=6", "-S", "sft.eval_steps=6", "-S", "sft.save_steps=6", "-S", "dpo.max_steps=4"]


@pytest.mark.parametrize("method", ["qlora", "full"])
def test_method_runs_through_the_whole_chain(pipeline_repo: Path, tmp_path: Path, method: str) -> None:
    repo = clone_with_results(pipeline_repo, tmp_path / "repo")
    result = run([DVC, "exp", "run", "-S", f"sft.method={method}", *SHORT], cwd=repo)
    assert "Stage 'prepare' didn't change, skipping" in result.stdout
    for stage in ("sft", "dpo", "merge", "gguf", "quantize", "eval"):
        assert f"Running stage '{stage}'" in result.stdout, stage
    report = json.loads((repo / "metrics/eval.json").read_text())
    assert report["quantization"]["q4_k_m_vs_f16_ppl_ratio"] > 0
    is_adapter = (repo / "models/sft/adapter_config.json").is_file()
    assert is_adapter == (method == "qlora")


def test_two_processes_run_sft_under_deepspeed_zero2(pipeline_repo: Path, tmp_path: Path) -> None:
    repo = clone_with_results(pipeline_repo, tmp_path / "repo")
    result = run([DVC, "exp", "run", "-S", "sft.num_processes=2", *SHORT, "sft"], cwd=repo)
    log = result.stdout + result.stderr
    assert "DeepSpeed ZeRO stage 2 over 2 process(es)" in log
    assert (repo / "models/sft/adapter_config.json").is_file()
