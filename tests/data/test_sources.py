"""prepare's inputs (ta/data/sources.py): local files and hub datasets (through the real `datasets` loader, on
local files written here), the format each source is in, and the size estimates of large files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ta.config import PrepareColumns, PrepareSource
from ta.data import prepare, sources
from ta.data.io import read_raw_rows
from ta.data.sources import Source, expected_rows, length_sample_every, read_source, source_format
from ta.errors import DataError, PrepareError
from tests.helpers import PREPARE_FIXTURES as FIXTURES
from tests.helpers import hand_counter, prepare_params, read_jsonl

FIREFLY = [json.loads(line) for line in (FIXTURES / "firefly.jsonl").read_text(encoding="utf-8").splitlines()]
FIREFLY_COLUMNS = PrepareColumns(instruction="input", output="target")
SHA = "83dbe7c6fd0b3a0d1ea7fbc9e1f4d0d5c7d0e1a2"  # a revision pinned to a commit


def firefly_stage(tmp_path: Path, source: PrepareSource) -> dict:
    # eval_fraction: one of the two rows on each side of the split (prepare refuses an empty split)
    params = prepare_params(
        sft_sources=[source], preference_sources=[], min_tokens=5, system_prompt="s", eval_fraction=0.7
    )
    return prepare.run_stage(params, hand_counter())


@pytest.mark.parametrize("layout", ["parquet", "json"])
def test_hub_source_goes_through_datasets_with_the_column_mapping(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, layout: str
) -> None:
    """The guide's Firefly entry (`hub:` + `format: alpaca` + `columns:`) read by datasets.load_dataset itself:
    a parquet file through the parquet builder, and a local dataset directory as a hub snapshot looks."""
    import datasets

    monkeypatch.chdir(tmp_path)
    if layout == "parquet":
        datasets.Dataset.from_list(FIREFLY).to_parquet(str(tmp_path / "firefly.parquet"))
        source = PrepareSource(hub="parquet", data_files=str(tmp_path / "firefly.parquet"), format="alpaca")
    else:
        (tmp_path / "YeungNLP/firefly").mkdir(parents=True)
        (tmp_path / "YeungNLP/firefly/train.jsonl").write_bytes((FIXTURES / "firefly.jsonl").read_bytes())
        source = PrepareSource(hub="YeungNLP/firefly", format="alpaca")
    source.columns = FIREFLY_COLUMNS
    summary = firefly_stage(tmp_path, source)
    assert summary["kept"] == 2
    rows = read_jsonl(Path("data/processed_data.jsonl"))
    assert {r["output"] for r in rows} == {
        "学习并且按时温习，不也是很愉快的吗？",
        "下联：瑞雪迎春到人间，万家灯火庆团圆。",
    }
    assert {r["instruction"].split("\n")[0] for r in rows} == {row["input"].split("\n")[0] for row in FIREFLY}
    kept = read_jsonl(Path("data/prepared/sft_train.jsonl")) + read_jsonl(Path("data/prepared/sft_eval.jsonl"))
    assert sorted(row["source"] for row in kept) == [f"{source.hub}:1", f"{source.hub}:2"]  # row numbers from 1
    assert summary["sources"][source.hub]["rows_in"] == 2


def test_a_hub_split_that_does_not_exist_is_one_line_naming_the_source(tmp_path: Path) -> None:
    import datasets

    datasets.Dataset.from_list(FIREFLY).to_parquet(str(tmp_path / "f.parquet"))
    config = PrepareSource(hub="parquet", data_files=str(tmp_path / "f.parquet"), split="test")
    with pytest.raises(PrepareError, match=r"^parquet: cannot load the dataset \(ValueError: Unknown split \"test\""):
        list(read_source(Source("parquet", "sft", config)))


def test_a_hub_dataset_out_of_reach_stops_the_stage_with_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The guide's Firefly source without network: exit code 2 and one line, no traceback."""
    from stages import prepare as prepare_stage
    from tests.helpers import build_tokenizer, write_params

    monkeypatch.chdir(tmp_path)
    build_tokenizer("sentencepiece", tmp_path / "models/base")
    firefly = {"hub": "YeungNLP/firefly-train-1.1M", "format": "alpaca", "columns": {"instruction": "input"}}
    firefly["revision"] = SHA
    write_params(tmp_path, prepare={"sft_sources": [firefly], "preference_sources": []})
    assert prepare_stage.main([]) == 2
    err = capsys.readouterr().err
    assert err.startswith("prepare: error: YeungNLP/firefly-train-1.1M: cannot load the dataset (")
    assert err.count("\n") == 1


