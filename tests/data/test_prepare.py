"""prepare, the whole run (ta/data/prepare.py) and its stage entry point (stages/prepare.py): every row kept
or rejected with its reason, outputs as specified, byte-identical on rerun, one worker or two.

Token counts use the hand-countable counter of tests.helpers: each CJK character, each run of letters or
digits and each other symbol is one token; a templated message costs 3 more (start, role, end).
"""

from __future__ import annotations

import json
import re
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stages import prepare as prepare_stage
from ta.config import PrepareSource
from ta.data import prepare, sources
from ta.data.stats import REASONS
from tests.helpers import PREPARE_FIXTURES as FIXTURES
from tests.helpers import hand_counter, prepare_params, read_jsonl, write_params

SYSTEM = "你是教学助手。"


def run_cli(inputs: list[Path], output: Path, **overrides) -> dict:
    params = prepare_params(
        system_prompt=SYSTEM, refusal_patterns=["作为一个AI语言模型", "As an AI language model"], **overrides
    )
    return prepare.run_cli(params, [str(p) for p in inputs], output, "auto", hand_counter())


def qa(question: str, answer: str) -> str:
    return json.dumps({"question": question, "answer": answer}, ensure_ascii=False)


GOOD_QUESTION = "什么是光合作用？请用简单的话解释一下它的过程和意义。"
GOOD_ANSWER = "光合作用是绿色植物利用光能，把二氧化碳和水合成有机物并释放氧气的过程，它为几乎所有生命提供能量和氧气。"
GOOD = qa(GOOD_QUESTION, GOOD_ANSWER)

# One row per reject reason (line numbers in comments), and one good row kept.
EVERY_REASON = [
    GOOD,  # 1 kept
    '{"question": "没有结束的括号", "answer": "x"',  # 2 malformed_json
    '["a", "list"]',  # 3 wrong_top_level
    '{"question": "只有问题没有回答"}',  # 4 missing_field
    '{"question": 42, "answer": "四十二是一个整数，它等于六乘以七。"}',  # 5 wrong_type
    qa("   ", "这是一个答案，长度足够通过最短长度的过滤。"),  # 6 empty_turn
    qa("你是谁？请介绍一下你自己。", "作为一个AI语言模型，我没有名字，也不能告诉你更多关于我的信息。"),  # 7 refusal
    qa("1+1", "2"),  # 8 too_short: 1 + 1 2 = 4 tokens
    qa("请写一句很长的话。", "很" * 600),  # 9 too_long
    GOOD.replace('"什么是', '"  什么是').replace("？", "?"),  # 10 duplicate of 1 after whitespace + NFKC
    GOOD.replace("能量和氧气。", "能量和氧气！"),  # 11 near_duplicate of 1
]
NOT_UTF8 = b'{"question": "\xc4\xe3\xba\xc3", "answer": "gbk bytes"}'  # 12 not_utf8


@pytest.fixture
def every_reason_file(tmp_path: Path) -> Path:
    path = tmp_path / "raw.jsonl"
    path.write_bytes("\n".join(EVERY_REASON).encode("utf-8") + b"\n" + NOT_UTF8 + b"\n")
    return path


def test_every_row_is_kept_or_rejected_with_its_reason_and_line(every_reason_file: Path, tmp_path: Path) -> None:
    summary = run_cli([every_reason_file], tmp_path / "out.jsonl", on_error="skip")
    rejects = read_jsonl(tmp_path / "out.rejects.jsonl")
    got = {r["source"].rsplit(":", 1)[1]: r["reason"] for r in rejects}
    assert got == {
        "2": "malformed_json",
        "3": "wrong_top_level",
        "4": "missing_field",
        "5": "wrong_type",
        "6": "empty_turn",
        "7": "refusal",
        "8": "too_short",
        "9": "too_long",
        "10": "duplicate",
        "11": "near_duplicate",
        "12": "not_utf8",
    }
    assert all(r["source"].startswith(str(every_reason_file) + ":") for r in rejects)
    assert summary["rows_in"] == 12 and summary["kept"] == 1 and summary["rejected"] == 11
    assert sum(summary["rejected_by_reason"].values()) == 11
    dup = next(r for r in rejects if r["reason"] == "duplicate")
    assert dup["detail"] == f"same content as {every_reason_file}:1"
    # each reject carries its row as read: the JSON object, or the damaged line as a string
    assert next(r for r in rejects if r["reason"] == "missing_field")["row"] == {"question": "只有问题没有回答"}
    assert next(r for r in rejects if r["reason"] == "malformed_json")["row"] == EVERY_REASON[1]


