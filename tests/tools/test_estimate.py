"""`python -m tools.estimate`: the guide's table by default, one run broken down with arguments."""

from __future__ import annotations

import pytest

from tools import estimate


def test_without_arguments_it_prints_the_guides_table(capsys: pytest.CaptureFixture[str]) -> None:
    from ta.train.memory import guide_table

    assert estimate.main([]) == 0
    assert capsys.readouterr().out == guide_table() + "\n"


def test_one_run_is_broken_down(capsys: pytest.CaptureFixture[str]) -> None:
    assert estimate.main(["--model", "qwen2-7b", "--batch-size", "4", "--zero-stage", "2", "--num-gpus", "4"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("Qwen2-7B (7.62B params, 40.4M trainable), lora, fp16, seq 2048, batch 4 per GPU, ZeRO-2")
    for part in ("weights", "gradients", "optimizer", "activations", "loss_head"):
        assert f"  {part}" in out


def test_an_unknown_model_is_one_line_and_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert estimate.main(["--model", "nowhere"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("estimate: error: nowhere: neither a known model") and err.count("\n") == 1
