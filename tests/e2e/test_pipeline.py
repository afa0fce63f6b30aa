"""The whole pipeline, run as a user runs it: `dvc repro` in a fresh copy of the repository."""

from __future__ import annotations

import json
import time

import pytest
import yaml

from tests.conftest import BIN, run

STAGES = ["base", "prepare", "sft", "dpo", "merge", "gguf", "quantize", "eval"]

pytestmark = pytest.mark.slow


def test_lock_file_lists_all_eight_stages_in_order(pipeline_repo):
    lock = yaml.safe_load((pipeline_repo / "dvc.lock").read_text())
    assert list(lock["stages"]) == STAGES


def test_quantized_gguf_exists_and_is_smaller_than_f16(pipeline_repo):
    (q4,) = pipeline_repo.glob("models/**/*q4_k_m*.gguf")
    f16 = pipeline_repo / "models/gguf/teachingassistant-f16.gguf"
    assert q4.stat().st_size < 0.5 * f16.stat().st_size


def test_status_is_clean_and_a_second_repro_runs_nothing(pipeline_repo):
    status = run([str(BIN / "dvc"), "status", "--json"], cwd=pipeline_repo)
    assert json.loads(status.stdout) == {}
    start = time.monotonic()
    again = run([str(BIN / "dvc"), "repro"], cwd=pipeline_repo)
    assert time.monotonic() - start < 30
    for stage in STAGES:
        assert f"Stage '{stage}' didn't change, skipping" in again.stdout


def test_forced_rerun_of_data_training_and_export_stages_is_byte_identical(pipeline_repo):
    # dvc status compares the files with the hashes in dvc.lock: clean after a forced rerun means the
    # rerun wrote the same bytes (each stage is a new process, with a new string-hash seed).
    for stage in ("prepare", "sft", "dpo", "merge", "gguf", "quantize"):
        run([str(BIN / "dvc"), "repro", "--force", "--single-item", stage], cwd=pipeline_repo)
    status = run([str(BIN / "dvc"), "status", "--json"], cwd=pipeline_repo)
    assert json.loads(status.stdout) == {}


def test_parity_metrics_recorded(pipeline_repo):
    parity = json.loads((pipeline_repo / "metrics/gguf.json").read_text())
    assert parity["token_parity"]["mismatches"] == 0
    assert parity["token_parity"]["texts"] >= 8
    assert parity["logit_parity"]["top1_agreement"] >= 0.98


def test_quantized_file_really_is_q4_k(pipeline_repo):
    report = json.loads((pipeline_repo / "metrics/quantize.json").read_text())
    types = report["q4_k_m"]["tensor_types"]
    assert types.get("Q4_K", 0) > types.get("Q6_K", 0) > 0
    assert report["q4_k_m"]["fallback_share"] == 0.0