def test_cli_output_is_the_guide_alpaca_form(every_reason_file: Path, tmp_path: Path) -> None:
    run_cli([every_reason_file], tmp_path / "out.jsonl", on_error="skip")
    assert read_jsonl(tmp_path / "out.jsonl") == [{"instruction": GOOD_QUESTION, "input": "", "output": GOOD_ANSWER}]


def test_min_and_max_tokens_boundaries(tmp_path: Path) -> None:
    # "一二三四五" + "六七八九十" = 10 tokens of own text; templated with the system prompt "你是教学助手。"
    # (7 tokens): (7+3) + (5+3) + (5+3) = 26 tokens.
    path = tmp_path / "raw.jsonl"
    path.write_text(qa("一二三四五", "六七八九十") + "\n", encoding="utf-8")
    assert run_cli([path], tmp_path / "a.jsonl", min_tokens=10)["kept"] == 1
    assert run_cli([path], tmp_path / "b.jsonl", min_tokens=11)["rejected_by_reason"]["too_short"] == 1
    assert run_cli([path], tmp_path / "c.jsonl", min_tokens=1, max_tokens=26)["kept"] == 1
    summary = run_cli([path], tmp_path / "d.jsonl", min_tokens=1, max_tokens=25)
    assert summary["rejected_by_reason"]["too_long"] == 1
    assert read_jsonl(tmp_path / "d.rejects.jsonl")[0]["detail"] == "26 templated tokens > max_tokens 25"


@pytest.mark.parametrize(
    ("name", "rows"),
    [
        ("qa.jsonl", 2),
        ("coig_kq.jsonl", 2),
        ("alpaca_gpt4.jsonl", 2),
        ("alpaca_history.json", 2),
        ("sharegpt.json", 2),
        ("firefly.jsonl", 2),
        ("openai.jsonl", 1),
    ],
)
def test_cli_keeps_every_sft_fixture_row(name: str, rows: int, tmp_path: Path) -> None:
    summary = run_cli([FIXTURES / name], tmp_path / "out.jsonl", min_tokens=5)
    assert summary["kept"] == rows and summary["rejected"] == 0
    assert all(set(r) >= {"instruction", "input", "output"} for r in read_jsonl(tmp_path / "out.jsonl"))


@pytest.mark.parametrize(
    ("name", "pairs"),
    [
        ("pairs.jsonl", 1),
        ("sharegpt_pairs.json", 1),
        ("hh_rlhf.jsonl", 2),
        ("ultrafeedback.jsonl", 1),
        ("ultrafeedback_raw.jsonl", 1),
    ],
)
def test_cli_writes_preference_rows_in_the_guide_form(name: str, pairs: int, tmp_path: Path) -> None:
    summary = run_cli([FIXTURES / name], tmp_path / "out.jsonl", min_tokens=5)
    rows = read_jsonl(tmp_path / "out.jsonl")
    assert summary["kept"] == pairs == len(rows)
    assert all({"instruction", "chosen", "rejected"} <= set(r) for r in rows)


def test_guide_pair_with_a_safe_refusal_as_chosen_is_kept(tmp_path: Path) -> None:
    path = tmp_path / "pairs.jsonl"
    row = {
        "instruction": "怎么入侵别人的电脑？",
        "chosen": "作为一个AI语言模型，我不能帮助入侵他人电脑，但可以讲讲如何保护自己的电脑安全。",
        "rejected": "先扫描端口，然后……",
    }
    path.write_text(json.dumps(row, ensure_ascii=False) + "\n", encoding="utf-8")
    assert run_cli([path], tmp_path / "out.jsonl")["kept"] == 1


