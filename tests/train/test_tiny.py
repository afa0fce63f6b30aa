"""The embedded `tiny` base (ta/train/tiny.py): its SentencePiece tokenizer as llama.cpp and the chat format need
it, and a pretraining corpus that never holds a row prepare keeps out for evaluation."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ta import chat
from ta.config import load_params
from ta.data.pretrain import pretrain_rows
from ta.models import load_tokenizer
from ta.train import tiny
from tests.helpers import REPO, read_jsonl

TEXTS = ["什么是线性代数？线性代数研究向量空间和线性映射。", "Explain fractions step by step, please."] * 50


@pytest.fixture(scope="module")
def tiny_tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("tok")
    tiny.train_tokenizer(TEXTS, out, vocab_size=300, seed=1)
    return out


def test_special_tokens_are_single_ids_and_never_split(tiny_tokenizer_dir: Path) -> None:
    tokenizer = load_tokenizer(tiny_tokenizer_dir)
    for token in chat.SPECIAL_TOKENS:
        ids = tokenizer(token, add_special_tokens=False)["input_ids"]
        assert ids == [tokenizer.convert_tokens_to_ids(token)]
    text = "<|im_start|>user\n你好<|im_end|>\n"
    pieces = tokenizer.convert_ids_to_tokens(tokenizer(text, add_special_tokens=False)["input_ids"])
    assert pieces[0] == "<|im_start|>" and "<|im_end|>" in pieces


def test_tokenizer_config_carries_what_llama_cpp_reads(tiny_tokenizer_dir: Path) -> None:
    config = json.loads((tiny_tokenizer_dir / "tokenizer_config.json").read_text())
    assert config["add_bos_token"] is False
    decoded = {v["content"]: v["special"] for v in config["added_tokens_decoder"].values()}
    assert decoded == {t: True for t in chat.SPECIAL_TOKENS}
    assert (tiny_tokenizer_dir / "tokenizer.model").is_file()  # the SentencePiece model llama.cpp converts


def test_the_hf_tokenizer_gives_sentencepieces_own_pieces(tiny_tokenizer_dir: Path) -> None:
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(tiny_tokenizer_dir / "tokenizer.model"))
    tokenizer = load_tokenizer(tiny_tokenizer_dir)
    for text in ("什么是线性代数？", "Explain fractions, please.", "  two spaces", "龘 unknown"):
        assert tokenizer(text, add_special_tokens=False)["input_ids"] == sp.encode(text), text


def test_chat_template_renders_chatml(tiny_tokenizer_dir: Path) -> None:
    tokenizer = load_tokenizer(tiny_tokenizer_dir)
    messages = [{"role": "system", "content": "S"}, {"role": "user", "content": "Q"}]
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert text == "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nQ<|im_end|>\n<|im_start|>assistant\n"


def test_unknown_characters_fall_back_to_bytes_not_unk(tiny_tokenizer_dir: Path) -> None:
    tokenizer = load_tokenizer(tiny_tokenizer_dir)
    ids = tokenizer("龘", add_special_tokens=False)["input_ids"]
    assert tokenizer.unk_token_id not in ids
    assert tokenizer.decode(ids) == "龘"


def test_pretraining_text_never_contains_shipped_questions(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO)
    shipped = pretrain_rows(load_params().prepare).prompts
    corpus = tiny.pretrain_texts(300, seed=42, exclude=shipped)
    assert len(corpus) == 300
    assert not {text.split("\n", 1)[0] for text in corpus} & shipped


def turns(row: dict) -> tuple[str, str]:
    """(last user turn, the answer) of a prepared row: an SFT conversation or a pair's prompt and chosen."""
    if "messages" in row:
        return row["messages"][-2]["content"], row["messages"][-1]["content"]
    return row["prompt"][-1]["content"], row["chosen"][0]["content"]


def test_the_pretraining_corpus_holds_no_row_prepare_held_out(
    reduced_repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The corpus base pretrains on, as build_tiny puts it together, against prepare's real split files: no
    held-out row (question and answer) is in it, and every row prepare trains on is."""
    monkeypatch.chdir(reduced_repo)
    params = load_params()
    corpus = set(tiny.pretrain_corpus(params.base.tiny, params.base.seed, pretrain_rows(params.prepare)))
    prepared = reduced_repo / "data/prepared"
    held_out = read_jsonl(prepared / "sft_eval.jsonl") + read_jsonl(prepared / "pref_eval.jsonl")
    trained = read_jsonl(prepared / "sft_train.jsonl") + read_jsonl(prepared / "pref_train.jsonl")
    assert len(held_out) > 20 and len(trained) > 200
    for row in held_out:
        question, answer = turns(row)
        assert f"{question}\n{answer}" not in corpus, row["source"]
    for row in trained:
        question, answer = turns(row)
        assert f"{question}\n{answer}" in corpus, row["source"]
