"""A DPO batch's rows forwarded in length-sorted groups, each padded only to its own longest row.

TRL's DPOTrainer feeds the chosen and the rejected row of every pair in one tensor, padded to the batch's
longest row. Batching pairs of similar length (`dpo.train_sampling_strategy: group_by_length`) leaves the gap
between a pair's two answers: 20 % of the positions on the shipped pairs were padding. TRL's own remedy,
`padding_free`, is disabled in the TRL version we pin.

`split_rows(forward, min_saving)` wraps the forward TRL gives the model (its fused LM head, which returns
per-token log-probs): the rows are sorted by length and cut into the groups that minimise padded positions
plus `min_saving` per extra forward (an exact partition, `row_groups`); each group runs through the model
trimmed to its longest row, and the per-token outputs are padded back and put in the batch's order. A row's
log-probs do not depend on the other rows (right padding, causal attention), so the loss and its gradients are
those of one padded forward; only the order of floating-point sums changes (tests/train/test_row_groups.py).

It falls back to one forward whenever the batch is not the right-padded kind this reasons about: positional
arguments, explicit position ids, multimodal inputs, MoE router logits, or a left-padded mask.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

# The per-token fields of TRL's FusedCausalLMOutput: zero (False) wherever the label is -100.
PER_TOKEN = ("log_probs", "entropy", "log_sum_sq_probs", "mean_logits", "is_top1", "label_mask")

# The keyword arguments a group can be cut along the sequence; any other one leaves the batch whole.
SLICED = ("input_ids", "attention_mask", "labels")
PASSED = ("use_cache", "return_dict", "num_items_in_batch")


def row_groups(lengths: list[int], min_saving: int) -> list[list[int]]:
    """The rows (indices into `lengths`), shortest first, cut into contiguous groups of the sorted order.

    Minimises the positions fed to the model, each group padded to its longest row, plus `min_saving` for each
    group: a split is made only where it saves at least that many pad positions. Exact (dynamic programming over
    the sorted lengths, n² for n rows); ties keep fewer groups.
    """
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
    sorted_lengths = [lengths[i] for i in order]
    best = [0] + [None] * len(order)  # best[j]: the cost of the first j sorted rows
    cut = [0] * (len(order) + 1)
    for j in range(1, len(order) + 1):
        for i in range(j):  # the last group is sorted rows i..j-1, padded to the longest, sorted_lengths[j-1]
            cost = best[i] + (j - i) * sorted_lengths[j - 1] + min_saving
            if best[j] is None or cost < best[j]:
                best[j], cut[j] = cost, i
    groups = []
    j = len(order)
    while j > 0:
        groups.append(order[cut[j] : j])
        j = cut[j]
    return groups[::-1]


def right_padded_lengths(attention_mask: Any) -> list[int] | None:
    """Each row's length when every row is its tokens then padding (right padding); None otherwise."""
    import torch

    lengths = attention_mask.sum(dim=1)
    positions = torch.arange(attention_mask.size(1), device=attention_mask.device)
    expected = (positions.unsqueeze(0) < lengths.unsqueeze(1)).to(attention_mask.dtype)
    return lengths.tolist() if torch.equal(attention_mask, expected) else None


def split_rows(forward: Callable[..., Any], min_saving: int) -> Callable[..., Any]:
    """`forward` (a model's, with TRL's fused LM head), running a right-padded batch in length-sorted row groups."""

    def grouped_forward(*args: Any, fused_lm_head: bool = False, **kwargs: Any) -> Any:
        given = {key: value for key, value in kwargs.items() if value is not None}
        groups = None if args or not fused_lm_head or min_saving <= 0 else _groups(given, min_saving)
        if groups is None:
            return forward(*args, fused_lm_head=fused_lm_head, **kwargs)
        num_items = given.pop("num_items_in_batch", None)
        outputs = []
        for rows, length in groups:
            group = {**given, **{key: given[key][rows, :length] for key in SLICED}}
            outputs.append(forward(fused_lm_head=True, **group))
        return _assembled(outputs, [rows for rows, _ in groups], given["input_ids"].size(1) - 1, num_items)

    return grouped_forward


def _groups(given: dict[str, Any], min_saving: int) -> list[tuple[Any, int]] | None:
    """The row groups of this call's batch (its keyword arguments that are not None): an index tensor and the
    longest row's length each; None to run it whole."""
    import torch

    if any(key not in SLICED + PASSED for key in given) or any(key not in given for key in SLICED):
        return None  # position ids, embeddings, pixel values, router logits...: not a batch this reasons about
    lengths = right_padded_lengths(given["attention_mask"])
    if lengths is None:
        return None
    groups = row_groups(lengths, min_saving)
    if len(groups) == 1:
        return None
    device = given["input_ids"].device
    return [(torch.tensor(rows, device=device), max(lengths[i] for i in rows)) for rows in groups]


def _assembled(outputs: list[Any], groups: list[Any], width: int, num_items: Any) -> Any:
    """The groups' outputs as one padded forward over the whole batch would have returned them."""
    import torch
    import torch.nn.functional as F
    from trl.trainer.utils import FusedCausalLMOutput

    order = torch.cat(groups)
    inverse = torch.empty_like(order)
    inverse[order] = torch.arange(order.numel(), device=order.device)
    fields = {}
    for name in PER_TOKEN:
        parts = [getattr(out, name) for out in outputs]
        if any(part is None for part in parts):
            fields[name] = None
            continue
        padded = [F.pad(part, (0, width - part.size(1))) for part in parts]  # zeros (False) past a group's rows
        fields[name] = torch.cat(padded)[inverse]
    mask = fields["label_mask"]
    denominator = mask.sum().clamp(min=1) if num_items is None else num_items
    return FusedCausalLMOutput(loss=-fields["log_probs"].sum() / denominator, aux_loss=None, **fields)
