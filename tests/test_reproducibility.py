"""ta/reproducibility.py: what `reproducibility` in params.yaml sets, and that a stage's process computes with it
whatever the machine's environment says. The two-machine training run is tests/e2e/test_reproducibility.py."""

from __future__ import annotations

import json
import subprocess
import sys

from ta.config import Reproducibility
from ta.reproducibility import environment
from tests.helpers import repo_env

PROBE = """
import json, sys
from ta.config import Reproducibility
from ta.reproducibility import apply
apply(Reproducibility(**json.loads(sys.argv[1])))
import torch
print(json.dumps({
    "capability": torch.backends.cpu.get_cpu_capability(),
    "threads": torch.get_num_threads(),
    "deterministic": torch.are_deterministic_algorithms_enabled(),
    "warn_only": torch.is_deterministic_algorithms_warn_only_enabled(),
    "compiler_loaded": "torch._inductor" in sys.modules,
}))
"""


# Every variable apply() may set (the avx2 + deterministic case sets them all).
MANAGED = tuple(environment(Reproducibility(threads=1, cpu_capability="avx2", deterministic=True)))


def probe(settings: dict, **inherited: str) -> dict:
    """What a fresh process computes with after apply(), started with `inherited` in its environment."""
    env = repo_env(**inherited)
    for name in MANAGED:  # an earlier in-process stage run may have set them in this process: start clean
        if name not in inherited:
            env.pop(name, None)
    result = subprocess.run(
        [sys.executable, "-c", PROBE, json.dumps(settings)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_avx2_pins_atens_mkls_and_onednns_code_paths_and_threads_pin_openmp_and_mkl() -> None:
    env = environment(Reproducibility(threads=3, cpu_capability="avx2", deterministic=True))
    assert env == {
        "ATEN_CPU_CAPABILITY": "avx2",
        "MKL_CBWR": "AVX2",
        "ONEDNN_MAX_CPU_ISA": "AVX2",
        "OMP_NUM_THREADS": "3",
        "MKL_NUM_THREADS": "3",
        "CUBLAS_WORKSPACE_CONFIG": ":4096:8",
    }


def test_native_with_every_core_and_no_determinism_sets_nothing() -> None:
    assert environment(Reproducibility(threads=0, cpu_capability="native", deterministic=False)) == {}


def test_the_params_win_over_the_machines_environment() -> None:
    """A machine whose environment asks for AVX-512 kernels and one thread still computes with AVX2 and the
    params' thread count (on an x86 CPU with AVX2, as every x86 server of the last decade)."""
    settings = {"threads": 2, "cpu_capability": "avx2", "deterministic": True}
    seen = probe(settings, ATEN_CPU_CAPABILITY="avx512", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    assert seen.pop("compiler_loaded") is False  # determinism without importing torch's compiler (0.8 s)
    assert seen == {"capability": "AVX2", "threads": 2, "deterministic": True, "warn_only": True}


def test_native_leaves_the_choice_to_the_machine() -> None:
    settings = {"threads": 0, "cpu_capability": "native", "deterministic": False}
    seen = probe(settings, ATEN_CPU_CAPABILITY="default", OMP_NUM_THREADS="1")
    assert seen == {
        "capability": "DEFAULT",
        "threads": 1,
        "deterministic": False,
        "warn_only": False,
        "compiler_loaded": False,
    }


def test_a_compiler_loaded_before_gets_the_deterministic_flag_too() -> None:
    program = (
        "import torch._inductor.config as c\n"
        "from ta.config import Reproducibility\n"
        "from ta.reproducibility import apply\n"
        "apply(Reproducibility(threads=1, cpu_capability='native', deterministic=True))\n"
        "print(c.deterministic)"
    )
    result = subprocess.run(
        [sys.executable, "-c", program], env=repo_env(), capture_output=True, text=True, timeout=120, check=True
    )
    assert result.stdout.strip().splitlines()[-1] == "True"
