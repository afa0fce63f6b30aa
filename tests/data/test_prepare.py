"""The prepare stage and the guide's CLI: every row kept or rejected with its reason, outputs as specified.

Token counts use a hand-countable stand-in for the tokenizer: each CJK character, each run of letters or
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

from stages import prepare
from stages.filters import TokenCounter
from stages.params import Prepare, PrepareColumns, PrepareSource

FIXTURES = Path(__file__).parent / "fixtures" / "prepare"
TOKEN = re.compile(r"[\u4e00-\u9fff]|\w+|[^\w\s]")


def count_tokens(text: str) -> int:
    return len(TOKEN.findall(text))


def count_chat_tokens(messages: list[dict[str, str]]) -> int:
    return sum(count_tokens(m["content"]) + 3 for m in messages)


COUNTER = TokenCounter(count_tokens, count_chat_tokens)


def run_cli(inputs: list[Path], output: Path, **overrides) -> dict:
    params = Prepare(
        system_prompt="你是教学助手。",
        refusal_patterns=["作为一个AI语言模型", "As an AI language model"],
        max_tokens=512,
        **overrides,
    )
    return prepare.run_cli(params, [str(p) for p in inputs], output, "auto", COUNTER)


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


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
    kept = run_cli([path], tmp_path / "c.jsonl", min_tokens=1)
    assert kept["kept"] == 1
    params = Prepare(system_prompt="你是教学助手。", min_tokens=1, max_tokens=25)
    summary = prepare.run_cli(params, [str(path)], tmp_path / "d.jsonl", "auto", COUNTER)
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
    path.write_text(
        json.dumps(
            {
                "instruction": "怎么入侵别人的电脑？",
                "chosen": "作为一个AI语言模型，我不能帮助入侵他人电脑，但可以讲讲如何保护自己的电脑安全。",
                "rejected": "先扫描端口，然后……",
            },
            ensure_ascii=False,
        )
        + "\n",
        encoding="utf-8",
    )
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
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(prepare, "TokenizerCounter", lambda _: COUNTER)
    code = prepare.main(["--input", str(every_reason_file), "--output", "out.jsonl", "--max_length", "2048"])
    err = capsys.readouterr().err
    assert code == 2
    assert err == f"error: {every_reason_file}:2: malformed JSON at column 38: Expecting ',' delimiter\n"
    # The CLI takes the rest of its rules (here the refusal patterns) from params.yaml when there is one.
    Path("params.yaml").write_text("prepare:\n  refusal_patterns: [作为一个AI语言模型]\n", encoding="utf-8")
    code = prepare.main(
        ["--input", str(every_reason_file), "--output", "out.jsonl", "--on-error", "skip", "--max_length", "512"]
    )
    assert code == 0 and "rows in 12 = kept 1 + rejected 11" in capsys.readouterr().out


def test_stage_without_a_tokenizer_says_what_to_do(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(prepare.PrepareError, match=r"models/base: no tokenizer here; run the base stage"):
        prepare.TokenizerCounter(Path("models/base"))


def test_help_documents_the_guide_command(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        prepare.main(["--help"])
    out = capsys.readouterr().out
    assert exit_.value.code == 0
    assert "--max_length" in out and "--on-error" in out and "hh_rlhf" in out


# ------------------------------------------------------------------------------------------- the stage


def stage_params(tmp_path: Path, **overrides) -> Prepare:
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
                "instruction": f"解方程 x + {i} = {2 * i}，写出步骤。",
                "chosen": f"两边同时减去 {i}：x = {2 * i} − {i} = {i}。检验：{i} + {i} = {2 * i}。",
                "rejected": "不知道。",
            },
            ensure_ascii=False,
        )
        for i in range(1, 11)
    ]
    (raw / "pref.jsonl").write_text("\n".join(pairs) + "\n", encoding="utf-8")
    defaults = dict(
        system_prompt="你是教学助手。",
        sft_sources=["data/raw/sft.jsonl"],
        preference_sources=["data/raw/pref.jsonl"],
        eval_fraction=0.25,
        near_dup_threshold=0.0,
    )
    return Prepare(**{**defaults, **overrides})


def run_stage(params: Prepare) -> dict:
    return prepare.run_stage(params, COUNTER)


def stage_files() -> dict[str, bytes]:
    names = [
        *(f"data/prepared/{n}.jsonl" for n in ("sft_train", "sft_eval", "pref_train", "pref_eval", "rejects")),
        "data/processed_data.jsonl",
        "metrics/prepare.json",
        "metrics/prepare_openings.csv",
        "metrics/prepare_lengths.csv",
    ]
    return {name: Path(name).read_bytes() for name in names}


def test_stage_writes_the_contract_files_byte_identical_on_rerun(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    summary = run_stage(stage_params(tmp_path))
    first = stage_files()
    run_stage(stage_params(tmp_path))
    assert stage_files() == first
    assert summary["rows_in"] == 50 and summary["kept"] == 50
    splits = summary["splits"]
    assert splits["sft_train"] + splits["sft_eval"] == 40 and splits["pref_train"] + splits["pref_eval"] == 10
    sft_row = read_jsonl(Path("data/prepared/sft_train.jsonl"))[0]
    assert set(sft_row) == {"id", "source", "messages"} and re.fullmatch(r"[0-9a-f]{16}", sft_row["id"])
    assert sft_row["messages"][0] == {"role": "system", "content": "你是教学助手。"}
    assert re.fullmatch(r"data/raw/sft\.jsonl:\d+", sft_row["source"])
    pref_row = read_jsonl(Path("data/prepared/pref_train.jsonl"))[0]
    assert set(pref_row) == {"id", "source", "prompt", "chosen", "rejected"}
    assert pref_row["rejected"] == [{"role": "assistant", "content": "不知道。"}]
    assert len(read_jsonl(Path("data/processed_data.jsonl"))) == 40
    ids = [r["id"] for r in read_jsonl(Path("data/prepared/sft_train.jsonl"))]
    assert ids == sorted(ids)


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


def test_source_in_the_wrong_list_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    params = stage_params(tmp_path, sft_sources=["data/raw/pref.jsonl"])
    with pytest.raises(prepare.PrepareError, match=r"data/raw/pref.jsonl: rows look like format 'pairs'"):
        run_stage(params)


def test_hub_source_goes_through_load_dataset_with_the_column_mapping(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import datasets

    calls = []

    def fake_load_dataset(path, name=None, **kwargs):
        calls.append((path, name, kwargs))
        return [json.loads(line) for line in (FIXTURES / "firefly.jsonl").read_text(encoding="utf-8").splitlines()]

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    monkeypatch.chdir(tmp_path)
    firefly = PrepareSource(
        hub="YeungNLP/firefly-train-1.1M", format="alpaca", columns=PrepareColumns(instruction="input", output="target")
    )
    summary = run_stage(stage_params(tmp_path, sft_sources=[firefly], preference_sources=[], min_tokens=5))
    assert calls == [("YeungNLP/firefly-train-1.1M", None, {"split": "train", "revision": None, "data_files": None})]
    assert summary["kept"] == 2
    rows = read_jsonl(Path("data/processed_data.jsonl"))
    assert {r["output"] for r in rows} == {
        "学习并且按时温习，不也是很愉快的吗？",
        "下联：瑞雪迎春到人间，万家灯火庆团圆。",
    }
    assert read_jsonl(Path("data/prepared/sft_train.jsonl"))[0]["source"].startswith("YeungNLP/firefly-train-1.1M")


# ------------------------------------------------------------------------------------- property test

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
    monkeypatch.setattr(prepare, "CHUNK_ROWS", 5)
    one = run_cli([big], tmp_path / "one.jsonl", on_error="skip", num_proc=1)
    two = run_cli([big], tmp_path / "two.jsonl", on_error="skip", num_proc=2)
    assert one == two and two["rows_in"] == 36 and two["kept"] == 1
    assert (tmp_path / "one.rejects.jsonl").read_bytes() == (tmp_path / "two.rejects.jsonl").read_bytes()


KEY = st.integers(0, 2**64 - 1) | st.integers(0, 40)  # small keys collide in a small table's slots


@settings(max_examples=40, deadline=None)
@given(
    st.integers(0, 3).flatmap(  # bands per row: 0 when near-duplicates are off
        lambda width: st.lists(
            st.lists(st.tuples(KEY, st.lists(KEY, min_size=width, max_size=width)), max_size=150), max_size=8
        )
    )
)
def test_duplicate_pass_decides_what_dicts_decide_row_by_row(chunks: list[list[tuple[int, list[int]]]]) -> None:
    """Chunks of (id, bands) rows through the compiled pass and its two growing key tables (key 0 and
    repeated keys included): each row's earlier row and kind, as dicts of first rows decide them."""
    import numpy as np

    from stages import kernels
    from stages.tally import KeyTable

    ids_table, bands_table, row = KeyTable(capacity=4), KeyTable(capacity=4), 0
    first_id: dict[int, int] = {}
    first_band: dict[int, int] = {}
    for chunk in chunks:
        expected = []
        for offset, (key, row_bands) in enumerate(chunk):
            if key in first_id:
                expected.append((first_id[key], True))
                continue
            hit = next((first_band[band] for band in row_bands if band in first_band), -1)
            expected.append((hit, False))
            if hit < 0:
                first_id[key] = row + offset
                for band in row_bands:
                    first_band.setdefault(band, row + offset)
        width = len(chunk[0][1]) if chunk else 0
        ids = np.array([key for key, _ in chunk], dtype=np.uint64)
        bands = np.array([b for _, b in chunk], dtype=np.uint64).reshape(len(chunk), width)
        ids_table.reserve(len(chunk))
        bands_table.reserve(bands.size)
        rows = np.arange(row, row + len(chunk), dtype=np.int32)
        earlier, exact = kernels.deduplicate(*ids_table.arrays(), *bands_table.arrays(), ids, bands, rows)
        assert list(zip(earlier.tolist(), exact.tolist(), strict=True)) == expected
        ids_table.size += len(chunk)
        bands_table.size += bands.size
        row += len(chunk)
    stored = ids_table.rows >= 0
    assert dict(zip(ids_table.keys[stored].tolist(), ids_table.rows[stored].tolist(), strict=True)) == first_id


