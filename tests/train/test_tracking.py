"""DVCLive for the trainer stages (ta/train/tracking.py): train and eval points share the trainer's global
step, timings are dropped, only rank 0 logs, and a resumed run continues the curves the killed run left."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from ta.train import tracking


def tsv_rows(path: Path) -> list[list[str]]:
    return [line.split("\t") for line in path.read_text(encoding="utf-8").splitlines()]


def log(callback, step: int, logs: dict[str, float]) -> None:
    state = SimpleNamespace(global_step=step, is_world_process_zero=True)
    callback.on_log(None, state, None, logs=logs)


def test_train_and_eval_points_share_the_global_step_and_timings_are_dropped(tmp_path: Path) -> None:
    live_dir = tmp_path / "dvclive/sft"
    (callback,) = tracking.dvclive_callbacks(live_dir, {"sft": {"lora": {"r": 4}}})
    log(callback, 10, {"loss": 1.5, "learning_rate": 1.0e-3, "grad_norm": 0.5})
    log(callback, 10, {"eval_loss": 2.0, "eval_runtime": 3.2, "eval_samples_per_second": 9.0})
    log(callback, 20, {"loss": 1.25, "train_runtime": 60.0, "total_flos": 1.0e9})
    plots = live_dir / "plots/metrics"
    assert tsv_rows(plots / "loss.tsv") == [["step", "loss"], ["10", "1.5"], ["20", "1.25"]]
    assert tsv_rows(plots / "eval/loss.tsv") == [["step", "loss"], ["10", "2.0"]]
    assert sorted(p.name for p in plots.rglob("*.tsv")) == [
        "grad_norm.tsv",
        "learning_rate.tsv",
        "loss.tsv",
        "loss.tsv",
    ]
    assert yaml.safe_load((live_dir / "params.yaml").read_text()) == {"sft": {"lora": {"r": 4}}}


def test_only_rank_0_logs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RANK", "1")
    assert tracking.dvclive_callbacks(tmp_path / "dvclive/sft", {}) == []
    assert not (tmp_path / "dvclive").exists()


def test_resumed_run_drops_rows_past_the_checkpoint_and_appends(tmp_path: Path) -> None:
    live_dir = tmp_path / "dvclive/sft"
    (killed,) = tracking.dvclive_callbacks(live_dir, {})
    for step in range(1, 6):  # the killed run logged steps 1-5; its last checkpoint was step 4
        log(killed, step, {"loss": float(step), "eval_loss": 10.0 + step})
    (resumed,) = tracking.dvclive_callbacks(live_dir, {}, resume_step=4)
    log(resumed, 5, {"loss": 50.0})
    rows = tsv_rows(live_dir / "plots/metrics/loss.tsv")
    assert rows == [["step", "loss"], ["1", "1.0"], ["2", "2.0"], ["3", "3.0"], ["4", "4.0"], ["5", "50.0"]]
    assert [row[0] for row in tsv_rows(live_dir / "plots/metrics/eval/loss.tsv")] == ["step", "1", "2", "3", "4"]


def test_a_fresh_run_starts_new_curves(tmp_path: Path) -> None:
    live_dir = tmp_path / "dvclive/sft"
    (first,) = tracking.dvclive_callbacks(live_dir, {})
    log(first, 1, {"loss": 1.0})
    (second,) = tracking.dvclive_callbacks(live_dir, {})
    log(second, 1, {"loss": 7.0})
    assert tsv_rows(live_dir / "plots/metrics/loss.tsv") == [["step", "loss"], ["1", "7.0"]]


def test_metrics_json_is_written_as_dvclive_writes_it(tmp_path: Path) -> None:
    from dvclive import Live

    (callback,) = tracking.dvclive_callbacks(tmp_path / "ours", {})
    log(callback, 3, {"loss": 1.5, "eval_loss": 2.25})
    plain = Live(str(tmp_path / "plain"), dvcyaml=False, save_dvc_exp=False, report=None)
    plain.step = 3
    plain.log_metric("loss", 1.5)
    plain.log_metric("eval/loss", 2.25)
    plain.next_step()
    assert (tmp_path / "ours/metrics.json").read_bytes() == (tmp_path / "plain/metrics.json").read_bytes()


def test_a_summary_write_that_dies_half_way_leaves_a_resumable_metrics_json(tmp_path: Path) -> None:
    live_dir = tmp_path / "dvclive/sft"
    (killed,) = tracking.dvclive_callbacks(live_dir, {})
    log(killed, 2, {"loss": 1.5})
    killed.live.summary["unserialisable"] = object()  # the JSON encoder fails on it, part way through
    with pytest.raises(TypeError):
        log(killed, 3, {"loss": 1.25})
    (resumed,) = tracking.dvclive_callbacks(live_dir, {}, resume_step=2)  # reads metrics.json back
    assert resumed.live.summary == {"loss": 1.5, "step": 2}


def test_a_params_write_that_dies_half_way_leaves_a_resumable_params_yaml(tmp_path: Path) -> None:
    """DVCLive rewrites params.yaml in place: a run killed between the open and the write left it empty, and the
    resumed run, which reads it back, ended in a traceback."""
    from dvclive.error import InvalidParameterTypeError

    live_dir = tmp_path / "dvclive/sft"
    (killed,) = tracking.dvclive_callbacks(live_dir, {"lr": 0.1})
    with pytest.raises(InvalidParameterTypeError):  # the YAML representer fails on it, after the open
        killed.live.log_params({"unserialisable": object()})
    (resumed,) = tracking.dvclive_callbacks(live_dir, {"lr": 0.1}, resume_step=2)  # reads params.yaml back
    assert yaml.safe_load((live_dir / "params.yaml").read_text(encoding="utf-8")) == {"lr": 0.1}
    assert sorted(p.name for p in live_dir.iterdir()) == ["params.yaml"]  # no temp file left


@pytest.mark.parametrize(
    "cut",
    ["5\t5.", "5\t", "5", "1", "\n5\t5.0"],
    ids=["mid-number", "after-tab", "step-only", "mid-step", "blank-line"],  # mid-step: "1" of a step-10 row
)
def test_a_half_written_last_row_is_dropped_on_resume(tmp_path: Path, cut: str) -> None:
    """DVCLive appends a row in place: a kill in the middle leaves it without its newline (or half of it). The
    resumed run drops it and its own rows follow whole ones."""
    live_dir = tmp_path / "dvclive/sft"
    (killed,) = tracking.dvclive_callbacks(live_dir, {})
    for step in range(1, 5):
        log(killed, step, {"loss": float(step)})
    with open(live_dir / "plots/metrics/loss.tsv", "a", encoding="utf-8") as f:
        f.write(cut)  # the killed run's step-5 row, as far as it got
    (resumed,) = tracking.dvclive_callbacks(live_dir, {}, resume_step=4)
    log(resumed, 5, {"loss": 50.0})
    rows = tsv_rows(live_dir / "plots/metrics/loss.tsv")
    assert rows == [["step", "loss"], ["1", "1.0"], ["2", "2.0"], ["3", "3.0"], ["4", "4.0"], ["5", "50.0"]]


def test_a_plot_file_cut_inside_its_header_is_started_afresh(tmp_path: Path) -> None:
    live_dir = tmp_path / "dvclive/sft"
    (live_dir / "plots/metrics").mkdir(parents=True)
    (live_dir / "plots/metrics/loss.tsv").write_text("ste", encoding="utf-8")
    (resumed,) = tracking.dvclive_callbacks(live_dir, {}, resume_step=4)
    log(resumed, 5, {"loss": 50.0})
    assert tsv_rows(live_dir / "plots/metrics/loss.tsv") == [["step", "loss"], ["5", "50.0"]]
