"""Stage sft (stages/sft.py, ta/train/sft.py) in throwaway workspaces (tests/train/conftest.py): a micro Qwen2
with a one-character-per-token tokenizer, arithmetic conversations, a few optimizer steps. Every run trains
for real (TRL, PEFT, bitsandbytes, DeepSpeed), only briefly."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest
import yaml

from stages import sft
from tests.helpers import SYSTEM, repo_env, run_module, set_params, tsv_steps, tsv_values, write_jsonl

PLOTS = Path("dvclive/sft/plots/metrics")


def keep_the_trainer(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """The SFTTrainer the stage builds, kept when it starts training (the run itself is unchanged)."""
    import trl

    kept: list[Any] = []
    train = trl.SFTTrainer.train

    def train_and_keep(self: Any, *args: Any, **kwargs: Any) -> Any:
        kept.append(self)
        return train(self, *args, **kwargs)

    monkeypatch.setattr(trl.SFTTrainer, "train", train_and_keep)
    return kept


def test_lora_run_logs_every_step_and_leaves_no_checkpoints(training_workspace: Path) -> None:
    assert sft.main([]) == 0
    assert json.loads((training_workspace / "models/sft/adapter_config.json").read_text())["r"] == 4
    assert (training_workspace / "models/sft/tokenizer.json").is_file()
    # max_steps 4, logging every step, eval and checkpoint every 2 steps; checkpoints gone at the end.
    assert tsv_steps(PLOTS / "loss.tsv") == [1, 2, 3, 4]
    assert tsv_steps(PLOTS / "eval/loss.tsv") == [2, 4]
    assert tsv_steps(PLOTS / "learning_rate.tsv") == [1, 2, 3, 4]
    assert tsv_steps(PLOTS / "grad_norm.tsv") == [1, 2, 3, 4]
    assert not (PLOTS / "eval/runtime.tsv").exists()
    assert (training_workspace / "checkpoints/sft").is_dir() and not any(
        (training_workspace / "checkpoints/sft").iterdir()
    )
    logged = yaml.safe_load((training_workspace / "dvclive/sft/params.yaml").read_text(encoding="utf-8"))
    assert logged["sft"]["max_steps"] == 4 and logged["lr"] == pytest.approx(1.0e-2)


def token_ids(tokenizer: Any, messages: list[dict[str, str]]) -> list[int]:
    return tokenizer(tokenizer.apply_chat_template(messages, tokenize=False), add_special_tokens=False)["input_ids"]


def expected_labels(tokenizer: Any, messages: list[dict[str, str]]) -> list[int]:
    """The ids of each assistant answer and its <|im_end|>, -100 everywhere else: found in the text the
    tokenizer's own (plain) chat template renders, independently of the trainer's masking."""
    text = tokenizer.apply_chat_template(messages, tokenize=False)
    spans, searched = [], 0
    for message in messages:
        if message["role"] == "assistant":
            start = text.index(f"<|im_start|>assistant\n{message['content']}<|im_end|>", searched)
            start += len("<|im_start|>assistant\n")
            searched = start + len(message["content"]) + len("<|im_end|>")
            spans.append((start, searched))
    encoding = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    return [
        token if any(lo <= begin < hi for lo, hi in spans) else -100
        for token, (begin, _) in zip(encoding["input_ids"], encoding["offset_mapping"], strict=True)
    ]


def test_the_loss_covers_every_assistant_turn_and_nothing_else(
    training_workspace: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The collated batches the trainer learns from: labels are the token ids inside both assistant turns of
    the two-turn dialogue (and of every other row), -100 outside them and in the padding."""
    from ta.models import load_tokenizer
    from tests.helpers import read_jsonl

    kept = keep_the_trainer(monkeypatch)
    run = {"max_steps": 1, "save_steps": 0, "early_stopping_patience": 0, "max_seq_len": 256}  # none truncated
    set_params(training_workspace, sft=run)
    assert sft.main([]) == 0
    tokenizer = load_tokenizer(training_workspace / "models/base")
    expected = {}
    for row in read_jsonl(training_workspace / "data/prepared/sft_train.jsonl"):
        expected[tuple(token_ids(tokenizer, row["messages"]))] = expected_labels(tokenizer, row["messages"])
    two_turns = [key for key in expected if tokenizer.decode(list(key)).count("<|im_start|>assistant") == 2]
    assert len(two_turns) == 1
    seen = set()
    for batch in kept[0].get_train_dataloader():
        for input_ids, labels in zip(batch["input_ids"].tolist(), batch["labels"].tolist(), strict=True):
            key = next(k for k in expected if input_ids[: len(k)] == list(k))
            assert labels[: len(key)] == expected[key], tokenizer.decode(list(key))
            assert set(labels[len(key) :]) <= {-100}  # padding
            seen.add(key)
    assert seen == set(expected) and two_turns[0] in seen


