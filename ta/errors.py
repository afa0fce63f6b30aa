"""The one root of every error a user can fix, and the stage entry points' way of reporting it.

Anything raised as a `UserError` carries a one-line message that names the place (file, line, field or
param key) and, where known, the fix; `report()` prints it as `<stage>: error: <message>` and returns the
exit code. Every other exception is a bug and keeps its traceback.
"""

from __future__ import annotations

import errno
import sys
from collections.abc import Callable


class UserError(Exception):
    """A problem the user can fix; the message says where and, where known, how."""

    exit_code = 2


class ParamsError(UserError):
    """A params.yaml problem, with the file and the key path in the message."""


class MissingInputError(UserError):
    """A file or directory a stage reads is not there (usually: an earlier stage has not run)."""


class DataError(UserError):
    """A structural problem in an input file; the message starts with `file:line:`."""

    def __init__(self, message: str, reason: str = "malformed_json", line: int = 0, raw: str = "") -> None:
        super().__init__(message)
        self.reason = reason
        self.line = line
        self.raw = raw


class PrepareError(UserError):
    """A prepare problem that is not one row's: a misplaced source, a missing tokenizer."""


class SelfInstructError(UserError):
    """self-instruct cannot go on: the endpoint refuses or fails past its retries, a template or the review
    file is broken; the message names the place."""


class ChatTemplateError(UserError):
    """The tokenizer's chat template cannot be used for what a stage needs from it."""


class TrainError(UserError):
    """A training run that cannot start or finish as configured."""


class ExportError(UserError):
    """merge, gguf or quantize cannot produce a correct artifact (parity, fallback, converter)."""


class EvalError(UserError):
    """A problem the user can fix in eval (missing artifact, bad template); the message names the place."""


class GateFailed(UserError):
    """A gate in params `eval` broke and `eval.gate_action` is `fail`."""

    exit_code = 1


class ServeError(UserError):
    """A problem with the serving inputs, with the file and field in the message."""


def report(stage: str, body: Callable[[], int | None]) -> int:
    """Run a stage's body; a UserError becomes `<stage>: error: ...` on stderr and its exit code, a full disk
    one line too. Anything else propagates with its traceback (it is a bug)."""
    try:
        return body() or 0
    except UserError as err:
        print(f"{stage}: error: {err}", file=sys.stderr)
        return err.exit_code
    except OSError as err:
        if err.errno != errno.ENOSPC:
            raise
        print(f"{stage}: error: no space left on the device writing {err.filename or 'an output'}", file=sys.stderr)
        return 2
