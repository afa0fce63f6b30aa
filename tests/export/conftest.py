"""What the export tests read: the artifacts of the reduced pipeline run (the fast tier's; in a session with the
full pipeline, the full run's)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest


@pytest.fixture(scope="session")
def chain(reduced_repo: Path) -> SimpleNamespace:
    """Paths of the chain's artifacts: repo, base, sft, dpo, merged, f16, q4, modelfile, sft_eval."""
    return SimpleNamespace(
        repo=reduced_repo,
        base=reduced_repo / "models/base",
        sft=reduced_repo / "models/sft",
        dpo=reduced_repo / "models/dpo",
        merged=reduced_repo / "models/merged",
        f16=reduced_repo / "models/gguf/teachingassistant-f16.gguf",
        q4=reduced_repo / "models/gguf/teachingassistant-q4_k_m.gguf",
        modelfile=reduced_repo / "models/ollama/Modelfile",
        sft_eval=reduced_repo / "data/prepared/sft_eval.jsonl",
    )


@pytest.fixture(scope="session")
def narrow_workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory laid out like the repository before `dvc repro gguf`, in seconds: models/merged is a
    one-layer Qwen2 of hidden size 64 (no k-quant block of 256 divides it: quantizing it to q4_k_m falls back)
    with the tiny base's kind of tokenizer (SentencePiece, ChatML), and data/prepared/sft_eval.jsonl holds
    two conversations for the parity probes."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from ta import chat
    from ta.train.tiny import hf_tokenizer, train_tokenizer
    from tests.helpers import write_jsonl, write_params

    work = tmp_path_factory.mktemp("narrow")
    model_dir = work / "models/merged"
    train_tokenizer(["什么是线性代数？线性代数研究向量空间。", "What is a vector?"] * 30, model_dir, 300, seed=1)
    tokenizer = hf_tokenizer(model_dir / "tokenizer.model")
    tokenizer.save_pretrained(str(model_dir))
    torch.manual_seed(0)
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        bos_token_id=None,
        eos_token_id=tokenizer.convert_tokens_to_ids(chat.IM_END),
    )
    Qwen2ForCausalLM(config).save_pretrained(str(model_dir))
    turns = [("什么是线性代数？", "线性代数研究向量空间。"), ("What is a vector?", "A vector is in a vector space.")]
    conversations = [
        {"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]} for q, a in turns
    ]
    write_jsonl(work / "data/prepared/sft_eval.jsonl", conversations)
    write_params(work, gguf={"parity_samples": 2, "parity_max_tokens": 32})
    return work
