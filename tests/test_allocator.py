"""ta.allocator: a CPU step's freed tensors stay in the heap (no page faults anew each step), unless the user
set glibc's variables otherwise."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.helpers import REPO

# A "step" allocates three 30 MiB blocks, writes every page and frees them, as a training step does with its
# activations; the child prints the page faults of 20 steps after a first one.
PROBE = """
import resource, sys
if sys.argv[1] == "keep":
    from ta.allocator import keep_heap
    keep_heap()
def step():
    blocks = [bytearray(30 << 20) for _ in range(3)]
    for b in blocks:
        b[::4096] = bytes(len(range(0, len(b), 4096)))
step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    step()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""
PAGES_PER_STEP = 3 * (30 << 20) // 4096

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc knobs")


def page_faults(mode: str, **env: str) -> int:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    result = subprocess.run(
        [sys.executable, "-c", PROBE, mode], cwd=REPO, env={**clean, **env}, capture_output=True, text=True, check=True
    )
    return int(result.stdout)


def test_glibc_defaults_fault_every_step_in_anew_and_keep_heap_does_not() -> None:
    assert page_faults("default") > 10 * PAGES_PER_STEP  # the defaults give the pages back each step
    assert page_faults("keep") < PAGES_PER_STEP // 10


def test_the_users_own_setting_wins() -> None:
    assert page_faults("keep", MALLOC_TRIM_THRESHOLD_="0", MALLOC_TOP_PAD_="0") > 10 * PAGES_PER_STEP


def test_processes_a_stage_starts_inherit_the_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    from ta.allocator import keep_heap

    for name in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_"):
        monkeypatch.delenv(name, raising=False)
    applied = keep_heap()
    assert applied["MALLOC_TRIM_THRESHOLD_"] == 1 << 30
    child = subprocess.run(
        [sys.executable, "-c", "import os; print(os.environ['MALLOC_TRIM_THRESHOLD_'])"], capture_output=True, text=True
    )
    assert int(child.stdout) == 1 << 30
