"""The InternLM templates as Jinja: ``template.jinja()``, rendered by transformers, renders what ``text()`` renders.

Generated conversations with tools (the system ``name=<|plugin|>`` turn, actions,
``environment`` results): text and ids with and without the generation prompt, every
prompt, and the loss mask found from the Jinja's rendering. The template reads tool-call
arguments given as a JSON string and writes them again; Jinja cannot read JSON, so the
Jinja is given the arguments as objects (``arguments_as_objects``, the shape transformers
documents and vLLM passes).
"""

import pytest

from tuneforge.testing import registry
from tuneforge.testing.reference import Conversation, Official, arguments_as_objects, check_against_official, conversations

CASES = conversations(seed=71, count=50, tools=True)


def build(manager, name, tokenizer):
    return registry(manager).get("chat_templates", name).build(tokenizer)


def own_jinja(template) -> Official:
    return Official(template.tokenizer, template.jinja(), template.chat_template_kwargs, prepare=arguments_as_objects)


@pytest.mark.parametrize("name", ["internlm2", "internlm3"])
def test_the_jinja_renders_as_the_template(manager, internlm_tokenizer, name):
    template = build(manager, name, internlm_tokenizer)
    assert template.chat_template_kwargs == {}
    assert template.jinja().startswith('{{- "<s>" }}')
    assert [check_against_official(template, own_jinja(template), case) for case in CASES] == ["renders"] * len(CASES)


@pytest.mark.parametrize("messages", [
    [{"role": "user", "content": None}, {"role": "assistant", "content": "Hi"}],
    [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": None}],
    [{"role": "system", "content": None}, {"role": "user", "content": "Hi"}],
    [{"role": "user", "content": "Hi"}, {"role": "tool"}],
    [{"role": "user", "content": "Hi"}, {"role": "critic", "content": "Hm"}],
], ids=["user", "assistant", "system", "tool", "role"])
def test_the_jinja_fails_where_the_template_refuses(manager, internlm_tokenizer, messages):
    template = build(manager, "internlm2", internlm_tokenizer)
    assert check_against_official(template, own_jinja(template), Conversation(messages)).startswith("raises")


@pytest.mark.parametrize("name", ["internlm2", "internlm3"])
def test_a_tokenizer_saved_with_the_template_passes_the_parity_check(manager, internlm_tokenizer, tmp_path, name):
    from transformers import AutoTokenizer

    from tuneforge.api import compare_with_chat_template, parity_probes, save_with_chat_template

    template = build(manager, name, internlm_tokenizer)
    save_with_chat_template(internlm_tokenizer, template, tmp_path)
    report = compare_with_chat_template(template, AutoTokenizer.from_pretrained(tmp_path), parity_probes(), name=name)
    assert report.ok and not report.left_out, report.describe()
