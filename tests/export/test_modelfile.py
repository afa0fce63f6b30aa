"""The Ollama Modelfile (ta/export/modelfile.py): its TEMPLATE, rendered by Go's own text/template (the
`go_template` fixture, as Ollama renders it), gives what the HF chat template renders; its stops end every
reply; what cannot be converted is an error naming the file; without Go the stage writes it unchecked, saying so."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path
from types import SimpleNamespace

import pytest

from ta.config import load_params
from ta.export.modelfile import (
    ModelfileError,
    ollama_values,
    render_hf,
    stop_tokens,
    write_modelfile,
)
from tests.helpers import REPO

SERVE = load_params(REPO / "params.yaml").serve

# The template our tiny tokenizer carries (plain ChatML, no default system prompt).
CHATML = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>'"
    " + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
# Qwen2.5-Instruct's template (tools branch shortened): injects a default system prompt.
QWEN25 = """{%- if tools %}
    {{- '<|im_start|>system\\n' }}{{- 'tools are not probed' }}{{- '<|im_end|>\\n' }}
{%- else %}
    {%- if messages[0]['role'] == 'system' %}
        {{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}
    {%- else %}
        {{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\\n' }}
    {%- endif %}
{%- endif %}
{%- for message in messages %}
    {%- if (message.role == "user") or (message.role == "system" and not loop.first) or (message.role == "assistant" and not message.tool_calls) %}
        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\\n' }}
{%- endif %}
"""  # noqa: E501
LLAMA3 = (
    "{{ bos_token }}{% for message in messages %}{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'"
    " + message['content'] + '<|eot_id|>' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}"
)
SYSTEM = "你是教学助手（TeachingAssistant），一位耐心的老师。"
CONVERSATIONS = [
    [{"role": "user", "content": "什么是线性代数？"}],
    [{"role": "system", "content": "只用英文回答。"}, {"role": "user", "content": "What is 2+2?"}],
    [
        {"role": "user", "content": "3×4=?"},
        {"role": "assistant", "content": "3×4=12\n答案：12"},
        {"role": "user", "content": "那 3×5 呢？"},
    ],
    [
        {"role": "system", "content": "S1"},
        {"role": "user", "content": "q1"},
        {"role": "assistant", "content": "a1"},
        {"role": "user", "content": "q2"},
        {"role": "assistant", "content": "a2"},
        {"role": "user", "content": "q3"},
    ],
]
TOKENS = {"bos_token": "", "eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>", "unk_token": ""}


def as_ollama(go_template, template: str, messages: list[dict[str, str]], modelfile_system: str) -> str:
    """The prompt Ollama builds: the TEMPLATE filled by Go's text/template with what /api/chat hands it."""
    return go_template(template, ollama_values(messages, modelfile_system))


def make_model_dir(root: Path, template: str, *, as_jinja_file: bool = False) -> Path:
    """A model dir as transformers saves it: tokenizer_config.json (+ chat_template.jinja), generation config."""
    model_dir = root / "merged"
    model_dir.mkdir()
    config = {
        "eos_token": "<|endoftext|>",
        "pad_token": "<|endoftext|>",
        "added_tokens_decoder": {
            "3": {"content": "<|endoftext|>", "special": True},
            "4": {"content": "<|im_start|>", "special": True},
            "5": {"content": "<|im_end|>", "special": True},
        },
    }
    if as_jinja_file:
        (model_dir / "chat_template.jinja").write_text(template, encoding="utf-8")
    else:
        config["chat_template"] = template
    (model_dir / "tokenizer_config.json").write_text(json.dumps(config, ensure_ascii=False), encoding="utf-8")
    (model_dir / "generation_config.json").write_text(json.dumps({"eos_token_id": [5, 3]}), encoding="utf-8")
    return model_dir


def parse_modelfile(text: str) -> dict[str, object]:
    """Just enough of Ollama's Modelfile syntax for these tests."""
    return {
        "from": re.search(r"^FROM (.+)$", text, re.MULTILINE).group(1),
        "template": re.search(r'^TEMPLATE """(.*?)"""$', text, re.MULTILINE | re.DOTALL).group(1),
        "system": re.search(r'^SYSTEM """(.*?)"""$', text, re.MULTILINE | re.DOTALL).group(1),
        "stops": re.findall(r'^PARAMETER stop "(.*)"$', text, re.MULTILINE),
        "params": dict(re.findall(r"^PARAMETER (\w+) ([^\"].*)$", text, re.MULTILINE)),
    }


def generate(tmp_path: Path, template: str, **kwargs: bool) -> tuple[Path, dict[str, object]]:
    model_dir = make_model_dir(tmp_path, template, **kwargs)
    out = tmp_path / "models" / "ollama" / "Modelfile"
    gguf = tmp_path / "models" / "gguf" / "teachingassistant-q4_k_m.gguf"
    params = dataclasses.replace(SERVE, temperature=0.3, top_p=0.8, max_model_len=1024, repeat_penalty=1.05)
    write_modelfile(model_dir, gguf, out, SYSTEM, params)
    return out, parse_modelfile(out.read_text(encoding="utf-8"))


@pytest.mark.parametrize("template", [CHATML, QWEN25], ids=["chatml", "qwen2.5"])
@pytest.mark.parametrize("modelfile_system", [SYSTEM, ""], ids=["SYSTEM", "no-SYSTEM"])
def test_go_template_renders_like_hf_template(
    go_template, tmp_path: Path, template: str, modelfile_system: str
) -> None:
    _, modelfile = generate(tmp_path, template)
    for conversation in CONVERSATIONS:
        # what the model sees from HF: the Modelfile SYSTEM stands in for a missing system message
        hf_messages = conversation
        if modelfile_system and conversation[0]["role"] != "system":
            hf_messages = [{"role": "system", "content": modelfile_system}, *conversation]
        expected = render_hf(template, hf_messages, TOKENS)
        assert as_ollama(go_template, modelfile["template"], conversation, modelfile_system) == expected


def test_chatml_prompt_is_exactly_the_contract_format(go_template, tmp_path: Path) -> None:
    _, modelfile = generate(tmp_path, CHATML)
    prompt = as_ollama(go_template, modelfile["template"], [{"role": "user", "content": "q"}], "sys")
    assert prompt == "<|im_start|>system\nsys<|im_end|>\n<|im_start|>user\nq<|im_end|>\n<|im_start|>assistant\n"


def test_qwen_default_system_appears_only_without_system(go_template, tmp_path: Path) -> None:
    _, modelfile = generate(tmp_path, QWEN25)
    bare = as_ollama(go_template, modelfile["template"], [{"role": "user", "content": "q"}], "")
    assert bare.startswith("<|im_start|>system\nYou are Qwen, created by Alibaba Cloud.")
    with_system = as_ollama(go_template, modelfile["template"], [{"role": "user", "content": "q"}], SYSTEM)
    assert "You are Qwen" not in with_system
    assert with_system.startswith(f"<|im_start|>system\n{SYSTEM}<|im_end|>\n")


def test_template_read_from_chat_template_jinja(tmp_path: Path) -> None:
    _, modelfile = generate(tmp_path, CHATML, as_jinja_file=True)
    assert modelfile["template"].startswith("{{ range .Messages }}")


def test_modelfile_from_stops_system_and_parameters(tmp_path: Path) -> None:
    _, modelfile = generate(tmp_path, CHATML)
    assert modelfile["from"] == "../gguf/teachingassistant-q4_k_m.gguf"
    assert modelfile["system"] == SYSTEM
    assert set(modelfile["stops"]) == {"<|im_end|>", "<|endoftext|>", "<|im_start|>"}
    assert len(modelfile["stops"]) == 3
    assert modelfile["params"] == {
        "temperature": "0.3",
        "top_p": "0.8",
        "num_ctx": "1024",
        "repeat_penalty": "1.05",
    }


def test_unknown_template_is_an_error_naming_the_file(tmp_path: Path) -> None:
    with pytest.raises(ModelfileError, match=r"merged/tokenizer_config\.json: chat template is not ChatML"):
        generate(tmp_path, LLAMA3)
    assert not (tmp_path / "models" / "ollama" / "Modelfile").exists()


def test_template_that_raises_is_an_error_naming_the_file(tmp_path: Path) -> None:
    strict = "{% if messages[0]['role'] != 'system' %}{{ raise_exception('system first') }}{% endif %}" + CHATML
    with pytest.raises(ModelfileError, match=r"merged/chat_template\.jinja: .*system first"):
        generate(tmp_path, strict, as_jinja_file=True)


def test_missing_chat_template_is_an_error(tmp_path: Path) -> None:
    model_dir = make_model_dir(tmp_path, CHATML)
    config = json.loads((model_dir / "tokenizer_config.json").read_text())
    del config["chat_template"]
    (model_dir / "tokenizer_config.json").write_text(json.dumps(config))
    with pytest.raises(ModelfileError, match="tokenizer_config.json: no chat_template"):
        write_modelfile(model_dir, tmp_path / "x.gguf", tmp_path / "Modelfile", SYSTEM, SERVE)


def test_endoftext_stops_even_when_eos_is_im_end(tmp_path: Path) -> None:
    model_dir = make_model_dir(tmp_path, CHATML)
    config = json.loads((model_dir / "tokenizer_config.json").read_text())
    config["eos_token"] = "<|im_end|>"
    (model_dir / "tokenizer_config.json").write_text(json.dumps(config))
    (model_dir / "generation_config.json").unlink()
    assert stop_tokens(model_dir) == ["<|im_end|>", "<|im_start|>", "<|endoftext|>"]


def test_generation_eos_outside_the_tokenizer_is_an_error(tmp_path: Path) -> None:
    model_dir = make_model_dir(tmp_path, CHATML)
    (model_dir / "generation_config.json").write_text(json.dumps({"eos_token_id": 99}))
    with pytest.raises(ModelfileError, match="generation_config.json: eos_token_id 99 is not an added token"):
        stop_tokens(model_dir)


def test_the_chains_merged_model_template_matches_transformers(
    go_template, chain: SimpleNamespace, tmp_path: Path
) -> None:
    """On the merged model the pipeline made: the Go template renders what transformers' apply_chat_template
    does, and the stage's own Modelfile points at the quantized file beside it."""
    from ta.models import load_tokenizer

    out = tmp_path / "Modelfile"
    write_modelfile(chain.merged, tmp_path / "q4.gguf", out, SYSTEM, SERVE)
    modelfile = parse_modelfile(out.read_text(encoding="utf-8"))
    tokenizer = load_tokenizer(chain.merged)
    for conversation in CONVERSATIONS:
        messages = (
            conversation
            if conversation[0]["role"] == "system"
            else [{"role": "system", "content": SYSTEM}, *conversation]
        )
        expected = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        assert as_ollama(go_template, modelfile["template"], conversation, SYSTEM) == expected
    assert {"<|im_end|>", "<|endoftext|>", "<|im_start|>"} <= set(modelfile["stops"])

    shipped = parse_modelfile(chain.modelfile.read_text(encoding="utf-8"))
    assert (chain.modelfile.parent / shipped["from"]).resolve() == chain.q4.resolve()
    params = load_params(chain.repo / "params.yaml")
    assert shipped["system"] == params.prepare.system_prompt
    assert shipped["params"]["num_ctx"] == str(params.serve.max_model_len)
