"""ta/train/fused_head.py: on CPU, TRL's fused LM head projects only the labelled positions inside
`label_positions_only()`, and gives the log-probs, loss and gradients of full logits."""

from __future__ import annotations

from typing import Any

import pytest

from tests.helpers import MICRO_QWEN2


def micro_model_and_batch() -> tuple[Any, dict[str, Any]]:
    """A random micro Qwen2 with TRL's fused head, and a padded batch whose prompts and pads have no label."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM
    from trl.trainer.utils import add_fused_lm_head

    torch.manual_seed(0)
    model = Qwen2ForCausalLM(Qwen2Config(vocab_size=97, **MICRO_QWEN2))
    add_fused_lm_head(model, outputs=("log_probs", "entropy", "is_top1"))
    input_ids = torch.randint(1, 97, (3, 20))
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, 14:] = 0  # right padding
    attention_mask[2, 9:] = 0
    labels = input_ids.clone()
    labels[:, :6] = -100  # the prompt
    labels[attention_mask == 0] = -100
    return model, {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def projected_rows(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Rows of hidden states each call of TRL's chunked log-prob function projects."""
    from trl.trainer import utils

    original = utils._ChunkedLogProbFunction
    rows: list[int] = []

    class Counting:
        @staticmethod
        def apply(hidden: Any, *args: Any) -> Any:
            rows.append(hidden.shape[0])
            return original.apply(hidden, *args)

    monkeypatch.setattr(utils, "_ChunkedLogProbFunction", Counting)
    return rows


def test_only_labelled_positions_are_projected_and_log_probs_are_those_of_full_logits(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import torch

    from ta.train.fused_head import label_positions_only

    model, batch = micro_model_and_batch()
    rows = projected_rows(monkeypatch)
    labels = batch["labels"][:, 1:]
    labelled = int((labels != -100).sum())

    with label_positions_only():
        fused = model(**batch, fused_lm_head=True)
    outside = model(**batch, fused_lm_head=True)  # TRL's own choice again after the `with`
    assert rows == [labelled, labels.numel()]
    assert labelled < labels.numel() / 2

    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1].float()
    log_softmax = logits.log_softmax(-1)
    mask = labels != -100
    expected = log_softmax.gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1) * mask
    torch.testing.assert_close(fused.log_probs, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(outside.log_probs, expected, atol=1e-5, rtol=1e-5)
    entropy = -(log_softmax.exp() * log_softmax).sum(-1) * mask
    torch.testing.assert_close(fused.entropy, entropy, atol=1e-5, rtol=1e-5)
    assert torch.equal(fused.is_top1.bool(), (logits.argmax(-1) == labels) & mask)


def test_the_loss_has_the_gradients_of_a_cross_entropy_over_full_logits() -> None:
    import torch

    from ta.train.fused_head import label_positions_only

    model, batch = micro_model_and_batch()
    with label_positions_only():
        model(**batch, fused_lm_head=True).loss.backward()
    fused = {name: p.grad.clone() for name, p in model.named_parameters()}
    model.zero_grad()

    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
    labels = batch["labels"][:, 1:]
    torch.nn.functional.cross_entropy(logits.reshape(-1, logits.size(-1)), labels.reshape(-1)).backward()
    for name, p in model.named_parameters():
        torch.testing.assert_close(fused[name], p.grad, atol=1e-6, rtol=1e-4, msg=name)
