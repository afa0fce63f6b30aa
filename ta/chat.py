"""Chat format shared by the stages: the ChatML template and its end tokens.

The tiny tokenizer ships `CHATML_TEMPLATE`, the same layout as Qwen2/Qwen2.5 when a system prompt is
given. Training on assistant tokens only needs `{% generation %}` markers (transformers returns an
assistant mask from them), but llama.cpp and Ollama cannot parse that tag, so the saved tokenizers keep
the plain template and SFT swaps in `training_template()` — checked to render identically.
"""

from __future__ import annotations

from typing import Any

from ta.errors import ChatTemplateError

IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
END_OF_TEXT = "<|endoftext|>"
SPECIAL_TOKENS = [END_OF_TEXT, IM_START, IM_END]

CHATML_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\\n' }}{%- endif -%}"
)

CHATML_TRAINING_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'assistant' -%}"
    "{{ '<|im_start|>assistant\\n' }}{% generation %}{{ message['content'] + '<|im_end|>' }}{% endgeneration %}"
    "{{ '\\n' }}"
    "{%- else -%}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\\n' }}{%- endif -%}"
)


def training_template(tokenizer: Any, probe_conversations: list[list[dict[str, str]]]) -> str:
    """Return a chat template with `{% generation %}` markers that renders like the tokenizer's own.

    A template that already has the markers is used as it is. Otherwise the ChatML training template is
    used if, and only if, it renders every probe conversation exactly as the tokenizer's template does.
    """
    own = tokenizer.chat_template
    if own and "{% generation %}" in own:
        return own
    for messages in probe_conversations:
        for prompt_only in (False, True):
            convo = messages[:-1] if prompt_only else messages
            kwargs = {"tokenize": False, "add_generation_prompt": prompt_only}
            expected = tokenizer.apply_chat_template(convo, **kwargs)
            got = tokenizer.apply_chat_template(convo, chat_template=CHATML_TRAINING_TEMPLATE, **kwargs)
            if got != expected:
                raise ChatTemplateError(
                    "the base tokenizer's chat template is not ChatML and has no {% generation %} markers; "
                    "assistant-only loss cannot be computed. Give the tokenizer a template with "
                    f"{{% generation %}} markers. First difference on: {convo!r}"
                )
    return CHATML_TRAINING_TEMPLATE
