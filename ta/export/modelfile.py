"""Generate the Ollama Modelfile from the tokenizer's own chat template.

Reads the chat template of a model dir (`chat_template.jinja`, or `chat_template` in
`tokenizer_config.json`), its special tokens and `generation_config.json`; writes a Modelfile that points
`FROM` the quantized GGUF (path relative to the Modelfile), with a Go `TEMPLATE` equivalent to the HF
template, a `PARAMETER stop` for every end token, the teaching-assistant `SYSTEM` prompt and the sampling
params of the `serve` section.

The template is identified by rendering it with jinja2 (as transformers does) for probe conversations, not
by matching its text: Qwen, ChatML and our tiny tokenizer spell the same format differently. Only
ChatML-style templates (optionally with a default system prompt, as Qwen2.5's) are recognised; any other
template is an error naming the file, never a silently wrong Modelfile. Before writing, every probe is
rendered both ways (HF jinja, and the Go template filled by Go's own text/template as Ollama fills it:
ta/export/gorender.py) and must give the same string; where Go is not installed, that check is skipped with a
warning (the tests always run it).

    python -m serve.modelfile [--model-dir models/merged] [--gguf …q4_k_m.gguf] [--out models/ollama/Modelfile]
"""

from __future__ import annotations

import json
import logging
import os
import re
from datetime import datetime
from pathlib import Path
from typing import Any

from ta.config import Serve
from ta.errors import ExportError
from ta.export import gorender

log = logging.getLogger(__name__)

IM_START, IM_END, ENDOFTEXT = "<|im_start|>", "<|im_end|>", "<|endoftext|>"
# Ollama's template: system messages stay in .Messages (and are also joined into .System), so one range
# renders every turn; Ollama always asks for a reply, hence the trailing assistant header.
CHATML_GO = "{{ range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n{{ end }}<|im_start|>assistant\n"
PROBES: list[list[dict[str, str]]] = [
    [{"role": "user", "content": "什么是线性代数？"}],
    [{"role": "system", "content": "你是教学助手。"}, {"role": "user", "content": "1+1=?\n请一步一步算。"}],
    [
        {"role": "system", "content": "S"},
        {"role": "user", "content": "第一问"},
        {"role": "assistant", "content": "第一答\n两行"},
        {"role": "user", "content": "第二问"},
    ],
    [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello"},
        {"role": "user", "content": "again"},
    ],
]


class ModelfileError(ExportError):
    """The chat template or tokenizer files cannot be turned into a correct Modelfile."""


def read_chat_template(model_dir: Path) -> tuple[str, Path]:
    """The HF chat template of `model_dir` and the file it came from."""
    jinja_file = model_dir / "chat_template.jinja"
    if jinja_file.is_file():
        return jinja_file.read_text(encoding="utf-8"), jinja_file
    config_file = model_dir / "tokenizer_config.json"
    template = _tokenizer_config(model_dir).get("chat_template")
    if isinstance(template, list):  # named templates: [{"name": "default", "template": "..."}, ...]
        template = next((t["template"] for t in template if t.get("name") == "default"), None)
    if not isinstance(template, str) or not template:
        raise ModelfileError(f"{config_file}: no chat_template (and no {jinja_file.name}); save the tokenizer with one")
    return template, config_file


def render_hf(template: str, messages: list[dict[str, str]], special_tokens: dict[str, str]) -> str:
    """Render an HF chat template as transformers' apply_chat_template does (same jinja2 environment)."""
    import jinja2
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message: str) -> None:
        raise jinja2.TemplateError(message)

    def tojson(
        x: Any,
        ensure_ascii: bool = False,
        indent: int | None = None,
        separators: Any = None,
        sort_keys: bool = False,
    ) -> str:
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    return env.from_string(template).render(messages=messages, add_generation_prompt=True, **special_tokens)