def test_params_out_of_range_are_named(tmp_path: Path) -> None:
    with pytest.raises(
        prepare.PrepareError, match=r"params.yaml: prepare: on_error must be stop or skip, got 'ignore'"
    ):
        run_cli([FIXTURES / "qa.jsonl"], tmp_path / "out.jsonl", on_error="ignore")


def test_a_threshold_that_leaves_one_lsh_band_is_a_params_error(tmp_path: Path) -> None:
    with pytest.raises(prepare.PrepareError, match=r"params.yaml: prepare: near_dup_threshold 0.9 with 16 .*single"):
        run_cli([FIXTURES / "qa.jsonl"], tmp_path / "out.jsonl", near_dup_threshold=0.9, near_dup_num_perm=16)


def test_params_yaml_takes_plain_paths_and_mapped_hub_sources(tmp_path: Path) -> None:
    from stages.params import ParamsError, load_params

    path = tmp_path / "params.yaml"
    path.write_text(
        "prepare:\n"
        "  sft_sources:\n"
        "    - data/raw/sft_stem.jsonl\n"
        "    - hub: YeungNLP/firefly-train-1.1M\n"
        "      format: alpaca\n"
        "      columns: {instruction: input, output: target}\n"
        "      max_rows: 20000\n",
        encoding="utf-8",
    )
    plain, firefly = load_params(path).prepare.sft_sources
    assert plain == "data/raw/sft_stem.jsonl"
    assert isinstance(firefly, PrepareSource) and firefly.columns.output == "target" and firefly.max_rows == 20000
    path.write_text("prepare:\n  sft_sources:\n    - hub: x\n      colums: {}\n", encoding="utf-8")
    with pytest.raises(ParamsError, match="colums"):
        load_params(path)


