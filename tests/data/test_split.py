"""Row identity and the train/eval split (ta/data/split.py), the one definition base and prepare share."""

from __future__ import annotations

import hashlib

from ta.data.samples import Sample
from ta.data.split import content_text, hash_fraction, is_eval, is_sampled, row_id, sample_id


def qa(question: str, answer: str) -> Sample:
    return Sample([{"role": "user", "content": question}, {"role": "assistant", "content": answer}])


def test_eval_split_takes_about_the_fraction_and_never_moves() -> None:
    ids = [f"{i:016x}" for i in range(5000)]
    eval_ids = [i for i in ids if is_eval(42, i, 0.1)]
    assert 400 < len(eval_ids) < 600
    assert eval_ids == [i for i in ids if is_eval(42, i, 0.1)]
    assert eval_ids != [i for i in ids if is_eval(43, i, 0.1)]


def test_hash_fraction_is_the_sha1_of_seed_salt_and_key() -> None:
    digest = hashlib.sha1(b"42:split:0123456789abcdef").digest()
    assert hash_fraction(42, "split", "0123456789abcdef") == int.from_bytes(digest[:8], "big") / 2**64


def test_rows_differing_in_spacing_width_or_case_share_an_id() -> None:
    a = qa("什么是 光合作用？", "植物 利用 光能。")
    b = qa("  什么是　光合作用? ", "植物\t利用　光能。")
    assert content_text(a) == "user:什么是 光合作用?\nassistant:植物 利用 光能。"
    assert content_text(b) == content_text(a)
    assert sample_id(a) == sample_id(b) == row_id(content_text(a))
    assert sample_id(a) == hashlib.sha1(content_text(a).encode()).hexdigest()[:16]


def test_system_turns_do_not_change_the_id_but_roles_and_answers_do() -> None:
    base = qa("问", "答")
    with_system = Sample([{"role": "system", "content": "你是老师"}, *base.messages])
    swapped = Sample([{"role": "assistant", "content": "问"}, {"role": "user", "content": "答"}])
    pair = Sample([{"role": "user", "content": "问"}], chosen="答", rejected="错")
    assert sample_id(with_system) == sample_id(base)
    assert len({sample_id(base), sample_id(swapped), sample_id(pair)}) == 3
    assert content_text(pair) == "user:问\nchosen:答\nrejected:错"


def test_source_sample_keeps_about_its_weight_and_all_at_weight_one() -> None:
    ids = [f"{i:016x}" for i in range(4000)]
    assert all(is_sampled(1, i, 1.0) for i in ids)
    kept = [i for i in ids if is_sampled(1, i, 0.25)]
    assert 850 < len(kept) < 1150
    # the sample and the split are independent draws (different salts)
    assert [i for i in ids if is_eval(1, i, 0.25)] != kept
