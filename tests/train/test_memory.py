"""The memory estimator (ta/train/memory.py) against numbers worked out by hand (see the comments) and the
guide's table 1.2."""

from __future__ import annotations

import json

import pytest

from ta.train import memory as estimate
from ta.train.memory import GIB, KNOWN_MODELS, ModelShape, Run

# hidden 4, one layer, 2 heads of 2 dims, 1 KV head, intermediate 8, vocab 10, tied embeddings, no biases.
# Linear weights: q 4·4 + k 4·2 + v 4·2 + o 4·4 + gate 4·8 + up 4·8 + down 8·4 = 144.
# Others: embeddings 10·4 = 40, two norms 2·4 = 8, final norm 4 → 52. Total 196.
TOY = ModelShape(
    "toy", hidden=4, layers=1, heads=2, kv_heads=1, intermediate=8, vocab=10, tied_embeddings=True, qkv_bias=False
)


def test_toy_parameter_counts() -> None:
    assert TOY.linear_params() == 144
    assert TOY.other_params() == 52
    assert TOY.params() == 196


def test_qwen2_7b_has_its_published_parameter_count() -> None:
    # Qwen2-7B: 7,615,616,512 parameters (hub safetensors index), with untied embeddings and qkv biases.
    assert KNOWN_MODELS["qwen2-7b"].params() == 7_615_616_512
    assert KNOWN_MODELS["qwen2-0.5b"].params() == 494_032_768


def test_lora_r16_on_all_linear_layers_of_qwen2_7b() -> None:
    # 28 layers · r 16 · [(3584+3584)·2 (q, o) + (3584+512)·2 (k, v) + (3584+18944)·3 (gate, up, down)]
    assert estimate.trainable_params(KNOWN_MODELS["qwen2-7b"], Run(lora_r=16)) == 28 * 16 * 90112 == 40_370_176


def test_full_fp32_without_deepspeed_by_hand() -> None:
    parts = estimate.estimate(
        TOY, Run(method="full", precision="fp32", seq_len=3, batch_size=2, gradient_checkpointing=False)
    )
    assert parts["weights"] == 196 * 4
    assert parts["gradients"] == 196 * 4
    assert parts["optimizer"] == 196 * 8
    assert parts["adapter"] == 0
    # 6 tokens · 1 layer · 4 bytes · (4h + 2q + 2kv + 4i = 16 + 8 + 4 + 32 = 60)
    assert parts["activations"] == 6 * 4 * 60
    assert parts["loss_head"] == 6 * 10 * (4 + 8)
    assert parts["total"] == 784 + 784 + 1568 + 1440 + 720 + GIB


def test_lora_on_q_and_v_with_checkpointing_by_hand() -> None:
    run = Run(
        method="lora",
        precision="bf16",
        seq_len=3,
        batch_size=2,
        lora_r=2,
        lora_dropout=0.1,
        lora_targets=["q_proj", "v_proj"],
    )
    parts = estimate.estimate(TOY, run)
    trainable = 2 * (4 + 4) + 2 * (4 + 2)  # r·(in + out) for q and v
    assert estimate.trainable_params(TOY, run) == trainable == 28
    assert parts["weights"] == 196 * 2
    assert parts["adapter"] == parts["gradients"] == 28 * 4
    assert parts["optimizer"] == 28 * 8
    # Checkpointing: each layer's input (h·2 bytes = 8) plus one layer recomputed: 2·60 + dropout copies
    # of q's and v's inputs 2·(4 + 4) = 136; for 6 tokens.
    assert parts["activations"] == 6 * (8 + 136)
    assert parts["loss_head"] == 6 * 10 * (2 + 8)


def test_qlora_stores_linear_layers_in_nf4_and_the_rest_in_16_bit() -> None:
    parts = estimate.estimate(TOY, Run(method="qlora", precision="fp16"))
    # 4 bits + an 8-bit absmax per 64 weights + an fp32 constant per 256 absmax = 4.126953125 bits
    assert parts["weights"] == pytest.approx(144 * 4.126953125 / 8 + 52 * 2)


def test_zero_stages_split_optimizer_then_gradients_then_weights() -> None:
    base = Run(method="full", precision="fp16", num_gpus=4)
    z1, z2, z3 = (estimate.estimate(TOY, Run(**{**base.__dict__, "zero_stage": z})) for z in (1, 2, 3))
    assert (z1["weights"], z1["gradients"], z1["optimizer"]) == (196 * 2, 196 * 2, 196 * 12 / 4)
    assert (z2["weights"], z2["gradients"], z2["optimizer"]) == (196 * 2, 196 * 2 / 4, 196 * 12 / 4)
    assert (z3["weights"], z3["gradients"], z3["optimizer"]) == (196 * 2 / 4, 196 * 2 / 4, 196 * 12 / 4)


def test_guide_table_agrees_with_the_guide_where_it_is_definite() -> None:
    qwen = KNOWN_MODELS["qwen2-7b"]
    full, lora, qlora = (estimate.peak_gib(qwen, Run(method=m)) for m in ("full", "lora", "qlora"))
    assert full > 80  # guide: "~80GB+ (OOM)" on one GPU
    assert lora < 24 and qlora < 16  # guide: LoRA on a 24 GB RTX 3090/4090, QLoRA on a 16 GB 4070 Ti
    assert qlora < lora < full
    table = estimate.guide_table()
    for guide_value in ("~80GB+ (OOM)", "~24GB", "~28GB", "~14GB", "~16GB"):
        assert guide_value in table
    assert table.count("\n| ") == 5  # header, separator, three modes


def test_shape_is_read_from_a_model_dir(tmp_path) -> None:
    config = {
        "model_type": "qwen2",
        "hidden_size": 4,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "num_key_value_heads": 1,
        "intermediate_size": 8,
        "vocab_size": 10,
        "tie_word_embeddings": True,
    }
    (tmp_path / "config.json").write_text(json.dumps(config))
    shape = estimate.load_shape(str(tmp_path))
    assert shape.params() == 196 + 4 + 2 + 2  # qkv biases: q 4, k 2, v 2
    assert estimate.load_shape("Qwen2-7B") == KNOWN_MODELS["qwen2-7b"]


def test_an_unknown_model_is_a_one_line_error() -> None:
    from ta.errors import MissingInputError

    with pytest.raises(MissingInputError, match=r"nowhere: neither a known model \(qwen2-"):
        estimate.load_shape("nowhere")
