"""ta/train/row_groups.py: a batch's rows forwarded in length-sorted groups give the outputs, loss and gradients
of one padded forward, feeding the model fewer pad positions; batches it cannot reason about run whole."""

from __future__ import annotations

import itertools
import random
from typing import Any

import pytest

from tests.helpers import MICRO_QWEN2

LENGTHS = [31, 9, 30, 12, 8, 29, 11, 31]  # four pairs' rows, chosen and rejected: long and short answers mixed


def brute_force_cost(lengths: list[int], min_saving: int) -> int:
    """The least cost over every way of cutting the sorted lengths into contiguous groups."""
    ordered = sorted(lengths)
    best = None
    for cuts in itertools.product((False, True), repeat=len(ordered) - 1):
        bounds = [0] + [i + 1 for i, cut in enumerate(cuts) if cut] + [len(ordered)]
        cost = sum((end - start) * ordered[end - 1] + min_saving for start, end in itertools.pairwise(bounds))
        best = cost if best is None else min(best, cost)
    return best


def cost(lengths: list[int], groups: list[list[int]], min_saving: int) -> int:
    return sum(len(rows) * max(lengths[i] for i in rows) + min_saving for rows in groups)


@pytest.mark.parametrize("seed", range(12))
def test_row_groups_are_an_optimal_partition(seed: int) -> None:
    from ta.train.row_groups import row_groups

    rng = random.Random(seed)
    lengths = [rng.randint(1, 60) for _ in range(rng.randint(1, 10))]
    min_saving = rng.choice([0, 8, 64, 500])
    groups = row_groups(lengths, min_saving)
    assert sorted(i for rows in groups for i in rows) == list(range(len(lengths)))  # every row exactly once
    assert cost(lengths, groups, min_saving) == brute_force_cost(lengths, min_saving)


def test_a_split_is_made_only_where_it_saves_the_given_pad_positions() -> None:
    from ta.train.row_groups import row_groups

    # Splitting the four short rows off saves 4 × (31 - 12) = 76 positions.
    assert len(row_groups(LENGTHS, 76)) == 1
    assert [sorted(rows) for rows in row_groups(LENGTHS, 75)] == [[1, 3, 4, 6], [0, 2, 5, 7]]


def micro_model() -> Any:
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM
    from trl.trainer.utils import add_fused_lm_head

    torch.manual_seed(0)
    model = Qwen2ForCausalLM(Qwen2Config(vocab_size=97, **MICRO_QWEN2))
    add_fused_lm_head(model, outputs=("log_probs", "entropy", "mean_logits", "is_top1"))
    return model


def right_padded_batch(lengths: list[int]) -> dict[str, Any]:
    """DPO-like rows: a 5-token prompt without labels, the answer, right padding."""
    import torch

    generator = torch.Generator().manual_seed(1)
    input_ids = torch.randint(1, 97, (len(lengths), max(lengths)), generator=generator)
    attention_mask = (torch.arange(max(lengths)) < torch.tensor(lengths).unsqueeze(1)).long()
    input_ids = input_ids.masked_fill(attention_mask == 0, 0)
    labels = input_ids.masked_fill(attention_mask == 0, -100)
    labels[:, :5] = -100
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels, "use_cache": False}


def widths_fed(model: Any) -> list[tuple[int, int]]:
    """(rows, width) of every batch the model's decoder is fed."""
    shapes: list[tuple[int, int]] = []
    model.model.register_forward_pre_hook(
        lambda module, args, kwargs: shapes.append(tuple(kwargs["input_ids"].shape)), with_kwargs=True
    )
    return shapes


def dpo_like_loss(out: Any) -> Any:
    """A sum over rows and a contrast between halves, as DPO's loss reads the per-token log-probs."""
    per_row = out.log_probs.sum(dim=1)
    chosen, rejected = per_row.chunk(2)
    return out.loss + (chosen - rejected).sigmoid().sum()


def test_grouped_rows_give_the_outputs_and_gradients_of_one_padded_forward() -> None:
    import torch

    from ta.train.row_groups import split_rows

    model = micro_model()
    batch = right_padded_batch(LENGTHS)
    whole = model(fused_lm_head=True, **batch)
    dpo_like_loss(whole).backward()
    expected = {name: p.grad.clone() for name, p in model.named_parameters()}
    model.zero_grad()

    shapes = widths_fed(model)
    model.forward = split_rows(model.forward, min_saving=16)
    grouped = model(fused_lm_head=True, **batch)
    dpo_like_loss(grouped).backward()

    # The short rows ran apart from the long ones, each group at its own width: 4 × 19 pad positions fewer.
    assert sorted(shapes) == [(4, 12), (4, 31)]
    for name in ("log_probs", "entropy", "mean_logits"):
        torch.testing.assert_close(getattr(grouped, name), getattr(whole, name), rtol=1e-5, atol=1e-5)
    assert torch.equal(grouped.is_top1, whole.is_top1) and torch.equal(grouped.label_mask, whole.label_mask)
    torch.testing.assert_close(grouped.loss, whole.loss, rtol=1e-5, atol=1e-6)
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.grad, expected[name], rtol=1e-4, atol=1e-6, msg=name)


def test_num_items_in_batch_divides_the_loss_as_in_one_forward() -> None:
    import torch

    from ta.train.row_groups import split_rows

    model = micro_model()
    batch = right_padded_batch(LENGTHS)
    whole = model(fused_lm_head=True, num_items_in_batch=50, **batch)
    model.forward = split_rows(model.forward, min_saving=16)
    torch.testing.assert_close(model(fused_lm_head=True, num_items_in_batch=50, **batch).loss, whole.loss)


@pytest.mark.parametrize("case", ["left padding", "position ids", "plain forward", "saving too small"])
def test_batches_it_cannot_or_need_not_split_run_whole(case: str) -> None:
    import torch

    from ta.train.row_groups import split_rows

    model = micro_model()
    batch = right_padded_batch(LENGTHS)
    kwargs: dict[str, Any] = {"fused_lm_head": True}
    min_saving = 16
    if case == "left padding":
        batch = {key: value.flip(1) if torch.is_tensor(value) else value for key, value in batch.items()}
    elif case == "position ids":
        kwargs["position_ids"] = torch.arange(31).expand(len(LENGTHS), 31)
    elif case == "plain forward":
        kwargs = {}  # logits, as generation asks
    else:
        min_saving = 77
    shapes = widths_fed(model)
    model.forward = split_rows(model.forward, min_saving=min_saving)
    model(**batch, **kwargs)
    assert shapes == [(8, 31)]
