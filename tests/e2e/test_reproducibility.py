"""Issue 16: a teammate's `dvc repro` writes the bytes of the dvc.lock you pushed. The stage whose output depends
most on float kernels, base (the tiny model's pretraining), runs on two "machines" that differ the way two
x86 servers do: the CPU capability torch would pick (AVX-512 vs the baseline) and the cores it may use (both
vs one). With the shipped `reproducibility` params the weights are byte-identical; with `native` kernels on
every core they are not, which is what the params are for (and what shows this test can fail).

A few pretraining steps on the shipped raw data: ~30 s a pair of runs on two cores (the pair runs at once).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from tests.helpers import REPO, repo_env, write_params

SHORT_PRETRAINING = {"tiny": {"pretrain_steps": 3, "pretrain_batch_size": 4, "pretrain_seq_len": 64}}
# Two machines: what torch would choose by itself on each (ATEN_CPU_CAPABILITY stands in for the CPU), and
# the cores the stage may use there.
MACHINES = {
    "avx512, every core": ({"ATEN_CPU_CAPABILITY": "avx512"}, False),
    "baseline, one core": ({"ATEN_CPU_CAPABILITY": "default", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}, True),
}


def one_core() -> None:
    os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[:1])


def base_on_each_machine(tmp_path: Path, reproducibility: dict) -> list[dict[str, bytes]]:
    """models/base's files as `python -m stages.base` writes them on each machine (both run at once)."""
    runs = []
    for n, (inherited, on_one_core) in enumerate(MACHINES.values()):
        workspace = tmp_path / f"machine{n}"
        shutil.copytree(REPO / "data/raw", workspace / "data/raw")
        write_params(workspace, base=SHORT_PRETRAINING, reproducibility=reproducibility)
        log = (workspace / "base.log").open("w")
        process = subprocess.Popen(
            [sys.executable, "-m", "stages.base"],
            cwd=workspace,
            env=repo_env(**inherited),
            stdout=log,
            stderr=subprocess.STDOUT,
            preexec_fn=one_core if on_one_core else None,
        )
        runs.append((workspace, process, log))
    outputs = []
    for workspace, process, log in runs:
        process.wait(timeout=900)
        log.close()
        assert process.returncode == 0, (workspace / "base.log").read_text(encoding="utf-8")[-3000:]
        base = workspace / "models/base"
        outputs.append({p.relative_to(base).as_posix(): p.read_bytes() for p in sorted(base.rglob("*")) if p.is_file()})
    return outputs


def test_the_shipped_settings_give_the_same_bytes_on_both_machines(tmp_path: Path) -> None:
    first, second = base_on_each_machine(tmp_path, reproducibility={})  # the shipped params
    assert sorted(first) == sorted(second)
    assert [name for name in first if first[name] != second[name]] == []


def test_native_kernels_on_every_core_differ_between_the_machines(tmp_path: Path) -> None:
    first, second = base_on_each_machine(tmp_path, reproducibility={"cpu_capability": "native", "threads": 0})
    assert first["model.safetensors"] != second["model.safetensors"]
    assert first["tokenizer.json"] == second["tokenizer.json"]  # SentencePiece: no float kernels, one thread
