"""How a training stage runs: in one process or in N under torchrun.

`sft.num_processes: 4` makes `python -m stages.sft` start itself again as four workers through
`torch.distributed.run` (torchrun), one per GPU — what `deepspeed --num_gpus=4 train.py` does on one
machine; each worker sees the DeepSpeed config in its trainer arguments. On a CPU box the workers talk
over gloo. A stage started by a launcher already (torchrun, `deepspeed --hostfile`, `accelerate launch`)
finds RANK/LOCAL_RANK set and trains in place, which is the route to several machines.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from ta.errors import ParamsError

log = logging.getLogger("launch")


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def world_size(num_processes: int) -> int:
    """Processes training together: the launcher's WORLD_SIZE inside a worker (all nodes), else the
    `num_processes` this machine will start."""
    return int(os.environ.get("WORLD_SIZE", num_processes))


def launched() -> bool:
    """True inside a worker started by torchrun, deepspeed or accelerate."""
    return "LOCAL_RANK" in os.environ


def setup_logging() -> None:
    """INFO on rank 0; workers other than rank 0 report warnings only, so the log reads like one run."""
    level = logging.INFO if rank() == 0 else logging.WARNING
    logging.basicConfig(level=level, format="%(asctime)s %(name)s %(levelname)s %(message)s")


def local_command(module: str, num_processes: int) -> list[str]:
    """`python -m module` as `num_processes` workers on this machine (torchrun, standalone rendezvous)."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={num_processes}"]
    return [*cmd, "--module", module]


def node_command(module: str, num_processes: int, nnodes: int, node_rank: int | str, master: str) -> list[str]:
    """What to start on machine `node_rank` of `nnodes` for one run over all of them: torchrun's own multi-node
    launch, rendezvous at `master` (host:port of machine 0). Every worker finds RANK/LOCAL_RANK set and trains
    in place; global rank 0, on machine 0, writes the outputs (the machine to `dvc commit` on)."""
    host, _, port = master.rpartition(":")
    return [
        *("torchrun", f"--nnodes={nnodes}", f"--node_rank={node_rank}", f"--nproc_per_node={num_processes}"),
        *(f"--master_addr={host}", f"--master_port={port}", "--module", module),
    ]


def relaunch(module: str, num_processes: int) -> int:
    """Run `python -m module` as `num_processes` workers on this machine; return the launcher's exit code."""
    cmd = local_command(module, num_processes)
    log.info("launching %d processes: %s", num_processes, " ".join(cmd))
    return subprocess.run(cmd).returncode


def zero_stage(num_processes: int, deepspeed_config: str) -> int:
    """The ZeRO stage a run trains with: 0 unless several processes run under a DeepSpeed config."""
    if world_size(num_processes) <= 1 or not deepspeed_config:
        return 0
    return int(json.loads(Path(deepspeed_config).read_text(encoding="utf-8"))["zero_optimization"]["stage"])


def check_deepspeed(section: str, num_processes: int, deepspeed_config: str) -> None:
    """The DeepSpeed config exists and asks for a ZeRO stage the stages can save from (not 3: the weights are
    written from rank 0, which under ZeRO-3 holds only its shard)."""
    if num_processes > 1 and deepspeed_config and not Path(deepspeed_config).is_file():
        raise ParamsError(f"params.yaml: {section}.deepspeed_config: {deepspeed_config}: file not found")
    if zero_stage(num_processes, deepspeed_config) == 3:
        raise ParamsError(f"{deepspeed_config}: zero_optimization.stage 3 is not supported here; use stage 2")


def finish() -> None:
    """End this worker's part in a multi-process run: wait for every rank (rank 0 may still be saving), then
    tear the process group down. Left to interpreter exit, gloo's threads can outlive it, and a worker then
    aborts ("terminate called without an active exception") after a run that succeeded."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def engine_report() -> Any:
    """A trainer callback that logs, on rank 0, which engine really runs the training as it starts, e.g.
    "DeepSpeed ZeRO stage 2 over 2 processes (optimizer DeepSpeedZeroOptimizer, gloo backend)", and as it
    ends the throughput and, on a GPU, the peak memory (logs only: timings never go into tracked outputs)."""
    import torch
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

        def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if not state.is_world_process_zero:
                return
            runtime = next((e["train_runtime"] for e in reversed(state.log_history) if "train_runtime" in e), 0)
            tokens = next((e["num_tokens"] for e in reversed(state.log_history) if "num_tokens" in e), 0)
            if runtime and tokens:
                log.info("throughput: %d tokens in %.1f s, %.0f tokens/s", tokens, runtime, tokens / runtime)
            if torch.cuda.is_available():
                peak, reserved = torch.cuda.max_memory_allocated() / 2**30, torch.cuda.max_memory_reserved() / 2**30
                log.info("peak GPU memory on rank 0: %.2f GiB allocated, %.2f GiB reserved", peak, reserved)

    return EngineReport()
