"""Stage sft on a throwaway workspace: a randomly initialised two-layer Qwen2 with a character tokenizer,
24 arithmetic conversations, a params.yaml of a few steps. `make_workspace` is shared with the dpo,
resume and tracking tests. Each run trains for real (TRL, PEFT, bitsandbytes, DeepSpeed), only briefly."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
SYSTEM = "你是教学助手。"
TRAIN_ROWS = 24
EVAL_ROWS = 4
# Two layers of seven linear layers each: what LoRA's "all-linear" and bitsandbytes' 4-bit loading touch.
TINY_CONFIG = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=256,
    tie_word_embeddings=True,
)
PARAMS = {
    "lr": 1.0e-2,
    "sft": {
        "max_steps": 4,
        "per_device_train_batch_size": 2,
        "gradient_accumulation_steps": 1,
        "max_seq_len": 96,
        "eval_steps": 2,
        "logging_steps": 1,
        "save_steps": 2,
        "warmup_ratio": 0.0,
        "train_sampling_strategy": "random",
        "lora": {"r": 4, "alpha": 8, "dropout": 0.0},
    },
    "dpo": {
        "max_steps": 2,
        "per_device_train_batch_size": 2,
        "max_length": 96,
        "eval_steps": 2,
        "logging_steps": 1,
        "save_steps": 2,
        "learning_rate": 1.0e-3,
        "warmup_ratio": 0.0,
    },
}


def conversation(a: int, b: int) -> list[dict[str, str]]:
    return [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": f"计算 {a} + {b} 等于多少？"},
        {"role": "assistant", "content": f"{a} + {b} = {a + b}。\n答案：{a + b}"},
    ]


def sft_rows(n: int, offset: int) -> list[dict[str, Any]]:
    rows = [{"messages": conversation(offset + i, 2 * i + 1)} for i in range(n)]
    # One dialogue of two assistant turns: assistant-only loss must cover both.
    rows[0]["messages"] += [
        {"role": "user", "content": "再加 1 呢？"},
        {"role": "assistant", "content": f"再加 1 得 {offset + 2}。\n答案：{offset + 2}"},
    ]
    return rows


def pref_rows(n: int, offset: int) -> list[dict[str, Any]]:
    rows = []
    for i in range(n):
        prompt, right = conversation(offset + i, i + 3)[:2], conversation(offset + i, i + 3)[2]
        wrong = {"role": "assistant", "content": f"答案：{offset + 2 * i}"}
        rows.append({"prompt": prompt, "chosen": [right], "rejected": [wrong]})
    return rows


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


def build_base(out_dir: Path, texts: list[str]) -> None:
    """A random two-layer Qwen2 and a one-character-per-token tokenizer with the ChatML template."""
    import torch
    from tokenizers import Tokenizer, decoders, models
    from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

    from stages import chat

    alphabet = sorted(set("".join(texts)) | set("systemuserassistant\n"))
    vocab = {token: i for i, token in enumerate(chat.SPECIAL_TOKENS + alphabet)}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.decoder = decoders.Fuse()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token=chat.IM_END,
        pad_token=chat.END_OF_TEXT,
        additional_special_tokens=[chat.IM_START],
    )
    tokenizer.chat_template = chat.CHATML_TEMPLATE
    tokenizer.save_pretrained(str(out_dir))
    torch.manual_seed(0)
    config = Qwen2Config(
        vocab_size=len(vocab),
        eos_token_id=vocab[chat.IM_END],
        pad_token_id=vocab[chat.END_OF_TEXT],
        bos_token_id=None,
        **TINY_CONFIG,
    )
    Qwen2ForCausalLM(config).save_pretrained(str(out_dir))
    (out_dir / "base.json").write_text(json.dumps({"model": "tiny", "revision": None, "trust_remote_code": False}))


def merge(into: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    out = dict(into)
    for key, value in overrides.items():
        out[key] = merge(out.get(key, {}), value) if isinstance(value, dict) else value
    return out


def set_params(workspace: Path, **sections: Any) -> None:
    """Write PARAMS with `sections` merged in, e.g. set_params(ws, sft={"method": "full"}, lr=0.0)."""
    params = merge(PARAMS, sections)
    (workspace / "params.yaml").write_text(yaml.safe_dump(params, allow_unicode=True), encoding="utf-8")


def make_workspace(root: Path) -> Path:
    """A directory laid out like the repository after `dvc repro prepare`, with the tiny model as base."""
    train, evals = sft_rows(TRAIN_ROWS, 10), sft_rows(EVAL_ROWS, 60)
    write_jsonl(root / "data/prepared/sft_train.jsonl", train)
    write_jsonl(root / "data/prepared/sft_eval.jsonl", evals)
    write_jsonl(root / "data/prepared/pref_train.jsonl", pref_rows(8, 20))
    write_jsonl(root / "data/prepared/pref_eval.jsonl", pref_rows(4, 70))
    texts = [m["content"] for row in train + evals for m in row["messages"]]
    texts += [m["content"] for row in pref_rows(8, 20) + pref_rows(4, 70) for m in row["rejected"]]
    build_base(root / "models/base", texts)
    shutil.copy(REPO / "ds_config_zero2.json", root / "ds_config_zero2.json")
    set_params(root)
    return root


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_workspace(tmp_path_factory.mktemp("sft_template"))


@pytest.fixture
def workspace(template: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    ws = tmp_path / "ws"
    shutil.copytree(template, ws)
    monkeypatch.chdir(ws)
    return ws


def tsv_steps(path: Path) -> list[int]:
    rows = path.read_text(encoding="utf-8").splitlines()[1:]
    return [int(row.split("\t")[0]) for row in rows]


def stage_env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO), "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}


def run_stage(module: str, cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", module], cwd=cwd, env=stage_env(), capture_output=True, text=True, timeout=timeout
    )


def test_lora_run_logs_every_step_and_leaves_no_checkpoints(workspace: Path) -> None:
    from stages import sft

    assert sft.main([]) == 0
    assert json.loads((workspace / "models/sft/adapter_config.json").read_text())["r"] == 4
    assert (workspace / "models/sft/tokenizer.json").is_file()
    # max_steps 4, logging every step, eval and checkpoint every 2 steps; checkpoints gone at the end.
    plots = workspace / "dvclive/sft/plots/metrics"
    assert tsv_steps(plots / "loss.tsv") == [1, 2, 3, 4]
    assert tsv_steps(plots / "eval/loss.tsv") == [2, 4]
    assert tsv_steps(plots / "learning_rate.tsv") == [1, 2, 3, 4]
    assert tsv_steps(plots / "grad_norm.tsv") == [1, 2, 3, 4]
    assert not (plots / "eval/runtime.tsv").exists()
    assert (workspace / "checkpoints/sft").is_dir() and not any((workspace / "checkpoints/sft").iterdir())
    logged = yaml.safe_load((workspace / "dvclive/sft/params.yaml").read_text(encoding="utf-8"))
    assert logged["sft"]["max_steps"] == 4 and logged["lr"] == pytest.approx(1.0e-2)


def test_qlora_loads_every_linear_layer_in_4bit_nf4_and_trains(workspace: Path) -> None:
    import bitsandbytes as bnb
    import torch
    from safetensors.torch import load_file

    from stages import sft
    from stages.models import read_base_ref
    from stages.params import load_params

    set_params(workspace, sft={"method": "qlora", "max_steps": 2})
    params = load_params().sft
    model = sft.load_model(read_base_ref(), params)
    quantized = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert len(quantized) == 2 * 7  # two layers × q, k, v, o, gate, up, down; the head stays unquantized
    assert {m.weight.quant_type for m in quantized} == {"nf4"}
    assert all(m.weight.quant_state.nested for m in quantized)  # double quantization
    assert {m.compute_dtype for m in quantized} == {torch.bfloat16}

    assert sft.main([]) == 0
    adapter = load_file(str(workspace / "models/sft/adapter_model.safetensors"))
    lora_b = [t for name, t in adapter.items() if "lora_B" in name]
    assert len(lora_b) == 14 and any(t.abs().sum() > 0 for t in lora_b)  # B starts at zero: it was trained


def test_full_fine_tuning_saves_the_whole_changed_model(workspace: Path) -> None:
    from safetensors.torch import load_file

    from stages import sft

    set_params(workspace, sft={"method": "full", "max_steps": 2})
    assert sft.main([]) == 0
    assert not (workspace / "models/sft/adapter_config.json").exists()
    tuned = load_file(str(workspace / "models/sft/model.safetensors"))
    base = load_file(str(workspace / "models/base/model.safetensors"))
    assert set(tuned) == set(base)
    name = "model.layers.0.mlp.down_proj.weight"
    assert not tuned[name].equal(base[name])


def test_early_stopping_ends_a_run_whose_eval_loss_is_flat(workspace: Path, caplog) -> None:
    from stages import sft

    # lr 0: eval loss identical at every step. Eval 1 sets the best; evals 2 and 3 improve by 0 < 0.01,
    # so the patience of 2 runs out at step 3 of 10.
    set_params(
        workspace,
        lr=0.0,
        sft={"max_steps": 10, "eval_steps": 1, "save_steps": 1, "early_stopping_patience": 2},
    )
    caplog.set_level(logging.INFO, logger="sft")
    assert sft.main([]) == 0
    assert tsv_steps(workspace / "dvclive/sft/plots/metrics/eval/loss.tsv") == [1, 2, 3]
    # No later eval beat the first by 0.01: the model loaded back and saved is step 1's.
    assert any(r.getMessage().endswith("at step 1 of 3") for r in caplog.records if r.name == "sft")
    assert not any((workspace / "checkpoints/sft").iterdir())


@pytest.mark.parametrize(
    ("sft_params", "message"),
    [
        ({"method": "dora"}, "params.yaml: sft.method: 'dora' is not one of lora, qlora, full"),
        (
            {"early_stopping_patience": 1, "eval_steps": 2, "save_steps": 3},
            "params.yaml: sft.save_steps: 3 must be a positive multiple of sft.eval_steps (2)",
        ),
        ({"num_processes": 2, "deepspeed_config": "no.json"}, "sft.deepspeed_config: no.json: file not found"),
        ({"gpu_memory_gb": 0.5}, "exceeds the 0.5 GiB available"),
        ({"num_processes": 2, "deepspeed_config": "zero3.json"}, "zero3.json: zero_optimization.stage 3 is not"),
    ],
)
def test_bad_configs_fail_fast_with_one_line(workspace: Path, capsys, sft_params, message) -> None:
    from stages import sft

    (workspace / "zero3.json").write_text(json.dumps({"zero_optimization": {"stage": 3}}))
    set_params(workspace, sft=sft_params)
    assert sft.main([]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("sft: error: ") and message in err and "\n" not in err
    assert not (workspace / "models/sft").exists()


def test_padding_free_batches_score_like_padded_ones(workspace: Path) -> None:
    from stages import sft

    # lr 0 and one step: the eval loss is the untrained model's, however the batches are laid out. No sample
    # is longer than max_seq_len (padding-free batches are not truncated).
    eval_losses = []
    for padding_free in (False, True):
        run = {"max_steps": 1, "eval_steps": 1, "save_steps": 0, "max_seq_len": 256, "padding_free": padding_free}
        set_params(workspace, lr=0.0, sft=run)
        assert sft.main([]) == 0
        eval_losses.append(float(last_value(workspace / "dvclive/sft/plots/metrics/eval/loss.tsv")))
    assert eval_losses[1] == pytest.approx(eval_losses[0], abs=1e-4)


def last_value(path: Path) -> str:
    return path.read_text(encoding="utf-8").splitlines()[-1].split("\t")[1]


def test_fp16_on_cpu_names_the_param(workspace: Path, capsys) -> None:
    import torch

    from stages import sft

    if torch.cuda.is_available():
        pytest.skip("fp16 runs where there is a GPU")
    set_params(workspace, sft={"precision": "fp16"})
    assert sft.main([]) == 2
    assert capsys.readouterr().err.strip() == (
        "sft: error: params.yaml: sft.precision: fp16 needs a GPU; use fp32 or bf16 on CPU"
    )


def test_two_processes_train_under_deepspeed_zero2(workspace: Path) -> None:
    set_params(workspace, sft={"num_processes": 2, "max_steps": 2, "save_steps": 0})
    result = run_stage("stages.sft", workspace)
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-3000:]
    assert "--nproc_per_node=2" in log
    assert "DeepSpeed ZeRO stage 2 over 2 process(es) (optimizer DeepSpeedZeroOptimizer, gloo backend)" in log
    assert (workspace / "models/sft/adapter_model.safetensors").is_file()
    # Only rank 0 logs to DVCLive: one row per step, not two.
    assert tsv_steps(workspace / "dvclive/sft/plots/metrics/loss.tsv") == [1, 2]
