"""The embedded `tiny` base model: a SentencePiece tokenizer and a small Qwen2 model, trained here.

Both are trained on the plain question/answer text of the raw rows that prepare puts in the *train* split
(ta/data/pretrain.py reads them with prepare's own code, so no held-out row is ever seen), plus freshly
generated drill text (ta/data/drill.py, another seed).
Pretraining teaches the vocabulary and some language; SFT then teaches the chat format.
"""

from __future__ import annotations

import io
import json
import logging
import random
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ta import chat
from ta.config import TinyModel
from ta.data import drill
from ta.data.pretrain import PretrainRows

log = logging.getLogger("base")


def train_tokenizer(texts: list[str], out_dir: Path, vocab_size: int, seed: int) -> None:
    """Train a SentencePiece BPE model and save it as an HF tokenizer with the ChatML special tokens.

    SentencePiece, not a byte-level BPE: llama.cpp's converter identifies BPE tokenizers by hashing
    their output and refuses unknown ones, while it reads a SentencePiece `tokenizer.model` directly.
    llama.cpp's SPM tokenizer puts a "▁" before the text at the start and after every special token;
    the HF tokenizer is built to do the same (Prepend per segment), so both give the same ids.
    """
    import sentencepiece as spm

    spm.set_random_generator_seed(seed)
    model_proto = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(texts),
        model_writer=model_proto,
        model_type="bpe",
        vocab_size=vocab_size,
        character_coverage=0.995,  # the rarest characters fall back to bytes
        byte_fallback=True,
        split_digits=True,
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        add_dummy_prefix=True,
        unk_id=0,
        bos_id=-1,
        eos_id=-1,
        pad_id=-1,
        control_symbols=chat.SPECIAL_TOKENS,
        num_threads=1,
        minloglevel=2,
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "tokenizer.model").write_bytes(model_proto.getvalue())
    tokenizer = hf_tokenizer(out_dir / "tokenizer.model")
    tokenizer.save_pretrained(str(out_dir))
    # transformers 5 no longer writes these two, but llama.cpp's converter reads them: without them the
    # GGUF would get a BOS token added (the SPM default) and the ChatML tokens as plain text.
    config_file = out_dir / "tokenizer_config.json"
    config = json.loads(config_file.read_text(encoding="utf-8"))
    config["add_bos_token"] = False
    config["tokenizer_class"] = "PreTrainedTokenizerFast"
    # transformers 5 maps model_type qwen2 to its byte-level Qwen2Tokenizer whatever tokenizer_class says,
    # rebuilding it from the vocabulary and dropping this tokenizer's SentencePiece steps: plain AutoTokenizer
    # (what vLLM, TRL and lm-eval call) would turn 你好 into other ids than llama.cpp and our own loader. An
    # `auto_map` entry is the one thing that makes it honour tokenizer_class, i.e. load tokenizer.json as it
    # is; it names no code, so nothing is executed, and it needs trust_remote_code off (the default).
    config["auto_map"] = {"AutoTokenizer": [None, "PreTrainedTokenizerFast"]}
    config["added_tokens_decoder"] = {
        str(tokenizer.convert_tokens_to_ids(t)): {
            "content": t,
            "special": True,
            "normalized": False,
            "lstrip": False,
            "rstrip": False,
            "single_word": False,
        }
        for t in chat.SPECIAL_TOKENS
    }
    config_file.write_text(json.dumps(config, indent=2, ensure_ascii=False, sort_keys=True) + "\n", encoding="utf-8")


def hf_tokenizer(sp_model_file: Path):
    """An HF fast tokenizer over the SentencePiece BPE vocabulary, matching llama.cpp's SPM tokenizer."""
    import sentencepiece as spm
    from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers
    from transformers import PreTrainedTokenizerFast
    from transformers.tokenization_utils_base import generate_merges

    sp = spm.SentencePieceProcessor(model_file=str(sp_model_file))
    vocab = {sp.id_to_piece(i): i for i in range(sp.get_piece_size())}
    merges = generate_merges(vocab, skip_tokens=chat.SPECIAL_TOKENS)
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tokenizer.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tokenizer.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    tokenizer.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in chat.SPECIAL_TOKENS])
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        unk_token="<unk>",
        eos_token=chat.IM_END,
        pad_token=chat.END_OF_TEXT,
        chat_template=chat.CHATML_TEMPLATE,
        model_max_length=1024,
        add_bos_token=False,
        clean_up_tokenization_spaces=False,
    )


def pretrain_texts(n_rows: int, seed: int, exclude: set[str]) -> list[str]:
    """Drill text from a different seed than data/raw, without any question in `exclude`."""
    rows = drill.sft_rows(n_rows + len(exclude), random.Random(seed))
    return [f"{r['question']}\n{r['answer']}" for r in rows if r["question"] not in exclude][:n_rows]


