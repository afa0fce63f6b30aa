"""How the process of a stage that imports torch runs: Python's cyclic garbage collector set for it.

Such a process imports torch, transformers, TRL and PEFT: about 600,000 Python objects, all alive until it
exits. With CPython's default threshold (a collection every 700 net new objects), the collector walks that
growing heap again and again while the libraries import (2.0 s of full collections in an `sft` run), and once
more, whole, when the interpreter shuts down (1.5 s after `main` has returned). On the tiny default that was
2–4 s of every torch stage (BENCHMARKS.md "Turnaround").

`run(main)` raises the first generation's threshold to GEN0_THRESHOLD while `main` runs, and freezes every
object before the process exits (`gc.freeze`): the interpreter then shuts down without walking them. Reference
counting frees memory as before; a training loop allocates about as many objects as it frees, so collections
there were already rare and stay so. atexit handlers still run and streams are still flushed; no stage leaves
an open file to the collector. Only `python -m stages.<name>` goes through here: a stage's `main()` called in
another process (the tests) leaves that process's collector alone.

`skip_bitsandbytes(needed)`, called by a stage before anything imports transformers or PEFT, keeps bitsandbytes
out of a stage's process that loads no 4-bit weights: PEFT and transformers' Trainer import it whenever it is
installed, and it imports torch's compiler, 0.6-0.8 s of every torch stage (and a warning in every log about a
CPU kernel package it lacks). Libraries then see it as not installed, which is the truth for that process: a
stage that loads 4-bit weights (`sft.method: qlora`, or a base checkpoint quantized with bitsandbytes) passes
needed=True and gets it as usual. Again only in a stage's own process, never in one that called `main()`.
"""

from __future__ import annotations

import gc
import sys
from collections.abc import Callable
from typing import NoReturn

GEN0_THRESHOLD = 50_000
_stage_process = False  # True once run() runs: this process is a stage's own


def run(main: Callable[[], int]) -> NoReturn:
    """Run a stage's `main` with the collector set for a process of large libraries, and exit with its code."""
    global _stage_process
    _stage_process = True
    gc.set_threshold(GEN0_THRESHOLD, *gc.get_threshold()[1:])
    code = main()
    gc.freeze()
    sys.exit(code)


def skip_bitsandbytes(needed: bool) -> None:
    """In a stage's own process that loads no 4-bit weights, make bitsandbytes unimportable (before it loads)."""
    if _stage_process and not needed and "bitsandbytes" not in sys.modules:
        sys.modules["bitsandbytes"] = None  # `import` raises ImportError, `importlib.util.find_spec` gives None