def test_missing_source_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(PrepareError, match=r"nowhere\.jsonl: source file not found"):
        read_source(Source(str(tmp_path / "nowhere.jsonl"), "sft", PrepareSource(path="nowhere.jsonl")))


def head_of(path: Path) -> list:
    return list(read_raw_rows(path))[:5]


def test_format_is_detected_from_the_first_readable_row(tmp_path: Path) -> None:
    path = tmp_path / "raw.jsonl"
    path.write_text('not json\n{"instruction": "i", "input": "", "output": "o"}\n', encoding="utf-8")
    source = Source(str(path), "sft", PrepareSource(path=str(path)))
    assert source_format(source, head_of(path)) == "alpaca"
    named = Source(str(path), "sft", PrepareSource(path=str(path), format="qa"))
    assert source_format(named, head_of(path)) == "qa"  # a named format is taken as it is


def test_unknown_layout_asks_for_a_format(tmp_path: Path) -> None:
    path = tmp_path / "raw.jsonl"
    path.write_text('{"q": "1", "a": "2"}\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"raw\.jsonl:1: cannot tell the format from the keys \['a', 'q'\]; name it"):
        source_format(Source(str(path), "sft", PrepareSource(path=str(path))), head_of(path))


@pytest.mark.parametrize(
    ("fixture", "kind", "listed"),
    [("pairs.jsonl", "sft", "sft_sources"), ("qa.jsonl", "preference", "preference_sources")],
)
def test_source_in_the_wrong_list_is_a_clear_error(fixture: str, kind: str, listed: str) -> None:
    path = FIXTURES / fixture
    with pytest.raises(
        PrepareError, match=rf"{fixture}: rows look like format '\w+', which does not belong in {listed}"
    ):
        source_format(Source(str(path), kind, PrepareSource(path=str(path))), head_of(path))


def test_large_jsonl_sizes_are_estimated_and_lengths_sampled(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sources, "CHUNK_ROWS", 10)
    monkeypatch.setattr(sources, "LENGTH_SAMPLE", 20)
    path = tmp_path / "raw.jsonl"
    line = json.dumps({"question": "问题", "answer": "答案"}, ensure_ascii=False)
    path.write_text((line + "\n") * 400, encoding="utf-8")
    source = Source(str(path), "sft", PrepareSource(path=str(path)))
    head = next(read_source(source)).rows()
    assert expected_rows(source, head) == 400  # file size / the first lines' size
    assert length_sample_every(source, head) == 20  # 400 rows, about LENGTH_SAMPLE of them counted
    small = tmp_path / "small.jsonl"
    small.write_text(line + "\n", encoding="utf-8")
    small_source = Source(str(small), "sft", PrepareSource(path=str(small)))
    assert expected_rows(small_source, head_of(small)) == 0 and length_sample_every(small_source, head_of(small)) == 1


def test_columns_map_source_columns_to_format_fields() -> None:
    source = Source("x", "sft", PrepareSource(path="x", columns=FIREFLY_COLUMNS))
    assert source.column_map == {"input": "instruction", "target": "output"}


def test_sources_come_from_params_sft_first(tmp_path: Path) -> None:
    params = prepare_params(
        sft_sources=["a.jsonl", PrepareSource(hub="org/set", format="alpaca", revision=SHA)],
        preference_sources=["p.jsonl"],
    )
    assert [(s.name, s.kind) for s in sources.sources_from_params(params)] == [
        ("a.jsonl", "sft"),
        ("org/set", "sft"),
        ("p.jsonl", "preference"),
    ]


def test_a_hub_dataset_without_a_pinned_revision_stops_prepare_before_reading(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    unpinned = PrepareSource(hub="YeungNLP/firefly-train-1.1M", format="alpaca")
    params = prepare_params(sft_sources=["never-read.jsonl", unpinned], preference_sources=[])
    with pytest.raises(PrepareError, match=r"^YeungNLP/firefly-train-1\.1M: no revision pinned; add `revision: "):
        sources.sources_from_params(params)
    branch = PrepareSource(hub="YeungNLP/firefly-train-1.1M", format="alpaca", revision="main")
    assert len(sources.sources_from_params(prepare_params(sft_sources=[branch], preference_sources=[]))) == 1
    assert "revision 'main' is not a commit sha; a branch or tag can move" in caplog.text


def test_the_pinned_revision_is_in_the_metrics(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "YeungNLP/firefly").mkdir(parents=True)  # a dataset directory laid out as a hub snapshot
    (tmp_path / "YeungNLP/firefly/train.jsonl").write_bytes((FIXTURES / "firefly.jsonl").read_bytes())
    source = PrepareSource(hub="YeungNLP/firefly", format="alpaca", columns=FIREFLY_COLUMNS, revision=SHA)
    assert firefly_stage(tmp_path, source)["sources"]["YeungNLP/firefly"]["revision"] == SHA
    metrics = json.loads(Path("metrics/prepare_sources.json").read_text(encoding="utf-8"))
    assert metrics["sources"]["YeungNLP/firefly"]["revision"] == SHA


# ------------------------------------------------------------------ where sources are, and what DVC tracks


def two_sources(directory: str) -> list[str]:
    """An SFT and a preference file of 40 rows each (some of each held out) under `directory`."""
    folder = Path(directory)
    folder.mkdir(parents=True, exist_ok=True)
    sft = [{"question": f"第{i}题：{i} 加 {i} 等于多少？", "answer": f"{i} 加 {i} 等于 {2 * i}。"} for i in range(40)]
    pairs = [
        {"instruction": f"第{i}题：{i} 乘 2 是多少？", "chosen": f"是 {2 * i}。", "rejected": "不知道。"}
        for i in range(40)
    ]
    for name, rows in (("sft.jsonl", sft), ("pref.jsonl", pairs)):
        (folder / name).write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return [str(folder / "sft.jsonl"), str(folder / "pref.jsonl")]


def stage_params(sft: str, pref: str):
    return prepare_params(sft_sources=[sft], preference_sources=[pref], eval_fraction=0.25, near_dup_threshold=0.0)


def test_an_absolute_source_path_is_recorded_relative_to_the_repository(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """metrics/prepare.json is git-tracked and the prepared rows are DVC outputs: neither may carry the
    checkout's location."""
    monkeypatch.chdir(tmp_path)
    two_sources("data/raw")
    params = stage_params(str(tmp_path / "data/raw/sft.jsonl"), str(tmp_path / "data/raw/pref.jsonl"))
    prepare.run_stage(params, hand_counter())
    metrics = Path("metrics/prepare_sources.json").read_text(encoding="utf-8")
    assert list(json.loads(metrics)["sources"]) == ["data/raw/sft.jsonl", "data/raw/pref.jsonl"]
    assert str(tmp_path) not in metrics
    rows = read_jsonl(Path("data/prepared/sft_train.jsonl")) + read_jsonl(Path("data/prepared/pref_eval.jsonl"))
    assert rows and all(row["source"].startswith("data/raw/") for row in rows)


def write_stage_file(*deps: str) -> None:
    stages = {name: {"cmd": f"python -m stages.{name}", "deps": list(deps)} for name in ("base", "prepare")}
    Path("dvc.yaml").write_text(json.dumps({"stages": stages}), encoding="utf-8")  # JSON is YAML


@pytest.mark.parametrize("stage", ["prepare", "base"])
def test_under_dvc_a_source_outside_the_stage_deps_stops_before_reading(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, stage: str
) -> None:
    """DVC reruns prepare (and base) only when a dep changes: a source it does not track would go stale."""
    from ta.data.pretrain import pretrain_rows

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DVC_STAGE", stage)
    params = stage_params(*two_sources("extra"))
    write_stage_file(f"stages/{stage}.py", "data/raw")
    run = (lambda: prepare.run_stage(params, hand_counter())) if stage == "prepare" else lambda: pretrain_rows(params)
    with pytest.raises(PrepareError, match=rf"^extra/sft\.jsonl: source of stage {stage} that dvc\.yaml does not list"):
        run()
    assert not Path("data/prepared").exists()
    write_stage_file(f"stages/{stage}.py", "data/raw", "extra")  # listed: read
    run()
    monkeypatch.delenv("DVC_STAGE")  # outside DVC nothing to check against
    write_stage_file()
    run()
