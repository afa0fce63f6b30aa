"""Go's own text/template (ta/export/gorender.py, tools/gotemplate): built once, rendering as Ollama does, its
errors one line; without Go, quantize writes the Modelfile unchecked and says so."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from ta.export import gorender


@pytest.mark.parametrize(
    ("template", "data", "rendered"),
    [
        ("a  {{- .X -}}  b", {"X": 1}, "a1b"),  # trim markers eat the white space on their side
        ("a {{ .X }} b", {"X": 1}, "a 1 b"),
        ("{{ if not .X }}none{{ else }}{{ .X }}{{ end }}", {"X": ""}, "none"),
        ("{{ if .X }}a{{ else if .Y }}b{{ end }}", {"X": "", "Y": "1"}, "b"),
        ("{{ range $i, $m := .Items }}{{ $i }}={{ $m }};{{ end }}", {"Items": ["p", "q"]}, "0=p;1=q;"),
        ("{{ len .Items }}", {"Items": [1, 2, 3]}, "3"),
        (
            "{{ range .Rows }}{{ range .Cells }}[{{ .V }}{{ $.Sep }}]{{ end }}{{ end }}",
            {"Rows": [{"Cells": [{"V": 1}, {"V": 2}]}], "Sep": ";"},
            "[1;][2;]",
        ),
    ],
)
def test_go_renders(go_template, template: str, data: dict, rendered: str) -> None:
    assert go_template(template, data) == rendered


@pytest.mark.parametrize(
    ("template", "message"),
    [("{{ end }}", "unexpected {{end}}"), ("{{ range .Items }}x", "unexpected EOF"), ("{{ .Nope }}", "Nope")],
)
def test_a_template_go_refuses_is_one_line(go_template, template: str, message: str) -> None:
    with pytest.raises(gorender.GoTemplateError, match=message) as raised:
        go_template(template, {"Items": []})
    assert "\n" not in str(raised.value)


def test_the_renderer_is_rebuilt_when_its_source_is_newer(go_template, tmp_path: Path, monkeypatch) -> None:
    go_template("{{ .X }}", {"X": 1})  # built
    built = gorender.BINARY.stat().st_mtime
    source = tmp_path / "gotemplate"
    source.mkdir()
    for part in gorender.SOURCE.iterdir():
        (source / part.name).write_bytes(part.read_bytes())
    monkeypatch.setattr(gorender, "SOURCE", source)
    monkeypatch.setattr(gorender, "BINARY", tmp_path / "bin" / "ta-gotemplate")
    (tmp_path / "bin").mkdir()
    assert gorender.render("{{ .X }}", {"X": 2}) == "2" and gorender.BINARY.is_file()
    os.utime(source / "main.go", (built + 10**6, built + 10**6))
    first = gorender.BINARY.stat().st_mtime_ns
    assert gorender.render("{{ .X }}", {"X": 3}) == "3"
    assert gorender.BINARY.stat().st_mtime_ns != first


def test_without_go_the_modelfile_is_written_unchecked_with_a_warning(tmp_path: Path, monkeypatch, caplog) -> None:
    from ta.config import load_params
    from ta.export.modelfile import write_modelfile
    from tests.export.test_modelfile import CHATML, make_model_dir
    from tests.helpers import REPO

    monkeypatch.setattr(gorender, "BINARY", tmp_path / "no-such-binary")
    monkeypatch.setenv("PATH", str(tmp_path))  # no go
    assert not gorender.available()
    with pytest.raises(gorender.GoTemplateError, match="Go is not installed"):
        gorender.render("{{ .X }}", {"X": 1})
    model_dir = make_model_dir(tmp_path, CHATML)
    out = tmp_path / "Modelfile"
    with caplog.at_level(logging.WARNING):
        write_modelfile(model_dir, tmp_path / "m.gguf", out, "你是助教。", load_params(REPO / "params.yaml").serve)
    assert "TEMPLATE was not rendered by Go" in caplog.text
    assert 'TEMPLATE """' in out.read_text(encoding="utf-8")