def ollama_values(messages: list[dict[str, str]], modelfile_system: str) -> dict[str, Any]:
    """What Ollama's /api/chat hands the template: the Modelfile SYSTEM is prepended when the request has
    no leading system message; consecutive same-role messages are merged with a blank line; .System is
    all system contents joined (ollama server/routes.go ChatHandler, template/template.go collate)."""
    messages = _with_system(messages, modelfile_system)
    collated: list[dict[str, str]] = []
    for message in messages:
        if collated and collated[-1]["role"] == message["role"]:
            collated[-1] = {**collated[-1], "content": collated[-1]["content"] + "\n\n" + message["content"]}
        else:
            collated.append({"role": message["role"], "content": message["content"]})
    system = "\n\n".join(m["content"] for m in messages if m["role"] == "system")
    return {"System": system, "Messages": [{"Role": m["role"], "Content": m["content"]} for m in collated]}


def ollama_prompt(go_template: str, messages: list[dict[str, str]], modelfile_system: str) -> str:
    """The prompt Ollama would build for `messages` from a Modelfile's TEMPLATE and SYSTEM."""
    values = ollama_values(messages, modelfile_system)
    return gorender.render(go_template, values)


def chatml(messages: list[dict[str, str]], default_system: str | None) -> str:
    """Reference ChatML rendering with a generation prompt (and the template's default system, if any)."""
    messages = _with_system(messages, default_system)
    turns = "".join(f"{IM_START}{m['role']}\n{m['content']}{IM_END}\n" for m in messages)
    return turns + f"{IM_START}assistant\n"


def go_template_for(template: str, source: Path, special_tokens: dict[str, str]) -> str:
    """The Ollama Go TEMPLATE equivalent to the HF `template`; ModelfileError if it is not ChatML-style."""
    try:
        rendered = [render_hf(template, probe, special_tokens) for probe in PROBES]
    except Exception as err:  # a template that cannot even render our probes is not one we know
        raise ModelfileError(f"{source}: chat template fails on a plain conversation: {err}") from err
    default_system = _default_system(rendered[0], PROBES[0])
    for probe, text in zip(PROBES, rendered, strict=True):
        if text != chatml(probe, default_system):
            raise ModelfileError(
                f"{source}: chat template is not ChatML/Qwen-style (it renders {text[:120]!r}); "
                "write the Ollama TEMPLATE by hand or teach ta/export/modelfile.py this format"
            )
    if default_system is None:
        return CHATML_GO
    if "{{" in default_system or '"""' in default_system:
        raise ModelfileError(f"{source}: default system prompt {default_system!r} cannot go into a Go template")
    return f"{{{{ if not .System }}}}{IM_START}system\n{default_system}{IM_END}\n{{{{ end }}}}" + CHATML_GO


def _default_system(text: str, probe: list[dict[str, str]]) -> str | None:
    """The system prompt a template inserts when the conversation has none (Qwen2.5 does), or None."""
    plain = chatml(probe, None)
    if text == plain or not text.endswith(plain):
        return None
    match = re.fullmatch(rf"{re.escape(IM_START)}system\n(.*){re.escape(IM_END)}\n", text[: -len(plain)], re.DOTALL)
    return match.group(1) if match else None


def special_tokens(model_dir: Path) -> dict[str, str]:
    """bos/eos/pad/unk token strings from tokenizer_config.json, as apply_chat_template passes them."""
    config = _tokenizer_config(model_dir)
    tokens = {}
    for name in ("bos_token", "eos_token", "pad_token", "unk_token"):
        value = config.get(name)
        if isinstance(value, dict):  # older transformers save {"content": "...", ...}
            value = value.get("content")
        tokens[name] = value or ""
    return tokens


