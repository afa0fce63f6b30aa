"""Personal data scrubbing for prepare (`prepare.redact_pii`): e-mail addresses, Chinese ID-card and mobile
numbers are replaced by [EMAIL]/[ID_CARD]/[PHONE], and each replacement is counted."""

from __future__ import annotations

import re

from ta.data.samples import Sample

PII_PATTERNS: dict[str, re.Pattern[str]] = {
    "email": re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}"),
    "id_card": re.compile(
        r"(?<![0-9])[1-9]\d{5}(?:19|20)\d{2}(?:0[1-9]|1[0-2])(?:0[1-9]|[12]\d|3[01])\d{3}[0-9Xx](?![0-9])"
    ),
    "phone": re.compile(r"(?<![0-9])(?:\+?86[- ]?)?1[3-9]\d[- ]?\d{4}[- ]?\d{4}(?![0-9])"),
}


def scrub_pii(text: str, counts: dict[str, int]) -> str:
    """Replace e-mail addresses, Chinese ID-card and mobile numbers with [EMAIL]/[ID_CARD]/[PHONE]."""
    for kind, pattern in PII_PATTERNS.items():
        text, found = pattern.subn(f"[{kind.upper()}]", text)
        if found:
            counts[kind] = counts.get(kind, 0) + found
    return text


def scrub_sample(sample: Sample, counts: dict[str, int]) -> Sample:
    messages = [{"role": m["role"], "content": scrub_pii(m["content"], counts)} for m in sample.messages]
    chosen = scrub_pii(sample.chosen, counts) if sample.chosen is not None else None
    rejected = scrub_pii(sample.rejected, counts) if sample.rejected is not None else None
    return Sample(messages, chosen, rejected)
