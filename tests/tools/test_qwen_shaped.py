"""tools/qwen_shaped.py: the Qwen2.5-shaped stand-in for a hub snapshot, checked against llama.cpp's own
tokenizer test vectors and against the layout of Qwen/Qwen2.5-7B-Instruct's snapshot."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

from tools import qwen_shaped

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def qwen_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return qwen_shaped.build(tmp_path_factory.mktemp("qwen") / "qwen2.5-shaped")


@pytest.fixture(scope="module")
def vectors() -> list[tuple[str, list[int]]]:
    found = qwen_shaped.test_vectors(qwen_shaped.vocab_files())
    assert len(found) >= 40  # llama.cpp ships 46 for qwen2; fewer means the file was misread
    return found


def test_plain_auto_tokenizer_passes_llama_cpp_test_vectors(qwen_dir: Path, vectors: list) -> None:
    from transformers import AutoTokenizer

    from ta.models import load_tokenizer

    outside = AutoTokenizer.from_pretrained(str(qwen_dir))  # what vLLM, TRL, lm-eval call
    ours = load_tokenizer(qwen_dir)
    for tokenizer in (outside, ours):
        wrong = [text for text, ids in vectors if tokenizer.encode(text, add_special_tokens=False) != ids]
        assert wrong == [], f"{type(tokenizer).__name__} mis-tokenizes {wrong[:3]}"
    assert type(outside).__name__ == "Qwen2Tokenizer"  # transformers rebuilds it from vocab + merges: same ids
    assert len(outside) == 151665 and outside.eos_token == "<|im_end|>" and outside.pad_token == "<|endoftext|>"
    assert outside.bos_token is None
    chatml = outside.apply_chat_template([{"role": "user", "content": "你好"}], tokenize=False)
    assert chatml == (
        "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\n你好<|im_end|>\n"
    )
    # the added tokens keep Qwen2.5's ids, special or not
    text = "<|im_start|>user\n你好<tool_call><|fim_prefix|><|im_end|>"
    assert outside.encode(text, add_special_tokens=False) == [151644, 872, 198, 108386, 151657, 151659, 151645]
    assert ours.encode(text, add_special_tokens=False) == outside.encode(text, add_special_tokens=False)


def test_layout_is_that_of_a_hub_snapshot(qwen_dir: Path) -> None:
    from safetensors import safe_open

    assert sorted(p.name for p in qwen_dir.iterdir()) == [
        "config.json",
        "generation_config.json",
        "merges.txt",
        "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors",
        "model.safetensors.index.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "vocab.json",
    ]  # no chat_template.jinja: the template lives in tokenizer_config.json, as on the hub
    template = (qwen_shaped.vocab_files() / qwen_shaped.TEMPLATE).read_text(encoding="utf-8")
    tokenizer_config = json.loads((qwen_dir / "tokenizer_config.json").read_text(encoding="utf-8"))
    assert tokenizer_config["chat_template"] == template and "You are Qwen" in template
    assert len(tokenizer_config["added_tokens_decoder"]) == 22
    assert len(json.loads((qwen_dir / "vocab.json").read_text(encoding="utf-8"))) == 151643
    merges = (qwen_dir / "merges.txt").read_text(encoding="utf-8").splitlines()
    assert merges[0] == "#version: 0.2" and len(merges) == 1 + 151387

    config = json.loads((qwen_dir / "config.json").read_text(encoding="utf-8"))
    assert config["tie_word_embeddings"] is True and config["torch_dtype"] == "bfloat16"
    assert config["vocab_size"] == 151936
    assert config["hidden_size"] % 256 == 0 and config["intermediate_size"] % 256 == 0
    generation = json.loads((qwen_dir / "generation_config.json").read_text(encoding="utf-8"))
    assert generation["eos_token_id"] == [151645, 151643]

    index = json.loads((qwen_dir / "model.safetensors.index.json").read_text(encoding="utf-8"))
    stored, total = {}, 0
    for shard in sorted(set(index["weight_map"].values())):
        with safe_open(str(qwen_dir / shard), "pt") as f:
            for name in f.keys():
                stored[name] = shard
                tensor = f.get_tensor(name)
                assert str(tensor.dtype) == "torch.bfloat16", name
                total += tensor.numel() * 2
    assert stored == index["weight_map"] and index["metadata"]["total_size"] == total
    assert "lm_head.weight" not in stored  # tied to the embedding


def test_loads_as_a_bf16_causal_lm_with_tied_embeddings(qwen_dir: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(qwen_dir), dtype="auto")
    assert model.dtype == torch.bfloat16
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    logits = model(torch.tensor([[151644, 872, 198]])).logits
    assert logits.shape == (1, 3, 151936) and torch.isfinite(logits).all()


def test_rebuild_is_byte_identical(qwen_dir: Path, tmp_path: Path) -> None:
    again = qwen_shaped.build(tmp_path / "again")

    def digests(directory: Path) -> dict[str, str]:
        return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(directory.iterdir())}

    assert digests(again) == digests(qwen_dir)


def test_cli_rejects_a_shape_the_heads_do_not_divide(tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "tools.qwen_shaped", "--out", str(tmp_path / "m"), "--hidden", "256", "--heads", "3"]
    result = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == (
        "qwen_shaped: error: --heads must divide --hidden and --kv-heads must divide --heads"
    )


@pytest.mark.pipeline
def test_llama_cpp_converter_takes_its_real_qwen2_path(qwen_dir: Path, vectors: list, tmp_path: Path) -> None:
    """The converter identifies the tokenizer by hashing its output: it must find `qwen2`, and llama.cpp must
    then tokenize exactly as transformers does, the added tokens included."""
    from gguf import GGUFReader
    from llama_cpp import Llama
    from transformers import AutoTokenizer

    from ta.export.llama_cpp import converter_dir

    vocab_gguf = tmp_path / "vocab.gguf"
    converter = converter_dir() / "convert_hf_to_gguf.py"
    cmd = [sys.executable, str(converter), str(qwen_dir), "--vocab-only", "--outfile", str(vocab_gguf)]
    subprocess.run(cmd, check=True, capture_output=True)
    field = GGUFReader(str(vocab_gguf)).fields["tokenizer.ggml.pre"]
    assert bytes(field.parts[field.data[0]]).decode() == "qwen2"

    llm = Llama(str(vocab_gguf), vocab_only=True, verbose=False)
    hf = AutoTokenizer.from_pretrained(str(qwen_dir))
    chat = hf.apply_chat_template(
        [{"role": "system", "content": "你是教学助手。"}, {"role": "user", "content": "1+1=?"}],
        tokenize=False,
        add_generation_prompt=True,
    )
    for text in [text for text, _ in vectors] + [chat, "<tool_call>x</tool_call><|fim_middle|><|endoftext|>"]:
        assert llm.tokenize(text.encode("utf-8"), add_bos=False, special=True) == hf.encode(
            text, add_special_tokens=False
        ), text
    llm.close()
