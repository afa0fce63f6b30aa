"""How a training stage runs: in one process or in N under torchrun, and from its last checkpoint.

`sft.num_processes: 4` makes `python -m stages.sft` start itself again as four workers through
`torch.distributed.run` (torchrun), one per GPU — what `deepspeed --num_gpus=4 train.py` does on one
machine; each worker sees the DeepSpeed config in its trainer arguments. On a CPU box the workers talk
over gloo. A stage started by a launcher already (torchrun, `deepspeed --hostfile`, `accelerate launch`)
finds RANK/LOCAL_RANK set and trains in place, which is the route to several machines.

Checkpoints go to a directory that dvc.yaml declares `persist: true`, so a killed `dvc repro` leaves them
for the next run to resume from; a finished run empties it so they never reach the DVC cache.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

log = logging.getLogger("launch")

CHECKPOINT_PREFIX = "checkpoint-"
COMPLETE_MARKER = "trainer_state.json"  # the Trainer writes it last: a checkpoint without it was cut short


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def launched() -> bool:
    """True inside a worker started by torchrun, deepspeed or accelerate."""
    return "LOCAL_RANK" in os.environ


def setup_logging() -> None:
    """INFO on rank 0; workers other than rank 0 report warnings only, so the log reads like one run."""
    level = logging.INFO if rank() == 0 else logging.WARNING
    logging.basicConfig(level=level, format="%(asctime)s %(name)s %(levelname)s %(message)s")


def relaunch(module: str, num_processes: int) -> int:
    """Run `python -m module` as `num_processes` workers on this machine; return the launcher's exit code."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={num_processes}"]
    cmd += ["--module", module]
    log.info("launching %d processes: %s", num_processes, " ".join(cmd))
    return subprocess.run(cmd).returncode


def last_checkpoint(checkpoint_dir: Path) -> Path | None:
    """The newest complete `checkpoint-N` in `checkpoint_dir`, or None."""
    if not checkpoint_dir.is_dir():
        return None
    complete = [
        path
        for path in checkpoint_dir.glob(f"{CHECKPOINT_PREFIX}*")
        if path.name[len(CHECKPOINT_PREFIX) :].isdigit() and (path / COMPLETE_MARKER).is_file()
    ]
    return max(complete, key=lambda path: int(path.name[len(CHECKPOINT_PREFIX) :]), default=None)


def clear_checkpoints(checkpoint_dir: Path) -> None:
    """Leave `checkpoint_dir` empty (it stays: DVC records the persisted output as an empty directory)."""
    if checkpoint_dir.is_dir():
        shutil.rmtree(checkpoint_dir)
    checkpoint_dir.mkdir(parents=True, exist_ok=True)


def engine_report() -> Any:
    """A trainer callback that logs, on rank 0 as training starts, which engine really runs it: e.g.
    "DeepSpeed ZeRO stage 2 over 2 processes (optimizer DeepSpeedZeroOptimizer, gloo backend)"."""
    import torch.distributed as dist
    from transformers import TrainerCallback

    class EngineReport(TrainerCallback):
        def on_train_begin(self, args: Any, state: Any, control: Any, optimizer: Any = None, **kwargs: Any) -> None:
            if not state.is_world_process_zero:
                return
            backend = f", {dist.get_backend()} backend" if dist.is_initialized() else ""
            engine = f"DeepSpeed ZeRO stage {args.deepspeed_plugin.zero_stage}" if args.deepspeed_plugin else "Trainer"
            log.info("%s over %d process(es) (optimizer %s%s)", engine, args.world_size, type(getattr(optimizer, "optimizer", optimizer)).__name__, backend)

    return EngineReport()
