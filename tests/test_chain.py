"""The fast tier's one run of the whole chain (conftest's `reduced_repo`: `dvc repro` with a few steps per
stage): every stage ran, in order, and left its outputs with sane values. In the full tier the full run
stands in for the reduced one and the same checks hold."""

from __future__ import annotations

import json
import math
from pathlib import Path

import yaml

from ta import paths
from ta.config import load_params
from tests.helpers import DVC, read_jsonl, run, tsv_steps, tsv_values

STAGES = ["base", "selfinstruct", "prepare", "sft", "dpo", "merge", "gguf", "quantize", "eval", "harness"]


def test_every_stage_ran_in_order_and_the_workspace_is_clean(reduced_repo: Path) -> None:
    lock = yaml.safe_load((reduced_repo / "dvc.lock").read_text())
    assert list(lock["stages"]) == STAGES
    assert json.loads(run([DVC, "status", "--json"], cwd=reduced_repo).stdout) == {}


def test_each_stage_left_its_outputs(reduced_repo: Path) -> None:
    for path in (
        paths.BASE_INFO,
        paths.BASE_DIR / "model.safetensors",
        paths.SFT_TRAIN,
        paths.SFT_EVAL,
        paths.PREF_TRAIN,
        paths.PREF_EVAL,
        paths.PROCESSED_FILE,
        paths.SFT_DIR / "adapter_model.safetensors",
        paths.DPO_DIR / "adapter_model.safetensors",
        paths.MERGED_DIR / "model.safetensors",
        paths.gguf_file("f16"),
        paths.gguf_file("q4_k_m"),
        paths.MODELFILE,
        paths.EVAL_METRICS,
        paths.EVAL_INTERVALS,
        paths.EVAL_TIMING,
        paths.SAMPLES_MD,
    ):
        assert (reduced_repo / path).is_file() and (reduced_repo / path).stat().st_size > 0, path
    for checkpoints in (paths.SFT_CHECKPOINTS, paths.DPO_CHECKPOINTS):  # emptied by a finished run
        assert not any((reduced_repo / checkpoints).iterdir())


def test_prepare_accounts_for_every_row(reduced_repo: Path) -> None:
    summary = json.loads((reduced_repo / paths.PREPARE_METRICS).read_text(encoding="utf-8"))
    assert summary["rows_in"] == summary["kept"] + summary["rejected"] and summary["kept"] > 1000
    kept = sum(len(read_jsonl(reduced_repo / p)) for p in (paths.SFT_TRAIN, paths.SFT_EVAL, paths.PREF_TRAIN))
    assert kept + len(read_jsonl(reduced_repo / paths.PREF_EVAL)) == summary["kept"]
    assert len(read_jsonl(reduced_repo / paths.REJECTS)) == summary["rejected"]


def test_training_curves_stay_within_the_budget(reduced_repo: Path) -> None:
    params = load_params(reduced_repo / "params.yaml")
    for stage, budget in (("sft", params.sft.max_steps), ("dpo", params.dpo.max_steps)):
        plots = reduced_repo / f"dvclive/{stage}/plots/metrics"
        steps = tsv_steps(plots / "loss.tsv")
        assert steps == sorted(set(steps)) and steps[0] >= 1
        assert budget < 0 or steps[-1] <= budget
        assert all(math.isfinite(v) and v > 0 for v in tsv_values(plots / "eval/loss.tsv"))


def test_every_artifact_was_measured_and_the_conversions_kept_the_model(reduced_repo: Path) -> None:
    report = json.loads((reduced_repo / paths.EVAL_METRICS).read_text(encoding="utf-8"))
    ppl = report["perplexity"]
    assert set(ppl) == {"base", "sft", "dpo", "merged", "gguf_f16", "gguf_q4_k_m"}
    assert all(math.isfinite(v) and v > 1 for v in ppl.values())
    assert abs(ppl["merged"] - ppl["dpo"]) <= 0.01 * ppl["dpo"]  # merging changes no prediction
    assert abs(ppl["gguf_f16"] - ppl["merged"]) <= 0.02 * ppl["merged"]  # f16 rounding
    assert 0.9 < report["quantization"]["q4_k_m_vs_f16_ppl_ratio"] < 1.5
    assert all(0 <= v <= 1 for v in report["preference_accuracy"].values())


def test_eval_timed_every_artifact(reduced_repo: Path) -> None:
    """metrics/eval_timing.json: each measured artifact's seconds, loading and measuring, and the threads
    (reproducibility.threads of the shipped params)."""
    timing = json.loads((reduced_repo / paths.EVAL_TIMING).read_text(encoding="utf-8"))
    measured = json.loads((reduced_repo / paths.EVAL_METRICS).read_text(encoding="utf-8"))["perplexity"]
    assert set(timing["seconds"]) == set(measured)
    assert all(t["load"] >= 0 and t["measure"] > 0 for t in timing["seconds"].values())
    assert timing["threads"] == 2