def reference_duplicates(lines: list[str], near: tuple[int, int, int]) -> dict[int, str]:
    """Line -> duplicate | near_duplicate, decided the plain way: row by row, against every earlier kept
    row's id and LSH bands (what the chunked, vectorised SetDecisions must reproduce)."""
    from stages import filters
    from stages.formats import normalise

    ids: set[str] = set()
    bands: set[int] = set()
    verdicts = {}
    for line_no, line in enumerate(lines, start=1):
        content = filters.content_text(normalise(json.loads(line), "qa"))
        row_bands = set(filters.band_hashes(content, *near))
        if filters.row_id(content) in ids:
            verdicts[line_no] = "duplicate"
        elif row_bands & bands:
            verdicts[line_no] = "near_duplicate"
        else:
            ids.add(filters.row_id(content))
            bands |= row_bands
    return verdicts


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(picks=st.lists(st.tuples(st.integers(0, 5), st.integers(0, 3)), min_size=5, max_size=60))
def test_chunked_duplicate_decisions_match_the_row_by_row_reference(
    picks: list[tuple[int, int]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Exact copies, spacing variants, one-character edits and fresh rows, mixed at random; chunks of 4
    rows (duplicates across chunks and within one) decide exactly what the row-by-row reference does."""
    bases = [f"第{i}题：{GOOD_ANSWER}" for i in range(6)]
    variants = [
        lambda t: t,
        lambda t: "  " + t.replace("，", ", "),
        lambda t: t.replace("氧气的过程", "氧气的反应"),
        lambda t: t + "。另外" + t[: len(t) // 3],
    ]
    lines = [qa(GOOD_QUESTION, variants[v](bases[b])) for b, v in picks]
    expected = reference_duplicates(lines, (64, *filters_bands()))
    monkeypatch.setattr(prepare, "CHUNK_ROWS", 4)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "raw.jsonl"
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        run_cli([path], Path(tmp) / "out.jsonl", near_dup_threshold=0.8, near_dup_num_perm=64)
        rejects = read_jsonl(Path(tmp) / "out.rejects.jsonl")
    assert {int(r["source"].rsplit(":", 1)[1]): r["reason"] for r in rejects} == expected


def filters_bands() -> tuple[int, int]:
    from stages import filters

    return filters.lsh_bands(0.8, 64)


def test_length_statistics_of_a_large_source_come_from_a_hash_sample(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    lines = [qa(f"问题{i}：{GOOD_QUESTION}", GOOD_ANSWER + "很" * (i % 50)) for i in range(600)]
    path = tmp_path / "raw.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    full = run_cli([path], tmp_path / "full.jsonl", near_dup_threshold=0)["diversity"]["tokens"]
    assert full["counted_rows"] == 600  # under LENGTH_SAMPLE rows: every row counted
    monkeypatch.setattr(prepare, "CHUNK_ROWS", 100)
    monkeypatch.setattr(prepare, "LENGTH_SAMPLE", 100)  # about one row in six counted
    sampled = run_cli([path], tmp_path / "sampled.jsonl", near_dup_threshold=0)["diversity"]["tokens"]
    assert 50 < sampled["counted_rows"] < 160
    assert sampled["mean"] == pytest.approx(full["mean"], rel=0.1)
    assert abs(sampled["p50"] - full["p50"]) <= 5
    assert (tmp_path / "full.jsonl").read_bytes() == (tmp_path / "sampled.jsonl").read_bytes()
