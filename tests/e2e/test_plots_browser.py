"""`dvc plots show` on the pipeline's real outputs, opened in headless Chromium: the charts must draw.

DVC's default HTML loads Vega from a CDN, which CI cannot reach, so the page is rendered with an offline
template (`dvc plots show --html-template`) that inlines the same libraries (vega, vega-lite,
vega-embed, bundled by vl-convert-python from PyPI). The template also asks vega-embed for SVG instead
of canvas, so the drawn marks are in the DOM: after Chromium has run the page, the test reads the DOM
back and counts, per plot, the points of each line and the bars, against the rows of the files DVCLive
and prepare wrote. A screenshot is saved to $TA_TEST_ARTIFACTS (or the test's tmp dir).

Chromium is a system package: `.ci/run` installs it (`apt-get install chromium chromium-driver`).
Without it the test fails, it does not skip.
"""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest
import yaml

from tests.helpers import DVC, run

# Marks the template's hook writes into the page once every vegaEmbed call settled.
STATUS_ID = "ta-render-status"

HOOK = """
<script>
  // Ask vega-embed for SVG, so that the drawn marks are DOM elements, and report when all plots settled.
  (function () {
    const embed = window.vegaEmbed;
    const calls = [];
    window.vegaEmbed = function (el, spec, opts) {
      const call = embed(el, spec, Object.assign({}, opts, {renderer: "svg", actions: false}));
      calls.push(call.then(() => null, (err) => String(el) + ": " + err));
      return call;
    };
    window.addEventListener("load", function () {
      Promise.all(calls).then(function (results) {
        const status = document.createElement("pre");
        status.id = "STATUS_ID";
        status.dataset.plots = String(calls.length);
        status.textContent = results.filter((r) => r !== null).join("\\n");
        document.body.appendChild(status);
      });
    });
  })();
</script>
""".replace("STATUS_ID", STATUS_ID)


def offline_template(path: Path) -> Path:
    """A `dvc plots show --html-template` page with Vega inlined: no `{scripts}`, so no CDN tags."""
    try:
        import vl_convert
    except ImportError:
        pytest.fail("vl-convert-python is missing: `make install-test` installs it (requirements-test.txt)")
    bundle = vl_convert.javascript_bundle(vl_version="5.21")  # DVC's templates are Vega-Lite v5 specs
    path.write_text(
        '<!DOCTYPE html>\n<html>\n<head>\n<meta charset="utf-8">\n<title>DVC Plot</title>\n'
        f"<script>{bundle}</script>\n{HOOK}</head>\n<body>\n{{plot_divs}}\n</body>\n</html>\n",
        encoding="utf-8",
    )
    return path


def chromium() -> str:
    for name in (os.environ.get("TA_CHROMIUM", ""), "chromium", "chromium-browser", "google-chrome"):
        if name and shutil.which(name):
            return shutil.which(name) or name
    pytest.fail(
        "Chromium not found: `.ci/run` installs it (apt-get install -y chromium chromium-driver); set TA_CHROMIUM"
    )


def chromium_run(page: Path, *args: str, profile: Path) -> str:
    cmd = [
        chromium(),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--hide-scrollbars",
        f"--user-data-dir={profile}",
        "--virtual-time-budget=20000",
        *args,
        page.as_uri(),
    ]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, f"chromium failed ({result.returncode}): {result.stderr[-3000:]}"
    return result.stdout


class PlotMarks(HTMLParser):
    """Per plot div (its id): the vertex count of every drawn line, the number of bars, the SVG texts."""

    def __init__(self) -> None:
        super().__init__()
        self.plots: dict[str, dict[str, list]] = {}
        self.status: dict[str, str] | None = None
        self._plot = ""
        self._classes: list[str] = []  # class of each open <g>
        self._in_text = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "div" and a.get("id") and not self._plot:
            self._plot = a["id"]
            self.plots[self._plot] = {"lines": [], "bars": [], "texts": []}
            self._depth = 0
        if tag == "div" and self._plot:
            self._depth += 1
        if tag == "pre" and a.get("id") == STATUS_ID:
            self.status = {"plots": a.get("data-plots", ""), "errors": ""}
        if not self._plot:
            return
        if tag == "g":
            self._classes.append(a.get("class", ""))
        elif tag == "path" and self._classes:
            group = self._classes[-1]
            if "mark-line" in group and a.get("d"):
                self.plots[self._plot]["lines"].append(a["d"].count("L") + 1)
            elif "mark-rect" in group and a.get("d"):
                self.plots[self._plot]["bars"].append(a["d"])
        elif tag == "text":
            self._in_text = True

    def handle_endtag(self, tag: str) -> None:
        if tag == "g" and self._classes:
            self._classes.pop()
        elif tag == "text":
            self._in_text = False
        elif tag == "div" and self._plot:
            self._depth -= 1
            if self._depth == 0:
                self._plot = ""

    def handle_data(self, data: str) -> None:
        if self._in_text and self._plot and data.strip():
            self.plots[self._plot]["texts"].append(data.strip())
        elif self.status is not None and not self._plot:
            self.status["errors"] += data.strip()


