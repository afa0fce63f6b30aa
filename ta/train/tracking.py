"""DVCLive for the trainer stages: one Live per stage dir, steps aligned with the trainer's global step.

transformers' own DVCLiveCallback counts log events rather than optimizer steps, so train and eval
points of the same step land at different x positions; here `live.step` is set from
`state.global_step` before every log. Wall-clock figures (runtime, samples per second, FLOPs) are
dropped: the DVCLive dir is tracked by git and must be byte-identical when nothing changed.

Only rank 0 logs. A run resumed from a checkpoint opens the dir with `resume=True` (a fresh Live wipes
it) after dropping the rows the killed run logged past that checkpoint, so the curves read as one run.
The files a resumed run reads back (metrics.json, params.yaml, the plots it truncates) are written whole or
not at all.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ta.files import atomic_output, write_atomically
from ta.train.launch import rank

TIMING_KEYS = ("runtime", "per_second", "flos")


def truncate_plots(live_dir: Path, last_step: int) -> None:
    """Drop the rows of every DVCLive plot TSV under `live_dir` whose step is past `last_step`, and a row the
    killed run left half-written (DVCLive appends rows in place: a kill mid-row leaves one without its
    newline, which the resumed run's next row would run into). A file without a whole header is removed:
    DVCLive writes it afresh."""
    for tsv in (live_dir / "plots" / "metrics").rglob("*.tsv"):
        lines = tsv.read_bytes().decode("utf-8", "replace").split("\n")
        header, rows = lines[0], lines[1:-1]  # the last piece is "" after a whole row, a cut row otherwise
        if len(lines) < 2 or "step" not in header.split("\t"):
            tsv.unlink()
            continue
        columns = header.split("\t")
        kept = [row for row in rows if _step(row, columns) is not None and _step(row, columns) <= last_step]
        write_atomically(tsv, "".join(f"{line}\n" for line in [header, *kept]))


def _step(row: str, columns: list[str]) -> int | None:
    """The row's step, None for a row that is not whole (a field missing, a number cut short)."""
    fields = row.split("\t")
    if len(fields) != len(columns):
        return None
    try:
        [float(field) for field in fields]
        return int(fields[columns.index("step")])
    except ValueError:
        return None


def dvclive_callbacks(live_dir: Path, params: dict[str, Any], resume_step: int | None = None) -> list[Any]:
    """Trainer callbacks logging to `live_dir` on rank 0 (none elsewhere). dvc.yaml declares the plots,
    so dvcyaml=False. `resume_step`: the global step of the checkpoint the run resumes from."""
    if rank() != 0:
        return []
    from dvclive.error import InvalidParameterTypeError
    from dvclive.plots import NumpyEncoder
    from dvclive.serialize import dump_yaml
    from ruamel.yaml.representer import RepresenterError
    from transformers.integrations import DVCLiveCallback

    from dvclive import Live

    class WholeSummaryLive(Live):
        def make_summary(self) -> None:
            """DVCLive's own, but written whole: DVCLive rewrites metrics.json in place at every logged step, so
            a run killed mid-write left it empty and the resumed run, which reads it back, failed to decode it."""
            if self._step is not None:
                self.summary["step"] = self.step
            write_atomically(Path(self.metrics_file), json.dumps(self.summary, indent=4, cls=NumpyEncoder) + "\n")

        def _dump_params(self) -> None:
            """DVCLive's own, but written whole: DVCLive rewrites params.yaml in place, so a run killed between the
            open and the write left it empty and the resumed run, which reads it back, failed on it."""
            try:
                with atomic_output(Path(self.params_file)) as temp:
                    dump_yaml(self._params, str(temp))
            except RepresenterError as err:
                raise InvalidParameterTypeError(err.args[0]) from err

    class StepAlignedDVCLive(DVCLiveCallback):
        def setup(self, args: Any, state: Any, model: Any) -> None:
            self._initialized = True  # params are logged once below, not the whole TrainingArguments

        def on_log(self, args: Any, state: Any, control: Any, model: Any = None, logs: Any = None, **kwargs: Any):
            if not state.is_world_process_zero:
                return
            self.live.step = state.global_step
            logs = {k: v for k, v in (logs or {}).items() if not any(t in k for t in TIMING_KEYS)}
            super().on_log(args, state, control, model=model, logs=logs, **kwargs)

    resume = resume_step is not None and live_dir.is_dir()
    if resume:
        truncate_plots(live_dir, resume_step)
    live = WholeSummaryLive(str(live_dir), dvcyaml=False, save_dvc_exp=False, resume=resume, report=None)
    live.log_params(params)
    return [StepAlignedDVCLive(live=live, log_model=False)]
