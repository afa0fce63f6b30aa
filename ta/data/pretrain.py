"""The raw rows the `tiny` base model pretrains on: prepare's sources, read and judged by prepare's own code.

base runs before prepare, yet must never pretrain on a row prepare holds out for evaluation. So it reads the
sources of params `prepare` through prepare's run itself (ta/data/prepare.py `decided`): the same reader
(JSONL or JSON array, a BOM dropped, `file:line` errors that stop or become rejects as `prepare.on_error`
says), the same formats, PII scrubbing, row filters, duplicates and mix, and the same row id and split
(ta/data/split.py). A row is pretrained on only when prepare's split puts it in *train*.

What base cannot apply are the token-length filters: the tokenizer is what it is about to train. So it may
pretrain on a train-split row that prepare later drops for its length — never on a held-out one. The
self-instruct review file is not read: base does not depend on it (its pairs arrive at SFT).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import orjson

from ta import chat
from ta.config import Prepare
from ta.data.prepare import decided
from ta.data.rows import make_row_processor
from ta.data.sources import sources_from_params
from ta.data.split import is_eval
from ta.data.stats import PrepareStats
from ta.data.tokens import TokenCounter


@dataclass
class PretrainRows:
    """`texts`: the own words (prompt, then the answer or a pair's chosen one) of every row prepare's split
    puts in train. `prompts`: every user turn of every row that passed the row filters, in either split:
    generated text must not repeat one of them."""

    texts: list[str] = field(default_factory=list)
    prompts: set[str] = field(default_factory=set)
    rows_in: int = 0
    rejected: int = 0


def without_token_counts() -> TokenCounter:
    """A counter for the filters when there is no tokenizer yet: it never finds a row too short or too long
    (params' limits are set out of reach below) and refuses the chat template's special tokens, which the tiny
    tokenizer makes control symbols (ta/train/tiny.py)."""
    return TokenCounter(lambda text: 0, lambda messages: 0, special_tokens=chat.SPECIAL_TOKENS)


def pretrain_rows(params: Prepare) -> PretrainRows:
    """The rows of params `prepare`'s sources that base may pretrain on (the module docstring says which)."""
    # Token limits out of reach (no tokenizer); one process: the rows come out the same on any number.
    params = dataclasses.replace(params, min_tokens=0, max_tokens=2**62, system_prompt="", num_proc=1)
    processor = make_row_processor(params, without_token_counts())
    rows, stats = PretrainRows(), PrepareStats()
    for decisions in decided(sources_from_params(params), params, processor, stats, formats={}):
        kept = set(decisions.kept)
        for k, chat_line in enumerate(decisions.chat):
            row = orjson.loads(chat_line)
            prompt = [m for m in row.get("prompt", row.get("messages")) if m["role"] != "system"]
            rows.prompts.update(m["content"] for m in prompt if m["role"] == "user")
            if k in kept and not is_eval(params.seed, decisions.ids[k], params.eval_fraction):
                answer = [row["chosen"][0]] if "chosen" in row else []
                rows.texts.append("\n".join(m["content"] for m in prompt + answer))
    rows.rows_in, rows.rejected = sum(stats.rows_in.values()), sum(stats.rejected.values())
    return rows
