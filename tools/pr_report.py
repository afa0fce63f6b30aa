"""Review report: what a change does to metrics, params and plots, as Markdown (`make report`).

The same report a pull request gets as a CML comment, made locally with one command. It is built from
DVC's own commands, so it reads exactly like them:

  dvc metrics diff BASE [TARGET] --md     every metric that changed (all of them with --all)
  dvc params diff BASE [TARGET] --md      every param that changed (all of them with --all)
  dvc plots diff BASE [TARGET] --json     a PNG per plot whose data differ, both revisions overlaid

Revisions: TARGET defaults to the workspace (what `dvc repro` / `dvc exp run` just produced, committed
or not). BASE defaults to `main` on any other branch (what the branch changes) and to HEAD on main
(what the uncommitted run changes). In CI, pass the PR's base: `--base origin/main`.

Writes report/report.md and report/plots/<plot>.png (PNGs need vl-convert-python) and prints the
Markdown; `--out -` prints it only, without images.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

from ta.errors import UserError, report

log = logging.getLogger("report")

DEFAULT_OUT = Path("report/report.md")
WORKSPACE = "workspace"


class ReportError(UserError):
    """A git or DVC command the report needs failed; the message names the command and its error."""


def _run(cmd: list[str]) -> str:
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        raise ReportError(f"`{' '.join(cmd)}` failed: {lines[-1] if lines else 'exit ' + str(result.returncode)}")
    return result.stdout


def dvc(*args: str) -> str:
    """Run the DVC of this interpreter's environment (the project venv), not whichever is on PATH."""
    return _run([sys.executable, "-m", "dvc", *args])


def default_base() -> str:
    """`main` (or `origin/main`) when HEAD is not on main, else HEAD."""
    branch = _run(["git", "rev-parse", "--abbrev-ref", "HEAD"]).strip()
    if branch != "main":
        for candidate in ("main", "origin/main"):
            if (
                subprocess.run(["git", "rev-parse", "--verify", "--quiet", candidate], capture_output=True).returncode
                == 0
            ):
                return candidate
    return "HEAD"


def revs(base: str, target: str | None) -> list[str]:
    return [base] if target in (None, WORKSPACE) else [base, target]


def diff_table(kind: str, base: str, target: str | None, show_all: bool) -> str:
    """`dvc metrics diff --md` or `dvc params diff --md`; "" when no row (DVC may print a bare header)."""
    table = dvc(kind, "diff", *revs(base, target), "--md", *(["--all"] if show_all else [])).strip()
    return table if len(table.splitlines()) > 2 else ""


def changed_plots(base: str, target: str | None) -> dict[str, dict[str, Any]]:
    """Vega-Lite specs (both revisions' data inline) of the plots whose data differ between the revisions."""
    out = json.loads(dvc("plots", "diff", *revs(base, target), "--json"))
    changed: dict[str, dict[str, Any]] = {}
    for plot_id, renders in (out.get("data") or {}).items():
        for render in renders:
            if render.get("type") != "vega":
                continue  # image plots: shown by `dvc plots diff`, not compared here
            spec = render["content"]
            if _data_differs(spec.get("data", {}).get("values", []), render.get("revisions", [])):
                changed[plot_id] = spec
    return changed


def _data_differs(rows: list[dict[str, Any]], revisions: list[str]) -> bool:
    by_rev: dict[str, list[str]] = {rev: [] for rev in revisions}
    for row in rows:
        rest = {k: v for k, v in row.items() if k != "rev"}
        by_rev.setdefault(row.get("rev", ""), []).append(json.dumps(rest, sort_keys=True))
    return len({tuple(sorted(values)) for values in by_rev.values()}) > 1


def render_png(spec: dict[str, Any], path: Path) -> bool:
    """Write the plot as PNG with vl-convert (Vega's own renderer, no browser); False when not installed."""
    try:
        import vl_convert
    except ImportError:
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(vl_convert.vegalite_to_png(spec, scale=1.5))
    return True


def build_report(
    base: str,
    target: str | None = None,
    show_all: bool = False,
    plots_dir: Path | None = None,
    link_from: Path = Path("."),
) -> str:
    """The Markdown report. PNGs of changed plots go to `plots_dir`, linked relative to `link_from`."""
    target_name = target or WORKSPACE
    parts = [f"## TeachingAssistant: `{base}` → `{target_name}`", "", "### Metrics", ""]
    parts.append(diff_table("metrics", base, target, show_all) or "No metric changed.")
    parts += ["", "### Params", "", diff_table("params", base, target, show_all) or "No param changed."]
    parts += ["", "### Plots", ""]
    plots = changed_plots(base, target)
    if plots_dir is not None:
        for stale in plots_dir.glob("*.png"):  # images of an earlier report must not be mistaken for this one's
            stale.unlink()
    if not plots:
        parts.append("No plot changed.")
    for plot_id, spec in plots.items():
        png = plots_dir / f"{_slug(plot_id)}.png" if plots_dir else None
        if png is not None and render_png(spec, png):
            parts.append(f"![{plot_id}]({png.resolve().relative_to(link_from.resolve()).as_posix()})")
        else:
            parts.append(f"- `{plot_id}` changed (`dvc plots diff {' '.join(revs(base, target))}` draws it)")
        parts.append("")
    return "\n".join(parts).rstrip() + "\n"


def _slug(plot_id: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", plot_id).strip("_")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", help="revision to compare from (default: main off main, else HEAD)")
    parser.add_argument("--target", help="revision to compare to (default: the workspace)")
    parser.add_argument("--all", action="store_true", help="list unchanged metrics and params too")
    parser.add_argument(
        "--out", default=str(DEFAULT_OUT), help=f"Markdown file (default {DEFAULT_OUT}); - = stdout only"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")

    def body() -> None:
        base = args.base or default_base()
        if args.out == "-":
            markdown = build_report(base, args.target, args.all)
        else:
            out = Path(args.out)
            out.parent.mkdir(parents=True, exist_ok=True)
            markdown = build_report(base, args.target, args.all, plots_dir=out.parent / "plots", link_from=out.parent)
            out.write_text(markdown, encoding="utf-8")
            log.info("wrote %s", out)
        print(markdown, end="")

    return report("report", body)


if __name__ == "__main__":
    sys.exit(main())
