"""The chat format (ta/chat.py): the training template with `{% generation %}` markers renders exactly as the
tokenizer's own, or is refused with a one-line reason."""

from __future__ import annotations

import pytest

from ta import chat
from ta.errors import ChatTemplateError
from tests.helpers import char_tokenizer, sft_rows

CONVERSATIONS = [row["messages"] for row in sft_rows(3, 10)]
LLAMA3 = (
    "{% for message in messages %}{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'"
    " + message['content'] + '<|eot_id|>' }}{% endfor %}"
)


@pytest.fixture(scope="module")
def tokenizer():
    texts = [m["content"] for conversation in CONVERSATIONS for m in conversation]
    return char_tokenizer([*texts, "<>|_dhrt"])


def test_chatml_gets_the_training_template_which_renders_alike(tokenizer) -> None:
    template = chat.training_template(tokenizer, CONVERSATIONS)
    assert template == chat.CHATML_TRAINING_TEMPLATE
    for messages in CONVERSATIONS:  # the first has two assistant turns
        for prompt_only in (False, True):
            convo = messages[:-1] if prompt_only else messages
            kwargs = {"tokenize": False, "add_generation_prompt": prompt_only}
            own = tokenizer.apply_chat_template(convo, **kwargs)
            assert tokenizer.apply_chat_template(convo, chat_template=template, **kwargs) == own


def test_the_training_template_marks_every_assistant_turn(tokenizer) -> None:
    encoded = tokenizer.apply_chat_template(
        CONVERSATIONS[0],
        chat_template=chat.CHATML_TRAINING_TEMPLATE,
        return_assistant_tokens_mask=True,
        return_dict=True,
    )
    pairs = zip(encoded["input_ids"], encoded["assistant_masks"], strict=True)
    marked = "".join(tokenizer.convert_ids_to_tokens(i) for i, in_answer in pairs if in_answer)
    answers = [m["content"] + chat.IM_END for m in CONVERSATIONS[0] if m["role"] == "assistant"]
    assert marked == "".join(answers)


def test_a_template_with_markers_is_used_as_it_is(tokenizer) -> None:
    tokenizer = char_tokenizer(["x"])
    tokenizer.chat_template = chat.CHATML_TRAINING_TEMPLATE.replace("'\\n'", "'\\n\\n'")
    assert chat.training_template(tokenizer, CONVERSATIONS) == tokenizer.chat_template


def test_another_template_without_markers_is_refused_with_the_fix() -> None:
    tokenizer = char_tokenizer(["x"])
    tokenizer.chat_template = LLAMA3
    with pytest.raises(
        ChatTemplateError, match=r"not ChatML and has no \{% generation %\} markers.*Give the tokenizer"
    ):
        chat.training_template(tokenizer, CONVERSATIONS)
