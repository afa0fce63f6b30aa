"""The selfinstruct stage, the whole run: seeds and templates in; pairs to review, rejects and the account out.

Off (`selfinstruct.enabled: false`, the default) the stage reads nothing but the review file, contacts
nothing and imports nothing heavy: it leaves the review file as it is (an empty one when there is none),
makes sure the response cache exists, and writes empty rejects and zero metrics — the same bytes every
time, in well under a second, so `dvc repro` of the default is no slower than without the stage.
"""

from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING, Any

from ta import paths
from ta.config import SelfInstruct
from ta.selfinstruct.review import Row, merge, read_review, status_counts, write_review

if TYPE_CHECKING:  # generation needs the openai SDK: imported only when the stage is on
    from ta.selfinstruct.generate import Generated, Generation

log = logging.getLogger("selfinstruct")


def run_stage(params: SelfInstruct, refusal_patterns: list[str]) -> dict[str, Any]:
    """The DVC stage: data/selfinstruct/{review,responses,rejects}.jsonl and metrics/selfinstruct.json."""
    existing = read_review(paths.REVIEW_FILE)
    if not params.enabled:
        if not paths.REVIEW_FILE.exists():
            write_review(paths.REVIEW_FILE, [])
        paths.RESPONSE_CACHE.touch()
        return write_outputs([], metrics(params, existing))

    from ta.selfinstruct.cache import ResponseCache
    from ta.selfinstruct.generate import generate
    from ta.selfinstruct.prompts import load_templates
    from ta.selfinstruct.seeds import load_seeds

    seeds = load_seeds(params.sources())
    templates = load_templates(params.language)
    cache = ResponseCache(paths.RESPONSE_CACHE).load()
    try:
        run = generate(params, refusal_patterns, seeds, templates, cache)
    finally:
        cache.close()
    cache.write_sorted()
    provenance = {"endpoint": params.base_url, "model": params.model, "template": templates.digest}
    rows = merge(existing, [review_row(pair, provenance) for pair in run.accepted])
    write_review(paths.REVIEW_FILE, rows)
    rejects = [{"source": d.source, "reason": d.reason, "detail": d.detail, "row": d.row} for d in run.dropped]
    summary = metrics(params, rows, run)
    log.info(
        "%d requests sent (%d tokens), %d replies from the cache",
        run.spend.sent,
        run.spend.sent_tokens,
        run.spend.cached,
    )
    return write_outputs(rejects, summary)


def review_row(pair: Generated, provenance: dict[str, str]) -> Row:
    nearest = pair.nearest and {
        "instruction": pair.nearest.text,
        "source": pair.nearest.source,
        "rouge_l": pair.nearest.score,
    }
    return {
        "id": pair.id,
        "status": "pending",
        "note": "",
        "instruction": pair.instruction,
        "answer": pair.answer,
        "subject": pair.subject,
        "difficulty": pair.difficulty,
        "nearest": nearest,
        "provenance": {**provenance, "request": pair.request[:16]},
    }


def metrics(params: SelfInstruct, rows: list[Row], run: Generation | None = None) -> dict[str, Any]:
    """metrics/selfinstruct.json: what the run used and kept, and where review stands. No timings and no
    cache hits (they differ between a first run and a rerun whose files are the same)."""
    from ta.selfinstruct.filters import REASONS

    spend, accepted = (run.spend, run.accepted) if run else (None, [])
    rejected = [d.reason for d in run.dropped] if run else []
    return {
        "enabled": params.enabled,
        "stopped_by": run.stopped_by if run else "disabled",
        "replies": spend.replies if spend else 0,
        "prompt_tokens": spend.prompt_tokens if spend else 0,
        "completion_tokens": spend.completion_tokens if spend else 0,
        "accepted": len(accepted),
        "rejected": len(rejected),
        "rejected_by_reason": {reason: rejected.count(reason) for reason in REASONS},
        "accepted_by_subject": {subject: sum(p.subject == subject for p in accepted) for subject in params.subjects},
        "review": {"rows": len(rows), **status_counts(rows)},
    }


def write_outputs(rejects: list[dict[str, Any]], summary: dict[str, Any]) -> dict[str, Any]:
    paths.SELFINSTRUCT_DIR.mkdir(parents=True, exist_ok=True)
    with open(paths.SELFINSTRUCT_REJECTS, "w", encoding="utf-8", newline="\n") as f:
        f.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in rejects)
    paths.SELFINSTRUCT_METRICS.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(summary, ensure_ascii=False, indent=2) + "\n"
    paths.SELFINSTRUCT_METRICS.write_text(text, encoding="utf-8")
    return summary


def print_summary(summary: dict[str, Any]) -> None:
    if not summary["enabled"]:
        print("selfinstruct: off (params selfinstruct.enabled); the review file passed through")
    else:
        print(
            f"selfinstruct: {summary['accepted']} pairs to review, {summary['rejected']} rejected, "
            f"{summary['replies']} replies, {summary['prompt_tokens'] + summary['completion_tokens']:,} tokens "
            f"(stopped by {summary['stopped_by']})"
        )
        for reason, count in summary["rejected_by_reason"].items():
            if count:
                print(f"  rejected {reason:<12} {count}")
    review = summary["review"]
    print(
        f"  review file: {review['rows']} rows: {review['pending']} pending, {review['accepted']} accepted, "
        f"{review['edited']} edited, {review['rejected']} rejected"
    )
