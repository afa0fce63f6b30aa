"""Issue-level checks of the training methods through DVC itself, on the tiny default:
`dvc exp run -S sft.method=qlora` and `-S sft.method=full` succeed (`sft.num_processes=2`, the stage
launching itself under ZeRO-2, is tests/train/test_sft.py's; two machines, tests/e2e/test_multinode.py's).

Each runs in its own clone of the finished pipeline (sharing its DVC cache), with `max_steps` set so
that CI stays short; the method still goes through every downstream stage it affects."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.helpers import DVC, clone_with_results, run

SHORT = ["-S", "sft.max_steps=6", "-S", "sft.eval_steps=6", "-S", "sft.save_steps=6", "-S", "dpo.max_steps=4"]
# ... and eval on fewer held-out rows and answers: every artifact is still loaded and scored.
SHORT_EVAL = ["-S", "eval.max_samples=8", "-S", "eval.max_generations=2", "-S", "gguf.parity_samples=2"]


@pytest.mark.parametrize("method", ["qlora", "full"])
def test_method_runs_through_the_whole_chain(pipeline_repo: Path, tmp_path: Path, method: str) -> None:
    repo = clone_with_results(pipeline_repo, tmp_path / "repo")
    result = run([DVC, "exp", "run", "-S", f"sft.method={method}", *SHORT, *SHORT_EVAL], cwd=repo)
    assert "Stage 'prepare' didn't change, skipping" in result.stdout
    for stage in ("sft", "dpo", "merge", "gguf", "quantize", "eval"):
        assert f"Running stage '{stage}'" in result.stdout, stage
    report = json.loads((repo / "metrics/eval.json").read_text())
    assert report["quantization"]["q4_k_m_vs_f16_ppl_ratio"] > 0
    is_adapter = (repo / "models/sft/adapter_config.json").is_file()
    assert is_adapter == (method == "qlora")
