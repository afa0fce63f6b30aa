"""The one error root (ta/errors.py): a UserError is one line `<stage>: error: ...` and its exit code; a full
disk is one line too; anything else is a bug and keeps its traceback."""

from __future__ import annotations

import errno

import pytest

from ta import errors


def test_a_user_error_is_one_line_and_exit_code_2(capsys: pytest.CaptureFixture[str]) -> None:
    def body() -> None:
        raise errors.ParamsError("params.yaml: sft.lora.r: must be >= 1, got 0")

    assert errors.report("sft", body) == 2
    assert capsys.readouterr().err == "sft: error: params.yaml: sft.lora.r: must be >= 1, got 0\n"


def test_a_failed_gate_exits_1(capsys: pytest.CaptureFixture[str]) -> None:
    def body() -> None:
        raise errors.GateFailed("1 eval gate(s) failed")

    assert errors.report("eval", body) == 1
    assert capsys.readouterr().err == "eval: error: 1 eval gate(s) failed\n"


def test_every_user_facing_error_shares_the_root() -> None:
    for name in ("ParamsError", "MissingInputError", "DataError", "PrepareError", "ChatTemplateError"):
        assert issubclass(getattr(errors, name), errors.UserError), name
    for name in ("TrainError", "ExportError", "EvalError", "GateFailed", "ServeError"):
        assert issubclass(getattr(errors, name), errors.UserError), name
    data_error = errors.DataError("f.jsonl:3: malformed JSON", "malformed_json", 3, "{")
    assert (data_error.reason, data_error.line, data_error.raw) == ("malformed_json", 3, "{")


def test_the_body_s_exit_code_passes_through() -> None:
    assert errors.report("sft", lambda: None) == 0
    assert errors.report("sft", lambda: 3) == 3


def test_a_full_disk_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    def body() -> None:
        raise OSError(errno.ENOSPC, "No space left on device", "models/merged/model.safetensors")

    assert errors.report("merge", body) == 2
    assert capsys.readouterr().err == (
        "merge: error: no space left on the device writing models/merged/model.safetensors\n"
    )


@pytest.mark.parametrize("bug", [KeyError("eval_loss"), OSError(errno.EACCES, "Permission denied")])
def test_anything_else_keeps_its_traceback(bug: Exception) -> None:
    def body() -> None:
        raise bug

    with pytest.raises(type(bug)):
        errors.report("sft", body)