def test_packing_fills_blocks_with_whole_conversations(
    training_workspace: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ta.models import load_tokenizer
    from tests.helpers import read_jsonl

    kept = keep_the_trainer(monkeypatch)
    set_params(training_workspace, sft={"packing": True, "max_seq_len": 256, "max_steps": 2})
    assert sft.main([]) == 0
    tokenizer = load_tokenizer(training_workspace / "models/base")
    rows = read_jsonl(training_workspace / "data/prepared/sft_train.jsonl")
    lengths = sorted(
        len(tokenizer.apply_chat_template(r["messages"], tokenize=True, return_dict=True)["input_ids"]) for r in rows
    )
    packed = kept[0].train_dataset
    assert -(-sum(lengths) // 256) <= len(packed) < len(rows) // 2  # ~70-token conversations, blocks of 256
    assert all(len(ids) <= 256 for ids in packed["input_ids"])
    assert sorted(n for row in packed["seq_lengths"] for n in row) == lengths  # every conversation, whole
    assert tsv_steps(PLOTS / "loss.tsv") == [1, 2] and all(v > 0 for v in tsv_values(PLOTS / "loss.tsv"))


def test_qlora_loads_every_linear_layer_in_4bit_nf4_and_trains(training_workspace: Path) -> None:
    import bitsandbytes as bnb
    import torch
    from safetensors.torch import load_file

    from ta.base_model import read_base_ref
    from ta.config import load_params
    from ta.train.sft import load_model

    set_params(training_workspace, sft={"method": "qlora", "max_steps": 2})
    model = load_model(read_base_ref(), load_params().sft)
    quantized = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert len(quantized) == 2 * 7  # two layers × q, k, v, o, gate, up, down; the head stays unquantized
    assert {m.weight.quant_type for m in quantized} == {"nf4"}
    assert all(m.weight.quant_state.nested for m in quantized)  # double quantization
    assert {m.compute_dtype for m in quantized} == {torch.bfloat16}

    assert sft.main([]) == 0
    adapter = load_file(str(training_workspace / "models/sft/adapter_model.safetensors"))
    lora_b = [t for name, t in adapter.items() if "lora_B" in name]
    assert len(lora_b) == 14 and any(t.abs().sum() > 0 for t in lora_b)  # B starts at zero: it was trained


def test_full_fine_tuning_saves_the_whole_changed_model(training_workspace: Path) -> None:
    from safetensors.torch import load_file

    set_params(training_workspace, sft={"method": "full", "max_steps": 2})
    assert sft.main([]) == 0
    assert not (training_workspace / "models/sft/adapter_config.json").exists()
    tuned = load_file(str(training_workspace / "models/sft/model.safetensors"))
    base = load_file(str(training_workspace / "models/base/model.safetensors"))
    assert set(tuned) == set(base)
    name = "model.layers.0.mlp.down_proj.weight"
    assert not tuned[name].equal(base[name])


def diverging_rows(answer: str, n: int) -> list[dict[str, Any]]:
    return [
        {
            "messages": [
                {"role": "system", "content": SYSTEM},
                {"role": "user", "content": f"第{i}题"},
                {"role": "assistant", "content": answer},
            ]
        }
        for i in range(n)
    ]


def early_stopping_reference(losses: list[float], patience: int, threshold: float) -> tuple[int, int]:
    """(evals run, index of the best eval) by the convergence rule: an eval improves on the best so far only
    when it is lower by more than `threshold`; `patience` evals in a row without that end the run; the
    best checkpoint is the lowest eval loss."""
    best, waited = None, 0
    for i, loss in enumerate(losses):
        if best is None or (loss < best and best - loss > threshold):
            waited = 0
        else:
            waited += 1
        best = loss if best is None else min(best, loss)
        if waited >= patience:
            return i + 1, losses.index(min(losses[: i + 1]))
    return len(losses), losses.index(min(losses))


def test_early_stopping_stops_when_eval_loss_stops_improving_and_restores_the_best(
    training_workspace: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Training teaches 甲 as every answer while the held-out answers are 乙: eval loss soon gets worse
    with every step. The run must stop where the rule says (well before max_steps) and save the best
    checkpoint's weights, which are not the last step's."""
    from safetensors.torch import load_file

    from ta.train import checkpoints

    workspace = training_workspace
    write_jsonl(workspace / "data/prepared/sft_train.jsonl", diverging_rows("甲" * 12, 24))
    write_jsonl(workspace / "data/prepared/sft_eval.jsonl", diverging_rows("乙" * 12, 4))
    monkeypatch.setattr(checkpoints, "clear_checkpoints", lambda _: None)  # keep them to compare with
    run = {"max_steps": 10, "eval_steps": 1, "save_steps": 1, "early_stopping_patience": 2}
    set_params(workspace, sft={**run, "early_stopping_threshold": 0.01})
    caplog.set_level(logging.INFO, logger="sft")
    assert sft.main([]) == 0
    losses = tsv_values(PLOTS / "eval/loss.tsv")
    evals, best = early_stopping_reference(losses, patience=2, threshold=0.01)
    assert tsv_steps(PLOTS / "eval/loss.tsv") == list(range(1, evals + 1)) and evals < 10, losses
    stopped, best_step = evals, best + 1
    assert best_step < stopped, f"the setup must make eval loss worse at the end: {losses}"
    assert any(r.getMessage().endswith(f"at step {best_step} of {stopped}") for r in caplog.records if r.name == "sft")
    saved = load_file(str(workspace / "models/sft/adapter_model.safetensors"))
    best_weights = load_file(str(workspace / f"checkpoints/sft/checkpoint-{best_step}/adapter_model.safetensors"))
    last_weights = load_file(str(workspace / f"checkpoints/sft/checkpoint-{stopped}/adapter_model.safetensors"))
    assert saved.keys() == best_weights.keys() == last_weights.keys()
    assert all(saved[name].equal(best_weights[name]) for name in saved)
    assert not all(saved[name].equal(last_weights[name]) for name in saved)


@pytest.mark.parametrize(
    ("sft_params", "message"),
    [
        ({"method": "dora"}, "sft: error: params.yaml: sft.method: 'dora' is not one of lora, qlora, full"),
        (
            {"early_stopping_patience": 1, "eval_steps": 2, "save_steps": 3},
            "sft: error: params.yaml: sft.save_steps: 3 must be a positive multiple of sft.eval_steps (2)",
        ),
        ({"num_processes": 2, "deepspeed_config": "no.json"}, "sft.deepspeed_config: no.json: file not found"),
        ({"gpu_memory_gb": 0.5}, "exceeds the 0.5 GiB available"),
        ({"num_processes": 2, "deepspeed_config": "zero3.json"}, "zero3.json: zero_optimization.stage 3 is not"),
        ({"liger_kernels": True}, "sft: error: params.yaml: sft.liger_kernels: liger-kernel is not installed"),
    ],
)
def test_bad_configs_fail_fast_with_one_line(
    workspace: Path, capsys: pytest.CaptureFixture[str], sft_params: dict, message: str
) -> None:
    (workspace / "zero3.json").write_text(json.dumps({"zero_optimization": {"stage": 3}}))
    set_params(workspace, sft=sft_params)
    assert sft.main([]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("sft: error: ") and message in err and "\n" not in err
    assert not (workspace / "models/sft").exists()


def token_nll(trainer: Any) -> tuple[float, int]:
    """Summed NLL (float64) and count of the loss tokens of the trainer's eval set, as its collator batches it."""
    import torch

    model, total, count = trainer.model.eval(), 0.0, 0
    with torch.no_grad():
        for batch in trainer.get_eval_dataloader():
            labels = batch.pop("labels")[:, 1:]
            logits = model(**batch).logits[:, :-1].double()
            scored = labels != -100
            logprobs = torch.log_softmax(logits[scored], dim=-1).gather(1, labels[scored][:, None])
            total, count = total - logprobs.sum().item(), count + int(scored.sum())
    return total, count


def test_packed_and_padding_free_batches_give_each_token_the_loss_of_padded_ones(
    training_workspace: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Packing (several conversations in one row) and padding-free batches (one flattened row) must keep the
    conversations apart (position_ids restart, attention stays within one): every loss token gets the same
    log-prob as in a padded batch, so the summed loss agrees. lr ~0 and one step: the model is the untrained
    one's in all three runs."""
    kept = keep_the_trainer(monkeypatch)
    layouts = {"padded": {}, "padding_free": {"padding_free": True}, "packed": {"packing": True}}
    for layout in layouts.values():
        run = {"max_steps": 1, "eval_steps": 1, "save_steps": 0, "max_seq_len": 512, "packing": False, **layout}
        set_params(training_workspace, lr=1.0e-12, sft=run)
        assert sft.main([]) == 0
    nll = dict(zip(layouts, (token_nll(trainer) for trainer in kept), strict=True))
    packed_rows = len(kept[2].eval_dataset)
    assert packed_rows < len(kept[0].eval_dataset) / 2  # really packed: several conversations a row
    assert nll["padding_free"][1] == nll["packed"][1] == nll["padded"][1] > 0
    assert nll["padding_free"][0] == pytest.approx(nll["padded"][0], rel=1e-5)
    assert nll["packed"][0] == pytest.approx(nll["padded"][0], rel=1e-5)


def test_fp16_on_cpu_names_the_param(workspace: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("fp16 runs where there is a GPU")
    set_params(workspace, sft={"precision": "fp16"})
    assert sft.main([]) == 2
    assert capsys.readouterr().err.strip() == (
        "sft: error: params.yaml: sft.precision: fp16 needs a GPU; use fp32 or bf16 on CPU"
    )


def test_two_processes_train_under_deepspeed_zero2(training_workspace: Path) -> None:
    set_params(training_workspace, sft={"num_processes": 2, "max_steps": 2, "save_steps": 0})
    result = run_module("stages.sft", training_workspace)
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-3000:]
    assert "--nproc_per_node=2" in log
    assert "DeepSpeed ZeRO stage 2 over 2 process(es) (optimizer DeepSpeedZeroOptimizer, gloo backend)" in log
    assert (training_workspace / "models/sft/adapter_model.safetensors").is_file()
    # Only rank 0 logs to DVCLive: one row per step, not two.
    assert tsv_steps(training_workspace / PLOTS / "loss.tsv") == [1, 2]


def test_under_an_external_launcher_the_stage_trains_in_place(training_workspace: Path) -> None:
    """`torchrun --nproc_per_node 2 -m stages.sft`: the stage sees it was launched and does not launch again;
    both ranks train one model. With `sft.deepspeed_config: ""` that is plain DDP over gloo (under the shipped
    ds_config_zero2.json the launched ranks train under ZeRO-2: tests/e2e/test_multinode.py)."""
    set_params(training_workspace, sft={"max_steps": 2, "save_steps": 0, "deepspeed_config": ""})
    result = run_module(
        "torch.distributed.run",
        training_workspace,
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        "stages.sft",
        env=repo_env(),
    )
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-3000:]
    assert "launching" not in log
    assert "Trainer over 2 process(es) (optimizer AdamW, gloo backend)" in log
    assert (training_workspace / "models/sft/adapter_model.safetensors").is_file()
    assert tsv_steps(training_workspace / PLOTS / "loss.tsv") == [1, 2]
