"""The base stage: the tiny tokenizer and model, and pinning a hub/local base."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from stages import base, chat
from stages.models import load_tokenizer, read_base_ref
from stages.params import Base, ParamsError, TinyModel

TEXTS = ["什么是线性代数？线性代数研究向量空间和线性映射。", "Explain fractions step by step, please."] * 50


@pytest.fixture(scope="module")
def tiny_tokenizer_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("tok")
    base.train_tokenizer(TEXTS, out, vocab_size=300, seed=1)
    return out


def test_special_tokens_are_single_ids_and_never_split(tiny_tokenizer_dir):
    tokenizer = load_tokenizer(tiny_tokenizer_dir)
    for token in chat.SPECIAL_TOKENS:
        ids = tokenizer(token, add_special_tokens=False)["input_ids"]
        assert ids == [tokenizer.convert_tokens_to_ids(token)]
    text = "<|im_start|>user\n你好<|im_end|>\n"
    pieces = tokenizer.convert_ids_to_tokens(tokenizer(text, add_special_tokens=False)["input_ids"])
    assert pieces[0] == "<|im_start|>" and "<|im_end|>" in pieces


def test_tokenizer_config_carries_what_llama_cpp_reads(tiny_tokenizer_dir):
    config = json.loads((tiny_tokenizer_dir / "tokenizer_config.json").read_text())
    assert config["add_bos_token"] is False
    decoded = {v["content"]: v["special"] for v in config["added_tokens_decoder"].values()}
    assert decoded == {t: True for t in chat.SPECIAL_TOKENS}


def test_chat_template_renders_chatml(tiny_tokenizer_dir):
    tokenizer = load_tokenizer(tiny_tokenizer_dir)
    messages = [{"role": "system", "content": "S"}, {"role": "user", "content": "Q"}]
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert text == "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nQ<|im_end|>\n<|im_start|>assistant\n"


def test_unknown_characters_fall_back_to_bytes_not_unk(tiny_tokenizer_dir):
    tokenizer = load_tokenizer(tiny_tokenizer_dir)
    ids = tokenizer("龘", add_special_tokens=False)["input_ids"]
    assert tokenizer.unk_token_id not in ids
    assert tokenizer.decode(ids) == "龘"


def test_sizes_must_be_multiples_of_256(tmp_path):
    with pytest.raises(ParamsError, match="base.tiny.intermediate_size: must be a multiple of 256"):
        base.build_tiny(TinyModel(intermediate_size=300), 0, tmp_path, tmp_path, (42, 0.1))


def test_pretraining_text_never_contains_shipped_questions():
    shipped = set(base.raw_texts(Path("data/raw")))
    corpus = base.pretrain_texts(300, seed=42, exclude=shipped)
    assert len(corpus) == 300
    assert not {text.split("\n", 1)[0] for text in corpus} & shipped


def test_pretraining_corpus_holds_no_held_out_row():
    import json

    from stages.data import Sample
    from stages.filters import content_text, is_eval, row_id

    texts = set(base.train_split_texts(Path("data/raw"), 42, 0.1))
    held_out = kept = 0
    for line in Path("data/raw/sft_stem.jsonl").read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        sample = Sample([{"role": "user", "content": row["question"]}, {"role": "assistant", "content": row["answer"]}])
        in_eval = is_eval(42, row_id(content_text(sample)), 0.1)
        held_out += in_eval
        kept += not in_eval
        assert (f"{row['question']}\n{row['answer']}" in texts) is not in_eval
    assert held_out > 5 and kept > 100


def test_local_base_is_pinned_by_content_digest(tmp_path):
    model_dir = tmp_path / "my-model"
    model_dir.mkdir()
    (model_dir / "config.json").write_text("{}")
    first = base.resolve_hub(Base(model=str(model_dir)))
    (model_dir / "config.json").write_text('{"changed": true}')
    second = base.resolve_hub(Base(model=str(model_dir)))
    assert first["path"] == str(model_dir.resolve())
    assert first["digest"] != second["digest"]


def test_base_ref_points_at_the_local_dir_for_tiny(tmp_path):
    (tmp_path / "base.json").write_text(json.dumps({"model": "tiny", "revision": None}))
    ref = read_base_ref(tmp_path)
    assert ref.name_or_path == str(tmp_path) and ref.revision is None and ref.trust_remote_code is False


def test_hub_ref_loads_the_pinned_revision_with_safetensors(tmp_path):
    info = {
        "model": "Qwen/Qwen2.5-7B-Instruct",
        "revision": "a" * 40,
        "path": "/cache/snap",
        "trust_remote_code": False,
    }
    (tmp_path / "base.json").write_text(json.dumps(info))
    kwargs = read_base_ref(tmp_path).from_pretrained_kwargs()
    assert kwargs == {"trust_remote_code": False, "use_safetensors": True, "revision": "a" * 40}