def pretrain_corpus(cfg: TinyModel, seed: int, rows: PretrainRows) -> list[str]:
    """The documents the tokenizer and the model are trained on, in training order: the raw rows' train-split
    texts and about a quarter as much drill text that asks no question any raw row asks."""
    drill_rows = cfg.pretrain_steps * cfg.pretrain_batch_size * cfg.pretrain_seq_len // 240
    corpus = rows.texts + pretrain_texts(drill_rows, seed, exclude=rows.prompts)
    random.Random(seed).shuffle(corpus)
    return corpus


@dataclass(frozen=True)
class Recipe:
    """How the tiny model pretrains beyond the params' steps, learning rate and batch."""

    schedule: str  # transformers' lr_scheduler_type
    decay_share: float  # warmup_stable_decay: the share of the steps, at the end, over which the rate decays to 0
    adam_beta2: float


# Warmup, a constant rate, then a decay over the last 30 % (WSD), and Adam's second moment over ~20 steps
# instead of ~1000: per step, a better model than the cosine schedule with beta2 0.999 it replaced (held-out
# perplexity 50.5 -> 42.7 at 250 steps, 41.6 -> 39.2 at 400: `python -m bench --only pretrain`).
RECIPE = Recipe(schedule="warmup_stable_decay", decay_share=0.3, adam_beta2=0.95)
COSINE = Recipe(schedule="cosine", decay_share=0.0, adam_beta2=0.999)  # the recipe until 7eedab1


def build_tiny(cfg: TinyModel, seed: int, rows: PretrainRows, out_dir: Path, recipe: Recipe = RECIPE) -> None:
    import torch
    from transformers import (
        DataCollatorForLanguageModeling,
        GenerationConfig,
        Qwen2Config,
        Qwen2ForCausalLM,
        Trainer,
        TrainingArguments,
        set_seed,
    )

    corpus = pretrain_corpus(cfg, seed, rows)
    train_tokenizer(corpus, out_dir, cfg.vocab_size, seed)
    tokenizer = hf_tokenizer(out_dir / "tokenizer.model")

    set_seed(seed)
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_hidden_layers,
        num_attention_heads=cfg.num_attention_heads,
        num_key_value_heads=cfg.num_key_value_heads,
        max_position_embeddings=cfg.max_position_embeddings,
        tie_word_embeddings=False,
        bos_token_id=None,
        eos_token_id=tokenizer.convert_tokens_to_ids(chat.IM_END),
        pad_token_id=tokenizer.pad_token_id,
    )
    model = Qwen2ForCausalLM(config)

    # Pack the corpus into fixed blocks ending each document with <|endoftext|>, as in pretraining.
    eot = tokenizer.convert_tokens_to_ids(chat.END_OF_TEXT)
    ids = [i for text in corpus for i in tokenizer(text, add_special_tokens=False)["input_ids"] + [eot]]
    block = cfg.pretrain_seq_len
    blocks = [{"input_ids": ids[i : i + block]} for i in range(0, len(ids) - block + 1, block)]
    log.info("pretraining on %d blocks of %d tokens for %d steps", len(blocks), block, cfg.pretrain_steps)
    with tempfile.TemporaryDirectory() as tmp:
        args = TrainingArguments(
            output_dir=tmp,
            max_steps=cfg.pretrain_steps,
            per_device_train_batch_size=cfg.pretrain_batch_size,
            learning_rate=cfg.pretrain_lr,
            lr_scheduler_type=recipe.schedule,
            lr_scheduler_kwargs=(
                {"num_decay_steps": int(cfg.pretrain_steps * recipe.decay_share)}
                if recipe.schedule == "warmup_stable_decay"
                else {}
            ),
            adam_beta2=recipe.adam_beta2,
            warmup_steps=max(1, cfg.pretrain_steps // 20),
            logging_steps=max(1, cfg.pretrain_steps // 10),
            save_strategy="no",
            report_to="none",
            seed=seed,
            data_seed=seed,
            use_cpu=not torch.cuda.is_available(),
            disable_tqdm=False,
        )
        collator = DataCollatorForLanguageModeling(tokenizer, mlm=False)
        Trainer(model=model, args=args, train_dataset=blocks, data_collator=collator).train()
    model.generation_config = GenerationConfig(
        eos_token_id=[tokenizer.convert_tokens_to_ids(chat.IM_END), eot], pad_token_id=tokenizer.pad_token_id
    )
    model.save_pretrained(str(out_dir), safe_serialization=True)
