"""ta.process: a stage process runs `main` with a higher first-generation threshold, exits with its code, and
still flushes what it printed and runs its atexit handlers after freezing every object."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

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
            assert "process.skip_bitsandbytes(needed=" in text, stage.name  # before transformers and PEFT load


BITSANDBYTES = """
import importlib.util, sys
from ta import process

def main():
    process.skip_bitsandbytes(needed=sys.argv[1] == "needed")
    import peft  # imports bitsandbytes whenever it can
    from transformers.utils import is_bitsandbytes_available
    loaded = sys.modules.get("bitsandbytes") is not None
    print(loaded, importlib.util.find_spec("bitsandbytes") is not None, is_bitsandbytes_available())
    return 0

if sys.argv[2] == "stage":
    process.run(main)
main()
"""


@pytest.mark.parametrize(
    ("needed", "how", "seen"),
    [
        ("not-needed", "stage", "False False False"),  # as not installed, to every library
        ("needed", "stage", "True True True"),  # qlora, or a base quantized with bitsandbytes
        ("not-needed", "called", "True True True"),  # main() called in another process (the tests'): untouched
    ],
)
def test_a_stage_that_loads_no_4bit_weights_keeps_bitsandbytes_out(needed: str, how: str, seen: str) -> None:
    result = subprocess.run(
        [sys.executable, "-c", BITSANDBYTES, needed, how], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == seen


@pytest.mark.parametrize(
    ("config", "quantized"),
    [
        ({"quantization_config": {"quant_method": "bitsandbytes", "load_in_4bit": True}}, True),
        ({"quantization_config": {"quant_method": "gptq", "bits": 4}}, False),
        ({"model_type": "qwen2"}, False),
        (None, False),  # no config.json yet: the stage's own loading reports it
    ],
)
def test_a_base_quantized_with_bitsandbytes_is_recognised(tmp_path: Path, config: dict | None, quantized: bool) -> None:
    import json

    from ta.base_model import is_bnb_quantized

    if config is not None:
        (tmp_path / "config.json").write_text(json.dumps(config), encoding="utf-8")
    assert is_bnb_quantized(tmp_path) is quantized
