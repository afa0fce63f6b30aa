"""The tiny tokenizer through plain AutoTokenizer (what vLLM, TRL and lm-eval call) in a model dir of
model_type qwen2: the ids of tokenizer.json, not those of the byte-level Qwen2Tokenizer transformers 5 would
rebuild from its vocabulary (你好 → [2105, 2105] in the tiny run before the fix)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ta.data.drill import sft_rows
from ta.models import load_tokenizer
from ta.train.tiny import train_tokenizer

TEXTS = ["你好", "你好，请介绍一下你自己。", "计算 47 + 38 等于多少？", "  two  spaces\nand a newline", "🙂 龘"]


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import random

    out = tmp_path_factory.mktemp("tiny")
    rows = sft_rows(400, random.Random(0))
    corpus = [f"{row['question']}\n{row['answer']}" for row in rows] + ["你好，我是教学助手。请介绍一下你自己。"] * 20
    train_tokenizer(corpus, out, vocab_size=512, seed=0)
    (out / "config.json").write_text(json.dumps({"model_type": "qwen2", "architectures": ["Qwen2ForCausalLM"]}))
    return out


@pytest.mark.parametrize("trust_remote_code", [None, False])
def test_auto_tokenizer_reads_tokenizer_json(tiny_dir: Path, trust_remote_code: bool | None) -> None:
    from transformers import AutoTokenizer

    outside = AutoTokenizer.from_pretrained(str(tiny_dir), trust_remote_code=trust_remote_code)
    ours = load_tokenizer(tiny_dir)
    assert type(outside).__name__ != "Qwen2Tokenizer"
    for text in TEXTS:
        assert outside.encode(text, add_special_tokens=False) == ours.encode(text, add_special_tokens=False), text
    conversation = [{"role": "user", "content": "你好"}, {"role": "assistant", "content": "你好！"}]
    assert outside.apply_chat_template(conversation, tokenize=False) == ours.apply_chat_template(
        conversation, tokenize=False
    )


def test_without_the_auto_map_transformers_would_mis_tokenize(tiny_dir: Path, tmp_path: Path) -> None:
    """The failure the auto_map entry prevents, so that this test fails if transformers stops needing it."""
    import shutil

    from transformers import AutoTokenizer

    plain = tmp_path / "plain"
    shutil.copytree(tiny_dir, plain)
    config = json.loads((plain / "tokenizer_config.json").read_text(encoding="utf-8"))
    del config["auto_map"]
    (plain / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
    rebuilt = AutoTokenizer.from_pretrained(str(plain))
    ours = load_tokenizer(plain)
    assert type(rebuilt).__name__ == "Qwen2Tokenizer"
    assert rebuilt.encode("你好", add_special_tokens=False) != ours.encode("你好", add_special_tokens=False)
