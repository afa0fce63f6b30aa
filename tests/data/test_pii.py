"""Personal data scrubbing (ta/data/pii.py): what is replaced, what is counted, what is left alone."""

from __future__ import annotations

import pytest

from ta.data.pii import scrub_pii, scrub_sample
from ta.data.samples import Sample


def test_pii_scrub_counts_and_redacts() -> None:
    counts: dict[str, int] = {}
    text = "邮箱 a.b@example.org，手机 +86 138-1234-5678，身份证 11010519900307123X，订单号 20240101123456。"
    assert scrub_pii(text, counts) == "邮箱 [EMAIL]，手机 [PHONE]，身份证 [ID_CARD]，订单号 20240101123456。"
    assert counts == {"email": 1, "phone": 1, "id_card": 1}


@pytest.mark.parametrize(
    "text",
    [
        "12345678901",  # 11 digits but not a mobile prefix (1[3-9])
        "123456789012345678",  # 18 digits, not a valid date of birth
        "3.14159265358979",  # digits of pi
        "user@localhost",  # no top-level domain
        "213800138000",  # a mobile number inside a longer number
    ],
)
def test_numbers_and_addresses_that_are_not_pii_stay(text: str) -> None:
    counts: dict[str, int] = {}
    assert scrub_pii(text, counts) == text
    assert counts == {}


def test_every_turn_and_both_answers_of_a_pair_are_scrubbed() -> None:
    counts: dict[str, int] = {}
    sample = Sample(
        [{"role": "system", "content": "s"}, {"role": "user", "content": "我的电话 13912345678"}],
        chosen="发到 t@example.com",
        rejected="打 13912345678",
    )
    scrubbed = scrub_sample(sample, counts)
    assert scrubbed.messages[1]["content"] == "我的电话 [PHONE]"
    assert (scrubbed.chosen, scrubbed.rejected) == ("发到 [EMAIL]", "打 [PHONE]")
    assert counts == {"phone": 2, "email": 1}
    assert sample.messages[1]["content"] == "我的电话 13912345678"  # the input is not changed
