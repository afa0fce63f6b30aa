"""Same params, same bytes on another machine: the CPU code paths, thread count and deterministic algorithms a
stage computes with (params `reproducibility`), fixed before torch runs its first kernel.

Every stage that computes with torch calls `apply()` first in its body, before anything imports torch;
workers that torchrun or DeepSpeed start inherit the environment it sets and call it again themselves.
On CPU the bytes of a run depend on three things besides the params and the library versions:

- the vector kernels ATen picks for the CPU (AVX-512 vs AVX2 sum in another order): ATEN_CPU_CAPABILITY;
- the code path of MKL, the BLAS of the torch CPU wheel, and of oneDNN: MKL_CBWR (MKL's conditional numerical
  reproducibility) and ONEDNN_MAX_CPU_ISA;
- the number of threads a reduction is split over: OMP_NUM_THREADS, MKL_NUM_THREADS, torch.set_num_threads.

`cpu_capability: avx2` pins all three code paths to AVX2, which every x86-64 server of the last decade has;
`threads` pins the count. On a GPU, `deterministic` asks for deterministic kernels (what transformers'
`enable_full_determinism` does), which makes reruns on one GPU model equal; other GPU models, and GPUs vs
CPUs, still differ. docs/training.md "Reproducing across machines" has the measurements.

`apply()` also keeps freed tensor memory in the C heap (ta/allocator.py): a speed setting, not a params one.
"""

from __future__ import annotations

import logging
import os
import sys

from ta import allocator
from ta.config import Reproducibility

log = logging.getLogger("reproducibility")

# The widest instruction set each knob may use; `native` sets none and lets each library pick for the CPU.
CPU_CAPABILITY_ENV = {
    "avx2": {"ATEN_CPU_CAPABILITY": "avx2", "MKL_CBWR": "AVX2", "ONEDNN_MAX_CPU_ISA": "AVX2"},
    "native": {},
}
CUBLAS_WORKSPACE = ":4096:8"  # cuBLAS's own deterministic setting: a fixed workspace per stream


def environment(settings: Reproducibility) -> dict[str, str]:
    """The variables to set before torch loads (they override the inherited ones: the params decide)."""
    env = dict(CPU_CAPABILITY_ENV[settings.cpu_capability])
    if settings.threads:
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(settings.threads)
    if settings.deterministic:
        env["CUBLAS_WORKSPACE_CONFIG"] = CUBLAS_WORKSPACE
    return env


def apply(settings: Reproducibility) -> None:
    """Fix this process's compute settings and log the ones in force. Call it before anything imports torch:
    ATen reads its CPU capability at the first kernel it runs, MKL and OpenMP theirs as they load."""
    early = "torch" not in sys.modules
    os.environ.update(environment(settings))
    allocator.keep_heap()  # not a params matter: it changes the speed, never the bytes
    import torch

    if settings.threads:
        torch.set_num_threads(settings.threads)
    if settings.deterministic:
        # warn_only: an op without a deterministic version warns (naming itself) instead of stopping the run.
        # torch.use_deterministic_algorithms without its first line, which imports torch's compiler (0.8 s) to set
        # the flag of its generated kernels: no stage compiles. Where the compiler is loaded already, it is set.
        torch._C._set_deterministic_algorithms(True, warn_only=True)
        if "torch._inductor.config" in sys.modules:
            sys.modules["torch._inductor.config"].deterministic = True
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
    capability = torch.backends.cpu.get_cpu_capability()
    log.info(
        "compute: %s CPU kernels, %d threads, deterministic algorithms %s",
        capability,
        torch.get_num_threads(),
        "on" if settings.deterministic else "off",
    )
    wanted = CPU_CAPABILITY_ENV[settings.cpu_capability].get("ATEN_CPU_CAPABILITY", capability).upper()
    if capability != wanted:
        why = "torch ran a kernel before reproducibility.apply()" if not early else "this CPU lacks it"
        log.warning("reproducibility.cpu_capability: %s, but %s kernels run (%s)", wanted, capability, why)


def threads(settings: Reproducibility) -> int:
    """The threads a stage computes with: `threads`, or every core for 0 (llama.cpp takes this number too)."""
    return settings.threads or os.cpu_count() or 1