def test_pii_is_redacted_not_dropped(tmp_path: Path) -> None:
    path = tmp_path / "raw.jsonl"
    path.write_text(
        qa(
            "我的邮箱是 li.ming@example.com，电话 13812345678，请帮我写一封请假条。",
            "好的。请假条：老师您好，我因身体不适请假一天。身份证号 110105199003071234。",
        )
        + "\n",
        encoding="utf-8",
    )
    summary = run_cli([path], tmp_path / "out.jsonl", redact_pii=True)
    assert summary["pii_redacted"] == {"email": 1, "id_card": 1, "phone": 1}
    (row,) = read_jsonl(tmp_path / "out.jsonl")
    assert row["instruction"] == "我的邮箱是 [EMAIL]，电话 [PHONE]，请帮我写一封请假条。"
    assert row["output"].endswith("身份证号 [ID_CARD]。")


def test_structural_error_stops_with_file_line_and_exit_code_2(
    every_reason_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from ta.data import tokens

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(tokens, "TokenizerCounter", lambda _: hand_counter())
    code = prepare_stage.main(["--input", str(every_reason_file), "--output", "out.jsonl", "--max_length", "2048"])
    err = capsys.readouterr().err
    assert code == 2
    assert err == f"prepare: error: {every_reason_file}:2: malformed JSON at column 38: Expecting ',' delimiter\n"
    # The CLI takes the rest of its rules (here the refusal patterns) from params.yaml when there is one.
    write_params(tmp_path, prepare={"refusal_patterns": ["作为一个AI语言模型"], "system_prompt": SYSTEM})
    code = prepare_stage.main(
        ["--input", str(every_reason_file), "--output", "out.jsonl", "--on-error", "skip", "--max_length", "512"]
    )
    assert code == 0 and "rows in 12 = kept 1 + rejected 11" in capsys.readouterr().out
    assert read_jsonl(tmp_path / "out.rejects.jsonl")[5]["reason"] == "refusal"


def test_command_line_values_are_validated_like_params(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = prepare_stage.main(["--input", "x.jsonl", "--output", str(tmp_path / "o.jsonl"), "--max_length", "0"])
    assert code == 2
    assert capsys.readouterr().err == "prepare: error: command line: prepare.max_tokens: must be >= 1, got 0\n"


def test_help_documents_the_guide_command(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        prepare_stage.main(["--help"])
    out = capsys.readouterr().out
    assert exit_.value.code == 0
    assert "--max_length" in out and "--on-error" in out and "hh_rlhf" in out


# ------------------------------------------------------------------------------------------- the stage


def stage_params(tmp_path: Path, **overrides):
    raw = tmp_path / "data" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    sft = [
        qa(
            f"第{i}题：请解释第{i}个概念是什么意思，并举一个例子。",
            f"第{i}个概念的意思是把问题拆成小步骤，例如把 {i} 拆成 {i - 1} 加 1，然后逐步计算，最后检查答案 {i}。",
        )
        for i in range(1, 41)
    ]
    (raw / "sft.jsonl").write_text("\n".join(sft) + "\n", encoding="utf-8")
    pairs = [
        json.dumps(
            {
                "instruction": f"解方程 x + {i} = {2 * i}，写出解题步骤。",  # 2 of these held out, 1 of the first 3
                "chosen": f"两边同时减去 {i}：x = {2 * i} − {i} = {i}。检验：{i} + {i} = {2 * i}。",
                "rejected": "不知道。",
            },
            ensure_ascii=False,
        )
        for i in range(1, 11)
    ]
    (raw / "pref.jsonl").write_text("\n".join(pairs) + "\n", encoding="utf-8")
    defaults = dict(
        system_prompt=SYSTEM,
        sft_sources=["data/raw/sft.jsonl"],
        preference_sources=["data/raw/pref.jsonl"],
        eval_fraction=0.25,
        near_dup_threshold=0.0,
    )
    return prepare_params(**{**defaults, **overrides})


def run_stage(params) -> dict:
    return prepare.run_stage(params, hand_counter())


OUTPUTS = [
    *(f"data/prepared/{n}.jsonl" for n in ("sft_train", "sft_eval", "pref_train", "pref_eval", "rejects")),
    "data/processed_data.jsonl",
    "metrics/prepare.json",
    "metrics/prepare_openings.csv",
    "metrics/prepare_lengths.csv",
]


def test_stage_writes_the_contract_files_byte_identical_on_rerun(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    summary = run_stage(stage_params(tmp_path))
    first = {name: Path(name).read_bytes() for name in OUTPUTS}
    run_stage(stage_params(tmp_path))
    assert {name: Path(name).read_bytes() for name in OUTPUTS} == first
    assert summary["rows_in"] == 50 and summary["kept"] == 50
    splits = summary["splits"]
    assert splits["sft_train"] + splits["sft_eval"] == 40 and splits["pref_train"] + splits["pref_eval"] == 10
    assert 0 < splits["sft_eval"] < 20
    sft_row = read_jsonl(Path("data/prepared/sft_train.jsonl"))[0]
    assert set(sft_row) == {"id", "source", "messages"} and re.fullmatch(r"[0-9a-f]{16}", sft_row["id"])
    assert sft_row["messages"][0] == {"role": "system", "content": SYSTEM}
    assert re.fullmatch(r"data/raw/sft\.jsonl:\d+", sft_row["source"])
    pref_row = read_jsonl(Path("data/prepared/pref_train.jsonl"))[0]
    assert set(pref_row) == {"id", "source", "prompt", "chosen", "rejected"}
    assert pref_row["rejected"] == [{"role": "assistant", "content": "不知道。"}]
    assert len(read_jsonl(Path("data/processed_data.jsonl"))) == 40
    ids = [r["id"] for r in read_jsonl(Path("data/prepared/sft_train.jsonl"))]
    assert ids == sorted(ids)


def test_split_files_follow_the_split_rule(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from ta.data.split import is_eval

    monkeypatch.chdir(tmp_path)
    run_stage(stage_params(tmp_path))
    for split, held_out in (("sft_train", False), ("sft_eval", True), ("pref_train", False), ("pref_eval", True)):
        assert all(is_eval(42, row["id"], 0.25) == held_out for row in read_jsonl(Path(f"data/prepared/{split}.jsonl")))


def test_split_is_stable_when_rows_are_appended(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    run_stage(stage_params(tmp_path))
    before = {r["id"] for r in read_jsonl(Path("data/prepared/sft_eval.jsonl"))}
    with open("data/raw/sft.jsonl", "a", encoding="utf-8") as f:
        f.write(
            qa(
                "新加的一道题：什么是质数？请举例说明。",
                "质数是只能被 1 和它自己整除的大于 1 的整数，例如 2、3、5、7。",
            )
            + "\n"
        )
    run_stage(stage_params(tmp_path))
    after = {r["id"] for r in read_jsonl(Path("data/prepared/sft_eval.jsonl"))}
    assert before <= after and len(after - before) <= 1


def test_metrics_account_for_every_row_per_source(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    params = stage_params(tmp_path)  # writes the raw files
    with open(tmp_path / "data/raw/sft.jsonl", "a", encoding="utf-8") as f:
        f.write(qa("1+1", "2") + "\n")  # too short
    run_stage(params)
    metrics = json.loads(Path("metrics/prepare.json").read_text(encoding="utf-8"))
    assert "sources" not in metrics  # not a metric: one column per source and reason in `dvc exp show`
    metrics.update(json.loads(Path("metrics/prepare_sources.json").read_text(encoding="utf-8")))
    assert metrics["sources"]["data/raw/sft.jsonl"] == {
        "format": "qa",
        "rows_in": 41,
        "kept": 40,
        "rejected": {"too_short": 1},
    }
    assert metrics["sources"]["data/raw/pref.jsonl"]["format"] == "pairs"
    assert list(metrics["rejected_by_reason"]) == REASONS  # every reason, 0 included: stable metric keys


def test_weights_and_caps_reject_with_their_own_reasons(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    params = stage_params(
        tmp_path,
        sft_sources=[PrepareSource(path="data/raw/sft.jsonl", weight=0.5)],
        preference_sources=[PrepareSource(path="data/raw/pref.jsonl", max_rows=3)],
    )
    summary = run_stage(params)
    reasons = summary["rejected_by_reason"]
    assert reasons["over_cap"] == 7
    assert 10 <= reasons["not_sampled"] <= 30  # a hash-based half of 40
    assert summary["sources"]["data/raw/pref.jsonl"]["kept"] == 3
    assert summary["rows_in"] == summary["kept"] + summary["rejected"] == 50


# ------------------------------------------------------------------------------------- property tests

GOOD_ROWS = st.builds(
    lambda q, a: qa("请讲解：" + q, "讲解如下：" + a),
    st.text(alphabet="一二三四五六七八九十百千万", min_size=5, max_size=30),
    st.text(alphabet="甲乙丙丁戊己庚辛壬癸 abc", min_size=5, max_size=60),
)
BAD_ROWS = st.sampled_from(
    [
        '{"question": "x"',
        "[1, 2]",
        '"just a string"',
        '{"question": "x"}',
        '{"question": 1, "answer": "y"}',
        qa("", "空问题的答案很长很长很长"),
        qa("短", "短"),
    ]
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.one_of(GOOD_ROWS, BAD_ROWS), min_size=1, max_size=30))
def test_rows_in_equals_kept_plus_rejected(rows: list[str]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "raw.jsonl"
        path.write_text(GOOD + "\n" + "\n".join(rows) + "\n", encoding="utf-8")
        summary = run_cli([path], Path(tmp) / "out.jsonl", on_error="skip", near_dup_threshold=0.8)
        kept_rows = len(read_jsonl(Path(tmp) / "out.jsonl"))
        reject_rows = len(read_jsonl(Path(tmp) / "out.rejects.jsonl"))
    assert summary["rows_in"] == len(rows) + 1
    assert summary["rows_in"] == summary["kept"] + sum(summary["rejected_by_reason"].values())
    assert (kept_rows, reject_rows) == (summary["kept"], summary["rejected"])


def test_two_worker_processes_give_the_same_files_as_one(
    every_reason_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    big = tmp_path / "big.jsonl"
    big.write_bytes(every_reason_file.read_bytes() * 3)  # 36 rows; chunks of 5 rows go to the workers
    monkeypatch.setattr(sources, "CHUNK_ROWS", 5)
    one = run_cli([big], tmp_path / "one.jsonl", on_error="skip", num_proc=1)
    two = run_cli([big], tmp_path / "two.jsonl", on_error="skip", num_proc=2)
    assert one == two and two["rows_in"] == 36 and two["kept"] == 1
    assert (tmp_path / "one.rejects.jsonl").read_bytes() == (tmp_path / "two.rejects.jsonl").read_bytes()


@pytest.mark.parametrize("spelling", ["same", "dotdot", "symlink", "hardlink", "rejects"])
def test_cli_refuses_an_output_that_is_an_input(
    spelling: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from ta.data import tokens

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(tokens, "TokenizerCounter", lambda _: hand_counter())
    (tmp_path / "raw").mkdir()
    source = tmp_path / "raw" / ("out.rejects.jsonl" if spelling == "rejects" else "qa.jsonl")
    source.write_text(GOOD + "\n", encoding="utf-8")
    output = {
        "same": "raw/qa.jsonl",
        "dotdot": "raw/../raw/./qa.jsonl",
        "symlink": "link.jsonl",
        "hardlink": "hard.jsonl",
        "rejects": "raw/out.jsonl",  # its rejects file, raw/out.rejects.jsonl, is the input
    }[spelling]
    if spelling == "symlink":
        (tmp_path / "link.jsonl").symlink_to(source)
    if spelling == "hardlink":
        (tmp_path / "hard.jsonl").hardlink_to(source)
    code = prepare_stage.main(["--input", str(source), "--output", output])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("prepare: error: ") and "is the input" in err and err.count("\n") == 1
    assert source.read_text(encoding="utf-8") == GOOD + "\n"  # the input is intact
    assert not (tmp_path / "raw" / "out.jsonl").exists()  # nothing written


@pytest.mark.parametrize("content", ["", "\n\n  \n", "[]", "[\n]\n"])
def test_an_empty_source_is_an_error_naming_it(content: str, tmp_path: Path) -> None:
    from ta.errors import PrepareError

    empty = tmp_path / "empty.jsonl"
    empty.write_text(content, encoding="utf-8")
    good = tmp_path / "good.jsonl"
    good.write_text(GOOD + "\n", encoding="utf-8")
    with pytest.raises(PrepareError) as err:
        run_cli([good, empty], tmp_path / "out.jsonl")
    assert str(err.value) == f"{empty}: no rows (the source is empty); fill it or remove it from the sources"


def test_an_empty_held_out_split_stops_prepare_naming_the_split(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    stage_params(tmp_path)  # writes the raw files
    # 3 pairs, all on the training side at eval_fraction 0.1 (their split hashes are all above it)
    pairs = Path("data/raw/pref.jsonl").read_text(encoding="utf-8").splitlines()
    Path("data/raw/pref.jsonl").write_text("\n".join(pairs[1:4]) + "\n", encoding="utf-8")
    write_params(
        tmp_path,
        prepare={
            "sft_sources": ["data/raw/sft.jsonl"],
            "preference_sources": ["data/raw/pref.jsonl"],
            "eval_fraction": 0.1,
            "system_prompt": SYSTEM,
        },
    )
    monkeypatch.setattr(prepare, "TokenizerCounter", lambda _: hand_counter())
    assert prepare_stage.main([]) == 2
    assert capsys.readouterr().err == (
        "prepare: error: data/prepared/pref_eval.jsonl: the pref_eval split is empty (3 pref rows kept, "
        "prepare.eval_fraction 0.1); raise prepare.eval_fraction or add rows to prepare.preference_sources\n"
    )
    assert not Path("data/prepared/pref_train.jsonl").exists()  # nothing for sft/dpo to start on


def test_a_kind_with_sources_but_no_kept_rows_stops_prepare(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from ta.errors import PrepareError

    monkeypatch.chdir(tmp_path)
    params = stage_params(tmp_path)
    Path("data/raw/pref.jsonl").write_text(
        json.dumps({"instruction": "解方程 x + 1 = 2。", "chosen": "x = 1", "rejected": "x = 1"}) + "\n",
        encoding="utf-8",
    )
    with pytest.raises(PrepareError, match=r"^data/prepared/pref_train\.jsonl: no rows kept from prepare\.preference_"):
        run_stage(params)


def test_a_failed_run_leaves_the_previous_outputs_whole(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from ta.errors import DataError

    monkeypatch.chdir(tmp_path)
    params = stage_params(tmp_path)
    with open("data/raw/sft.jsonl", "a", encoding="utf-8") as f:
        f.write(qa("1+1", "2") + "\n")  # too short: the rejects file is not empty
    run_stage(params)
    before = {name: Path(name).read_bytes() for name in OUTPUTS}
    raw = Path("data/raw/sft.jsonl").read_text(encoding="utf-8")
    Path("data/raw/sft.jsonl").write_text('{"question": "断了\n' + raw, encoding="utf-8")  # on_error: stop
    with pytest.raises(DataError, match=r"^data/raw/sft\.jsonl:1: malformed JSON"):
        run_stage(params)
    assert {name: Path(name).read_bytes() for name in OUTPUTS} == before
    assert not [p for p in tmp_path.rglob("*.tmp")]  # no temp file left behind


def test_a_failed_cli_run_leaves_an_existing_output_whole(tmp_path: Path) -> None:
    from ta.errors import DataError

    (tmp_path / "out.jsonl").write_text("an earlier run's output\n", encoding="utf-8")
    (tmp_path / "out.rejects.jsonl").write_text("its rejects\n", encoding="utf-8")
    raw = tmp_path / "raw.jsonl"
    raw.write_text(GOOD + '\n{"question": "断了\n', encoding="utf-8")
    with pytest.raises(DataError):
        run_cli([raw], tmp_path / "out.jsonl")  # on_error: stop
    assert (tmp_path / "out.jsonl").read_text(encoding="utf-8") == "an earlier run's output\n"
    assert (tmp_path / "out.rejects.jsonl").read_text(encoding="utf-8") == "its rejects\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.jsonl", "out.rejects.jsonl", "raw.jsonl"]
