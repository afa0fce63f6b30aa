"""ta.process: a stage process runs `main` with a higher first-generation threshold, exits with its code, and
still flushes what it printed and runs its atexit handlers after freezing every object."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from ta import process

REPO = Path(__file__).resolve().parents[1]

PROGRAM = """
import atexit, gc
from ta import process

def main():
    atexit.register(lambda: print("atexit ran"))
    print("threshold", gc.get_threshold()[0], end=" ")  # buffered: stdout is a pipe
    sys.stdout.write("unflushed")
    return 3

import sys
process.run(main)
"""


def test_main_runs_with_the_raised_threshold_and_its_code_and_output_get_out() -> None:
    result = subprocess.run([sys.executable, "-c", PROGRAM], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode == 3, result.stderr
    assert result.stdout == f"threshold {process.GEN0_THRESHOLD} unflushedatexit ran\n"


def test_every_stage_that_imports_torch_runs_through_it() -> None:
    for stage in sorted((REPO / "stages").glob("*.py")):
        text = stage.read_text(encoding="utf-8")
        if "reproducibility.apply" in text:  # the stages that compute with torch
            main_block = text[text.index('if __name__ == "__main__":') :]
            assert re.search(r"^    process\.run\(main\)$", main_block, re.M), stage.name
