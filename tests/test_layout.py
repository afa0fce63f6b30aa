"""The layout rules (STYLE.md, habit 1), read from the code's imports by tools/layout.py."""

from __future__ import annotations

import pytest

from tests.helpers import REPO, run_module
from tools.layout import cycles, import_graph, part

GRAPH = import_graph()


def test_docs_layout_is_what_the_code_says() -> None:
    result = run_module("tools.layout", REPO, "--check")
    assert result.returncode == 0, result.stderr


def test_no_import_circles() -> None:
    assert cycles(GRAPH) == []


def test_cycles_finds_a_circle() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c", "a"]]


@pytest.mark.parametrize("module", sorted(m for m in GRAPH if m.startswith("stages.")))
def test_a_stage_imports_only_the_library(module: str) -> None:
    assert {part(target).split(".")[0] for target in GRAPH[module]} <= {"ta"}, GRAPH[module]


@pytest.mark.parametrize("module", sorted(m for m in GRAPH if m == "ta" or m.startswith("ta.")))
def test_the_library_imports_no_stage_serve_or_tool(module: str) -> None:
    assert not {t for t in GRAPH[module] if t.split(".")[0] in ("stages", "serve", "tools")}


def test_nothing_imports_a_stage() -> None:
    importers = {m: {t for t in targets if t.startswith("stages.")} for m, targets in GRAPH.items()}
    assert {m: t for m, t in importers.items() if t} == {}
