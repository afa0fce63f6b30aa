"""TRL's fused LM head, made to score only the positions that have a label on CPU too.

TRL's SFTTrainer and DPOTrainer compute log-probs with a fused, chunked LM head (`add_fused_lm_head` in
trl/trainer/utils.py) that never builds the (batch, length, vocabulary) logits. On CUDA and XPU it projects only
the positions whose label is not -100; on every other device it projects all of them, prompt and padding
included, and masks the result: on a compiling backend (TRL names Neuron) a batch-dependent number of positions
would change the tile shapes and recompile every step. CPU runs eagerly, so nothing recompiles, and the extra
positions are pure waste: on the tiny default they were a fifth of sft's training time and over a third of dpo's
(BENCHMARKS.md "Training efficiency").

`label_positions_only()` makes TRL take that compact path on CPU for the span of a `with`. The log-probs, the
loss and the gradients are those of the full projection (tests/train/test_fused_head.py); only the order of
floating-point sums changes. It touches one module-level function, `trl.trainer.utils._use_triton`, of the TRL
version libraries.yaml pins (`libraries.check` stops a stage run with another one); should a TRL lack it, the
head stays as TRL made it, correct and slower.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Any

log = logging.getLogger(__name__)


@contextlib.contextmanager
def label_positions_only() -> Iterator[None]:
    """Within the `with`, TRL's fused LM head projects only the labelled positions of a CPU batch."""
    import trl
    from trl.trainer import utils

    original = getattr(utils, "_use_triton", None)
    if original is None:
        log.warning("trl %s has no trainer.utils._use_triton: its LM head scores every position", trl.__version__)
        yield
        return

    def compact(device: Any) -> bool:  # a torch.device
        return device.type == "cpu" or original(device)

    utils._use_triton = compact
    try:
        yield
    finally:
        utils._use_triton = original
