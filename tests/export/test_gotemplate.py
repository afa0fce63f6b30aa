"""The subset of Go's text/template that Ollama templates use (ta/export/gotemplate.py), rendered in Python and
checked against Go's own text/template (the `go_template` fixture); what lies outside the subset is refused."""

from __future__ import annotations

import pytest

from ta.export import gotemplate


def test_go_renderer_subset(go_template) -> None:
    template = (
        "{{- if not .System }}none{{ else }}[{{ .System }}]{{ end -}}  \n"
        "{{ range .Items }}<{{ .A }}|{{ $.System }}>{{ end }}"
    )
    data = {"System": "s", "Items": [{"A": 1}, {"A": 2}]}
    assert gotemplate.render(template, data) == go_template(template, data) == "[s]<1|s><2|s>"
    assert gotemplate.render(template, {"System": "", "Items": []}) == "none"
    assert go_template(template, {"System": "", "Items": []}) == "none"
    with pytest.raises(gotemplate.GoTemplateError, match="unsupported action"):
        gotemplate.render("{{ len .Items }}", data)
    with pytest.raises(gotemplate.GoTemplateError, match="not closed"):
        gotemplate.render("{{ range .Items }}x", data)


@pytest.mark.parametrize(
    ("template", "data", "rendered"),
    [
        ("a  {{- .X -}}  b", {"X": 1}, "a1b"),  # trim markers eat the white space on their side
        ("a {{ .X }} b", {"X": 1}, "a 1 b"),
        ("{{ if not .X }}none{{ else }}{{ .X }}{{ end }}", {"X": ""}, "none"),
        (
            "{{ range .Rows }}{{ range .Cells }}[{{ .V }}{{ $.Sep }}]{{ end }}{{ end }}",
            {"Rows": [{"Cells": [{"V": 1}, {"V": 2}]}], "Sep": ";"},
            "[1;][2;]",
        ),
    ],
)
def test_go_actions(go_template, template: str, data: dict, rendered: str) -> None:
    assert gotemplate.render(template, data) == go_template(template, data) == rendered


@pytest.mark.parametrize(
    "template",
    ["{{ if .X }}a{{ else if .Y }}b{{ end }}", "{{ range $i, $m := .Items }}{{ end }}", "{{ .X | len }}", "{{ end }}"],
)
def test_anything_outside_the_subset_is_refused_not_guessed(template: str) -> None:
    with pytest.raises(gotemplate.GoTemplateError):
        gotemplate.render(template, {"X": "1", "Y": "", "Items": []})