def tsv_rows(path: Path) -> int:
    with path.open(encoding="utf-8") as f:
        return sum(1 for _ in csv.DictReader(f, delimiter="\t"))


def csv_rows(path: Path) -> int:
    with path.open(encoding="utf-8") as f:
        return sum(1 for _ in csv.DictReader(f))


def artifacts_dir(tmp_path: Path) -> Path:
    target = Path(os.environ.get("TA_TEST_ARTIFACTS", tmp_path))
    target.mkdir(parents=True, exist_ok=True)
    return target


@pytest.fixture(scope="module")
def rendered_plots(pipeline_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, PlotMarks]:
    """`dvc plots show` of the pipeline's plots, run through Chromium; the page and its parsed DOM."""
    work = tmp_path_factory.mktemp("plots")
    template = offline_template(work / "template.html")
    run(
        [DVC, "plots", "show", "--html-template", str(template), "-o", str(work / "html")],
        cwd=pipeline_repo,
    )
    page = work / "html" / "index.html"
    dom = chromium_run(page, "--dump-dom", profile=work / "profile")
    marks = PlotMarks()
    marks.feed(dom)
    return page, marks


def test_every_declared_plot_settles_without_error(rendered_plots: tuple[Path, PlotMarks], pipeline_repo: Path) -> None:
    _, marks = rendered_plots
    assert marks.status is not None, "the page never finished rendering (Vega did not load?)"
    assert marks.status["errors"] == ""
    declared = yaml.safe_load((pipeline_repo / "dvc.yaml").read_text(encoding="utf-8"))["plots"]
    assert int(marks.status["plots"]) == len(declared) == len(marks.plots)
    for plot_id in ("sft_loss", "dpo_loss", "dpo_rewards"):
        assert marks.plots[plot_id]["lines"], f"{plot_id}: no line drawn"


def test_loss_curves_draw_every_logged_step(rendered_plots: tuple[Path, PlotMarks], pipeline_repo: Path) -> None:
    _, marks = rendered_plots
    for stage, title in (("sft", "SFT loss (train vs held-out eval)"), ("dpo", "DPO loss (train vs held-out eval)")):
        plot = marks.plots[f"{stage}_loss"]
        assert title in plot["texts"]
        train = tsv_rows(pipeline_repo / f"dvclive/{stage}/plots/metrics/loss.tsv")
        held_out = tsv_rows(pipeline_repo / f"dvclive/{stage}/plots/metrics/eval/loss.tsv")
        assert train >= 2 and held_out >= 1
        # the template draws each series as a raw line (one vertex per logged step) and a smoothed one
        assert train in plot["lines"], f"{stage}: no line with {train} points in {plot['lines']}"
        assert held_out in plot["lines"] or held_out == 1, f"{stage}: no line with {held_out} points"


def test_reward_margins_and_prepare_bars_draw(rendered_plots: tuple[Path, PlotMarks], pipeline_repo: Path) -> None:
    _, marks = rendered_plots
    margins = tsv_rows(pipeline_repo / "dvclive/dpo/plots/metrics/rewards/margins.tsv")
    assert margins in marks.plots["dpo_rewards"]["lines"]
    bars = [p for p in marks.plots if "prepare_lengths" in p]
    assert len(bars) == 1
    assert len(marks.plots[bars[0]]["bars"]) == csv_rows(pipeline_repo / "metrics/prepare_lengths.csv")


def test_screenshot_is_saved(rendered_plots: tuple[Path, PlotMarks], tmp_path: Path) -> None:
    page, _ = rendered_plots
    shot = artifacts_dir(tmp_path) / "dvc-plots.png"
    chromium_run(page, f"--screenshot={shot}", "--window-size=1400,1000", profile=tmp_path / "profile")
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(data) > 30_000, "a blank page compresses to a few KB; drawn charts do not"
