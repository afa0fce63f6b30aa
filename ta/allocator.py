"""Keep freed tensor memory in the process's C heap on CPU, instead of handing it back to the kernel every step.

glibc's malloc returns the top of its heap to the kernel once more than M_TRIM_THRESHOLD bytes lie free there
(by default twice the largest block freed so far) and serves large blocks from fresh mmaps. A CPU training
step allocates its activations and logits and frees them again: with the defaults, every step gives those
pages back and faults them in anew, and the kernel zeroes each page. On the tiny default that was the
largest cost after the arithmetic itself — sys time 25 s of a 39 s `dpo` stage; with the heap kept, sys
1.4 s and the stage ~1.5× faster (BENCHMARKS.md "Turnaround"). The bytes a stage writes do not change.

`keep_heap()` sets glibc's knobs for this process (mallopt) and, for the processes it starts (DeepSpeed and
torchrun workers, llama.cpp's tools), the environment variables glibc reads at start-up. A value the user
already set in the environment wins. Elsewhere than glibc it does nothing.
"""

from __future__ import annotations

import ctypes
import logging
import os

log = logging.getLogger("allocator")

# mallopt's parameter numbers (malloc.h) with the values set, and their environment variables.
M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD = -1, -2, -3
MiB = 1 << 20
SETTINGS = {
    # (mallopt param, environment variable): bytes
    (M_MMAP_THRESHOLD, "MALLOC_MMAP_THRESHOLD_"): 32 * MiB,  # glibc's ceiling on 64-bit; larger blocks are mmapped
    (M_TRIM_THRESHOLD, "MALLOC_TRIM_THRESHOLD_"): 1024 * MiB,  # give memory back only past 1 GiB free at the top
    (M_TOP_PAD, "MALLOC_TOP_PAD_"): 64 * MiB,  # grow the heap in 64 MiB steps
}


def keep_heap() -> dict[str, int]:
    """Apply SETTINGS (those the environment does not set already); returns what this process now uses."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (AttributeError, OSError):
        return {}  # not glibc (macOS, musl): their allocators have no such knobs
    applied = {}
    for (param, variable), value in SETTINGS.items():
        value = int(os.environ.setdefault(variable, str(value)))  # the user's value, when set, for this process too
        if mallopt(ctypes.c_int(param), ctypes.c_int(min(value, 2**31 - 1))) == 1:
            applied[variable] = value
        else:
            log.debug("mallopt refused %s=%d", variable, value)
    return applied
