"""How a training stage runs: in one process or in N under torchrun, and from its last checkpoint.

`sft.num_processes: 4` makes `python -m stages.sft` start itself again as four workers through
`torch.distributed.run` (torchrun), one per GPU — what `deepspeed --num_gpus=4 train.py` does on one
machine; each worker sees the DeepSpeed config in its trainer arguments. On a CPU box the workers talk
over gloo. A stage started by a launcher already (torchrun, `deepspeed --hostfile`, `accelerate launch`)
finds RANK/LOCAL_RANK set and trains in place, which is the route to several machines.

Checkpoints go to a directory that dvc.yaml declares `persist: true`, so a killed `dvc repro` leaves them
for the next run to resume from; a finished run empties it so they never reach the DVC cache. `run.json`
beside them records the params and input digests of the run that wrote them: a run with other params or
data starts afresh instead of resuming someone else's optimizer state.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

log = logging.getLogger("launch")

CHECKPOINT_PREFIX = "checkpoint-"
COMPLETE_MARKER = "trainer_state.json"  # the Trainer writes it last: without it, whole, a checkpoint was cut short
RUN_STAMP = "run.json"


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


def zero_stage(num_processes: int, deepspeed_config: str) -> int:
    """The ZeRO stage a run trains with: 0 unless several processes run under a DeepSpeed config."""
    if num_processes <= 1 or not deepspeed_config:
        return 0
    return int(json.loads(Path(deepspeed_config).read_text(encoding="utf-8"))["zero_optimization"]["stage"])


def check_deepspeed(section: str, num_processes: int, deepspeed_config: str) -> None:
    """The DeepSpeed config exists and asks for a ZeRO stage the stages can save from (not 3: the weights are
    written from rank 0, which under ZeRO-3 holds only its shard)."""
    from stages.params import ParamsError

    if num_processes > 1 and deepspeed_config and not Path(deepspeed_config).is_file():
        raise ParamsError(f"params.yaml: {section}.deepspeed_config: {deepspeed_config}: file not found")
    if zero_stage(num_processes, deepspeed_config) == 3:
        raise ParamsError(f"{deepspeed_config}: zero_optimization.stage 3 is not supported here; use stage 2")


def is_complete(checkpoint: Path) -> bool:
    """The checkpoint's trainer state is there and whole. The Trainer writes it in place (open, then write),
    so a run killed in between leaves it empty or cut short, and resuming from it fails on a JSON decode."""
    try:
        json.loads((checkpoint / COMPLETE_MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return True


def last_checkpoint(checkpoint_dir: Path) -> Path | None:
    """The newest complete `checkpoint-N` in `checkpoint_dir`, or None."""
    if not checkpoint_dir.is_dir():
        return None
    complete = [
        path
        for path in checkpoint_dir.glob(f"{CHECKPOINT_PREFIX}*")
        if path.name[len(CHECKPOINT_PREFIX) :].isdigit() and is_complete(path)
    ]
    return max(complete, key=lambda path: int(path.name[len(CHECKPOINT_PREFIX) :]), default=None)


def write_atomically(path: Path, text: str) -> None:
    """Write `path` whole or not at all (a temp file renamed over it), for a file a resumed run reads back.
    The temp name is fixed, so one a killed run leaves behind is taken up by the next write."""
    temp = path.with_name(f"{path.name}.tmp")
    temp.write_text(text, encoding="utf-8")
    os.replace(temp, path)


def file_digest(path: Path) -> str:
    """sha256 of a file; for one over 64 MiB (model weights), its size and mtime, which a rerun in the same
    workspace keeps and a rebuild or checkout changes."""
    stat = path.stat()
    if stat.st_size > 64 << 20:
        return f"size {stat.st_size}, mtime {stat.st_mtime_ns}"
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def run_fingerprint(params: dict[str, Any], inputs: list[Path]) -> dict[str, Any]:
    """What a checkpoint is only valid for: the stage's params and the digests of its input files."""
    return {"params": params, "inputs": {str(path): file_digest(path) for path in inputs if path.is_file()}}


def prepare_resume(checkpoint_dir: Path, fingerprint: dict[str, Any]) -> None:
    """Keep the checkpoints of an interrupted run with this very fingerprint; clear any others.
    Runs once, before any worker starts, so that all ranks see the same checkpoints."""
    stamp = checkpoint_dir / RUN_STAMP
    text = json.dumps(fingerprint, sort_keys=True, indent=1, ensure_ascii=False) + "\n"
    if checkpoint_dir.is_dir() and any(checkpoint_dir.iterdir()):
        if not stamp.is_file() or stamp.read_text(encoding="utf-8") != text:
            log.info("%s: checkpoints of a run with other params or data; starting afresh", checkpoint_dir)
            clear_checkpoints(checkpoint_dir)
    checkpoint_dir.mkdir(parents=True, exist_ok=True)
    write_atomically(stamp, text)


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
            inner = getattr(optimizer, "optimizer", optimizer)  # accelerate wraps DeepSpeed's optimizer
            log.info("%s over %d process(es) (optimizer %s%s)", engine, args.world_size, type(inner).__name__, backend)

    return EngineReport()
