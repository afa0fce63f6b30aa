"""Row identity and the train/eval split: the one definition base and prepare share.

A row's id is the SHA-1 of its content — each turn's text NFKC-normalised, case-folded and with
whitespace collapsed, under its role — so rows that differ only in spacing or width are the same row.
The split and the per-source sample are hashes of (seed, id): stable when rows are appended.

This module is deliberately small and plain (no compiled code): the definition that prepare's fast paths
(ta/data/normalise.py) are checked equal to.
"""

from __future__ import annotations

import hashlib
import unicodedata

from ta.data.samples import Sample


def normalise_plain(text: str) -> str:
    """Unicode NFKC, case-folded, whitespace collapsed: what counts as 'the same text'."""
    return " ".join(unicodedata.normalize("NFKC", text).split()).casefold()


def content_parts(sample: Sample) -> tuple[list[str], list[str], int]:
    """The row content's parts: a "role:" label and the raw text of each turn (system turns left out; a
    pair's answers as chosen/rejected), and the index of the last user turn (-1 when none)."""
    labels, texts, user = [], [], -1
    for message in sample.messages:
        role = message["role"]
        if role != "system":
            if role == "user":
                user = len(texts)
            labels.append(role + ":")
            texts.append(message["content"])
    if sample.chosen is not None:
        labels += ("chosen:", "rejected:")
        texts += (sample.chosen, sample.rejected or "")
    return labels, texts, user


def join_content(labels: list[str], normalised: list[str]) -> str:
    return "\n".join(map(str.__add__, labels, normalised))


def content_text(sample: Sample) -> str:
    """Normalised content without the system prompt, a "role:text" line a turn: its hash is the row id."""
    labels, texts, _ = content_parts(sample)
    return join_content(labels, [normalise_plain(text) for text in texts])


def row_id(content: str) -> str:
    """16 hex digits of the SHA-1 of content_text(): the same for rows that differ only in spacing."""
    return hashlib.sha1(content.encode("utf-8")).hexdigest()[:16]


def hash_fraction(seed: int, salt: str, key: str) -> float:
    """A number in [0, 1) fixed by (seed, salt, key): decisions that stay put when rows are appended."""
    digest = hashlib.sha1(f"{seed}:{salt}:{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def is_eval(seed: int, row_id_: str, eval_fraction: float) -> bool:
    return hash_fraction(seed, "split", row_id_) < eval_fraction


def is_sampled(seed: int, row_id_: str, weight: float) -> bool:
    return weight >= 1.0 or hash_fraction(seed, "sample", row_id_) < weight


def sample_id(sample: Sample) -> str:
    return row_id(content_text(sample))
