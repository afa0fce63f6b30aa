"""DVCLive for the trainer stages: one Live per stage dir, steps aligned with the trainer's global step.

transformers' own DVCLiveCallback counts log events rather than optimizer steps, so train and eval
points of the same step land at different x positions; here `live.step` is set from
`state.global_step` before every log. Wall-clock figures (runtime, samples per second, FLOPs) are
dropped: the DVCLive dir is tracked by git and must be byte-identical when nothing changed.
Only rank 0 logs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

TIMING_KEYS = ("runtime", "per_second", "flos")


def dvclive_callback(live_dir: Path, params: dict[str, Any], resume: bool = False) -> Any:
    """A trainer callback logging to `live_dir` (dvc.yaml declares its plots, so dvcyaml=False)."""
    from dvclive import Live
    from transformers.integrations import DVCLiveCallback

    class StepAlignedDVCLive(DVCLiveCallback):
        def setup(self, args: Any, state: Any, model: Any) -> None:
            self._initialized = True  # params are logged once below, not the whole TrainingArguments

        def on_log(self, args: Any, state: Any, control: Any, model: Any = None, logs: Any = None, **kwargs: Any):
            if not state.is_world_process_zero:
                return
            self.live.step = state.global_step
            logs = {k: v for k, v in (logs or {}).items() if not any(t in k for t in TIMING_KEYS)}
            super().on_log(args, state, control, model=model, logs=logs, **kwargs)

    live = Live(str(live_dir), dvcyaml=False, save_dvc_exp=False, resume=resume, report=None)
    live.log_params(params)
    return StepAlignedDVCLive(live=live, log_model=False)
