"""The core's named templates against reference renderings by transformers, over generated conversations.

- ``chatml`` against the ChatML loop of the official InternLM2.5 template (the
  reference folder's ``internlm2_5-7b-chat.jinja``) with an empty ``bos_token``: the
  ChatML turns and nothing else, as the generic ChatML template writes them.
- ``llama3`` against the Llama 3 Instruct format. The reference folder holds no Llama
  3 template, so the expected rendering is the well-known ``chat_template`` of
  Meta-Llama-3-8B-Instruct, written below from its documented layout: ``bos_token``,
  then per message ``<|start_header_id|>role<|end_header_id|>\\n\\n`` + the trimmed
  content + ``<|eot_id|>``, and the assistant header as the generation prompt.

Neither reference knows tools (Llama 3.1's tool layout is a different template), so
the conversations carry none. The Qwen and InternLM plugins hold their own reference
tests (plugins/*/tests/test_*_reference.py), on the same generated conversations.
"""

import pytest

from tuneforge.templates import get_template
from tuneforge.testing.reference import Official, check_against_official, conversations, official_template

LLAMA3_INSTRUCT = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}"
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'+ message['content'] | trim + '<|eot_id|>' %}"
    "{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}"
)
LLAMA3_TOKENS = ["<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]

CASES = conversations(seed=11, count=120, tools=False)


@pytest.fixture(scope="module")
def llama3_tokenizer(smollm2_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(smollm2_dir)
    tokenizer.add_tokens(LLAMA3_TOKENS, special_tokens=True)
    return tokenizer


def test_chatml_matches_the_chatml_turns_of_an_official_template(smollm2_tokenizer):
    official = Official(smollm2_tokenizer, official_template("internlm2_5-7b-chat.jinja"), {"bos_token": ""})
    template = get_template("chatml", smollm2_tokenizer)
    assert [check_against_official(template, official, case) for case in CASES] == ["renders"] * len(CASES)


def test_llama3_matches_the_llama3_instruct_format(llama3_tokenizer):
    official = Official(llama3_tokenizer, LLAMA3_INSTRUCT, {"bos_token": "<|begin_of_text|>"})
    template = get_template("llama3", llama3_tokenizer)
    assert [check_against_official(template, official, case) for case in CASES] == ["renders"] * len(CASES)


@pytest.mark.parametrize("messages", [
    [{"role": "user", "content": None}, {"role": "assistant", "content": "Hi"}],
    [{"role": "system", "content": None}, {"role": "user", "content": "Hi"}],
], ids=["user", "system"])
def test_where_the_chatml_reference_fails_chatml_raises_a_sentence(smollm2_tokenizer, messages):
    from tuneforge.testing.reference import Conversation

    official = Official(smollm2_tokenizer, official_template("internlm2_5-7b-chat.jinja"), {"bos_token": ""})
    assert check_against_official(get_template("chatml", smollm2_tokenizer), official, Conversation(messages)).startswith("raises")


def test_llama3_renders_a_missing_content_as_its_format_does(llama3_tokenizer):
    """Llama 3's template reads a missing content as empty text, and so does the llama3 template."""
    from tuneforge.testing.reference import Conversation

    official = Official(llama3_tokenizer, LLAMA3_INSTRUCT, {"bos_token": "<|begin_of_text|>"})
    messages = [{"role": "user", "content": None}, {"role": "assistant", "content": "Hi"}]
    assert check_against_official(get_template("llama3", llama3_tokenizer), official, Conversation(messages)) == "renders"


def test_the_comparison_finds_a_missing_newline_and_a_wrong_loss_mask(smollm2_tokenizer):
    """The checker itself: a template one newline off, or one that learns its role headers, is caught."""
    import dataclasses

    from tuneforge.templates import CHATML, TurnTemplate
    from tuneforge.testing.reference import Conversation

    official = Official(smollm2_tokenizer, official_template("internlm2_5-7b-chat.jinja"), {"bos_token": ""})
    case = Conversation([{"role": "system", "content": ""}, {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}])
    no_newline = dataclasses.replace(CHATML, name="no-newline", separator="").build(smollm2_tokenizer)
    with pytest.raises(AssertionError):
        check_against_official(no_newline, official, case)

    class LearnsHeaders(TurnTemplate):
        def render(self, messages, tools=None, add_generation_prompt=False):
            return [(text, learned or text == "<|im_start|>assistant\n") for text, learned in super().render(messages, tools, add_generation_prompt)]

    with pytest.raises(AssertionError, match="loss mask differs"):
        check_against_official(LearnsHeaders(smollm2_tokenizer, CHATML), official, case)
    assert check_against_official(get_template("chatml", smollm2_tokenizer), official, case) == "renders"
