"""A renderer for the small subset of Go's text/template that our Ollama TEMPLATE uses.

Ollama renders a Modelfile TEMPLATE with Go's text/template. The quantize stage checks, before it writes a
Modelfile, that the TEMPLATE renders what the HF jinja template does for the same conversations; it renders
through this module so that the pipeline needs no Go. The tests check this renderer against Go's own
text/template (tools/gotemplate/main.go, built with Debian's Go) on the same templates and values.
Supported: text, `{{ .Field }}`, `{{ $.Field }}`, `{{ range .List }}…{{ end }}`,
`{{ if [not] .Field }}…{{ else }}…{{ end }}` and the `{{-`/`-}}` whitespace trim markers. Anything else
raises GoTemplateError, so a template outside the subset is never rendered wrongly.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

ACTION = re.compile(r"{{(-\s)?\s*(.*?)\s*(\s-)?}}", re.DOTALL)


class GoTemplateError(ValueError):
    """The template uses Go template syntax outside the supported subset."""


@dataclass
class _Node:
    kind: str  # "text" | "field" | "range" | "if"
    arg: str = ""
    negate: bool = False
    body: list[_Node] = field(default_factory=list)
    orelse: list[_Node] = field(default_factory=list)


def render(template: str, data: dict[str, Any]) -> str:
    """Render `template` with `data` (the root `.`), as Go's text/template would for this subset."""
    nodes, rest = _parse(_tokens(template), stop=())
    if rest is not None:
        raise GoTemplateError(f"unexpected {{{{ {rest} }}}}")
    return _run(nodes, data, data)


def _tokens(template: str) -> list[tuple[str, str]]:
    """Split into ("text", s) and ("action", s) tokens, applying the trim markers to neighbouring text."""
    tokens: list[tuple[str, str]] = []
    pos = 0
    trim_next = False
    for match in ACTION.finditer(template):
        text = template[pos : match.start()]
        if trim_next:
            text = text.lstrip()
        if match.group(1):
            text = text.rstrip()
        tokens.append(("text", text))
        tokens.append(("action", match.group(2)))
        trim_next = bool(match.group(3))
        pos = match.end()
    tail = template[pos:]
    tokens.append(("text", tail.lstrip() if trim_next else tail))
    return tokens


def _parse(tokens: list[tuple[str, str]], stop: tuple[str, ...]) -> tuple[list[_Node], str | None]:
    """Consume tokens up to one of the `stop` keywords; return the nodes and the keyword that ended them."""
    nodes: list[_Node] = []
    while tokens:
        kind, value = tokens.pop(0)
        if kind == "text":
            if value:
                nodes.append(_Node("text", value))
            continue
        words = value.split()
        if value in stop:
            return nodes, value
        if len(words) == 1 and _is_field(words[0]):
            nodes.append(_Node("field", words[0]))
        elif len(words) == 2 and words[0] == "range" and _is_field(words[1]):
            body, end = _parse(tokens, stop=("end",))
            _expect(end, "end", value)
            nodes.append(_Node("range", words[1], body=body))
        elif words[0] == "if" and (
            (len(words) == 2 and _is_field(words[1])) or (len(words) == 3 and words[1] == "not" and _is_field(words[2]))
        ):
            body, end = _parse(tokens, stop=("else", "end"))
            orelse: list[_Node] = []
            if end == "else":
                orelse, end = _parse(tokens, stop=("end",))
            _expect(end, "end", value)
            nodes.append(_Node("if", words[-1], negate=len(words) == 3, body=body, orelse=orelse))
        else:
            raise GoTemplateError(f"unsupported action {{{{ {value} }}}}")
    return nodes, None


def _is_field(word: str) -> bool:
    return re.fullmatch(r"\$?\.[A-Za-z_]\w*", word) is not None


def _expect(found: str | None, wanted: str, opened: str) -> None:
    if found != wanted:
        raise GoTemplateError(f"{{{{ {opened} }}}} is not closed by {{{{ {wanted} }}}}")


def _lookup(name: str, dot: Any, root: dict[str, Any]) -> Any:
    scope = root if name.startswith("$") else dot
    key = name.lstrip("$.")
    if not isinstance(scope, dict) or key not in scope:
        raise GoTemplateError(f"no field {name} in {type(scope).__name__}")
    return scope[key]


def _run(nodes: list[_Node], dot: Any, root: dict[str, Any]) -> str:
    out: list[str] = []
    for node in nodes:
        if node.kind == "text":
            out.append(node.arg)
        elif node.kind == "field":
            out.append(str(_lookup(node.arg, dot, root)))
        elif node.kind == "range":
            for item in _lookup(node.arg, dot, root) or []:
                out.append(_run(node.body, item, root))
        else:  # "if": Go's truth is "not the zero value": "", 0, None, empty list/map are false
            truth = bool(_lookup(node.arg, dot, root)) != node.negate
            out.append(_run(node.body if truth else node.orelse, dot, root))
    return "".join(out)