def stop_tokens(model_dir: Path) -> list[str]:
    """Every token that must end a reply: the ChatML markers, the tokenizer's eos, generation_config's eos
    ids (looked up in the added tokens) and <|endoftext|> if the tokenizer has it; in order, no repeats."""
    id_to_token = _added_tokens(model_dir)
    stops = [IM_END, IM_START, special_tokens(model_dir)["eos_token"]]
    gen_file = model_dir / "generation_config.json"
    if gen_file.is_file():
        eos_ids = json.loads(gen_file.read_text(encoding="utf-8")).get("eos_token_id")
        for token_id in eos_ids if isinstance(eos_ids, list) else [eos_ids]:
            if token_id is not None:
                if token_id not in id_to_token:
                    raise ModelfileError(f"{gen_file}: eos_token_id {token_id} is not an added token of the tokenizer")
                stops.append(id_to_token[token_id])
    if ENDOFTEXT in id_to_token.values():  # the document end: a model that emits it has finished too
        stops.append(ENDOFTEXT)
    return list(dict.fromkeys(s for s in stops if s))


def write_modelfile(model_dir: Path, gguf_path: Path, out_path: Path, system: str, params: Serve) -> None:
    """Write the Ollama Modelfile for the GGUF at `gguf_path`, its template taken from `model_dir`."""
    template, source = read_chat_template(model_dir)
    tokens = special_tokens(model_dir)
    go_template = go_template_for(template, source, tokens)
    checked = gorender.available()
    if not checked:
        log.warning(
            "Go is not installed: the TEMPLATE was not rendered by Go's text/template to check it (the tests do)"
        )
    for probe in PROBES if checked else ():  # the check that ships with the file: both renderings agree
        for modelfile_system in (system, ""):
            expected = render_hf(template, _with_system(probe, modelfile_system), tokens)
            if ollama_prompt(go_template, probe, modelfile_system) != expected:
                raise ModelfileError(f"{source}: generated Ollama TEMPLATE differs from the HF template on {probe!r}")
    if '"""' in system:
        raise ModelfileError('serve: the system prompt cannot contain """ (Modelfile quoting)')
    lines = [
        f"# Generated by serve/modelfile.py from {source}; regenerate instead of editing.",
        f"# ollama create {params.ollama_model} -f {out_path}",
        f"FROM {Path(os.path.relpath(gguf_path, out_path.parent)).as_posix()}",
        "",
        f'TEMPLATE """{go_template}"""',
        "",
        f'SYSTEM """{system}"""',
        "",
        *(f'PARAMETER stop "{stop}"' for stop in stop_tokens(model_dir)),
        f"PARAMETER temperature {params.temperature}",
        f"PARAMETER top_p {params.top_p}",
        f"PARAMETER num_ctx {params.max_model_len}",
        f"PARAMETER repeat_penalty {params.repeat_penalty}",
    ]
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    log.info("wrote %s", out_path)


def _with_system(messages: list[dict[str, str]], system: str | None) -> list[dict[str, str]]:
    """`messages` with `system` in front unless they open with a system message (or system is empty)."""
    if system and (not messages or messages[0]["role"] != "system"):
        return [{"role": "system", "content": system}, *messages]
    return messages


def _tokenizer_config(model_dir: Path) -> dict[str, Any]:
    config_file = model_dir / "tokenizer_config.json"
    if not config_file.is_file():
        raise ModelfileError(f"{config_file}: not found (is {model_dir} a model dir with its tokenizer files?)")
    return json.loads(config_file.read_text(encoding="utf-8"))


def _added_tokens(model_dir: Path) -> dict[int, str]:
    """id -> text of the added/special tokens (tokenizer_config.json and/or tokenizer.json)."""
    tokens = {int(i): t["content"] for i, t in _tokenizer_config(model_dir).get("added_tokens_decoder", {}).items()}
    tokenizer_json = model_dir / "tokenizer.json"
    if tokenizer_json.is_file():
        for token in json.loads(tokenizer_json.read_text(encoding="utf-8")).get("added_tokens", []):
            tokens.setdefault(int(token["id"]), token["content"])
    return tokens
