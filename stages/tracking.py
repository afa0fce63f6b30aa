"""DVCLive for the trainer stages: one Live per stage dir, steps aligned with the trainer's global step.

transformers' own DVCLiveCallback counts log events rather than optimizer steps, so train and eval points
of the same step land at different x positions; `_StepAlignedDVCLive` sets `live.step` from
`state.global_step` before every log. Only rank 0 logs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def dvclive_callback(live_dir: Path, params: dict[str, Any], resume: bool = False) -> Any:
    """A trainer callback logging to `live_dir` (dvc.yaml declares its plots, so dvcyaml=False)."""
    from dvclive import Live
    from transformers.integrations import DVCLiveCallback

    class _StepAlignedDVCLive(DVCLiveCallback):
        def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kwargs: Any) -> None:
            if state.is_world_process_zero and self.live is not None:
                self.live.step = state.global_step
            super().on_log(args, state, control, logs=logs, **kwargs)

        def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if state.is_world_process_zero and self.live is not None:
                self.live.end()

    live = Live(str(live_dir), dvcyaml=False, save_dvc_exp=False, resume=resume, report=None)
    live.log_params(params)
    return _StepAlignedDVCLive(live=live, log_model=None)
