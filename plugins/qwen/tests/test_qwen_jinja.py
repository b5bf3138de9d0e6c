"""Every Qwen template as Jinja: ``template.jinja()``, rendered by transformers, renders what ``text()`` renders.

Generated conversations with tools (and reasoning for Qwen3), thinking unset, on and off:
text and ids with and without the generation prompt, every prompt, and the loss mask
found from the Jinja's rendering. Qwen2 and Qwen2.5 read tool-call arguments given as a
JSON string and write them again; Jinja cannot read JSON, so for them the Jinja is given
the arguments as objects (``arguments_as_objects``, the shape transformers documents and
vLLM passes). Qwen3 keeps such a string as it is, and so does its Jinja: no preparation.
"""

import pytest

from tuneforge.testing import registry
from tuneforge.testing.reference import (
    Conversation,
    Official,
    arguments_as_objects,
    check_against_official,
    conversations,
    without_think_blocks,
)

PLAIN = conversations(seed=52, count=50, tools=True)
REASONING = conversations(seed=53, count=60, tools=True, reasoning=True)


def build(manager, name, tokenizer):
    return registry(manager).get("chat_templates", name).build(tokenizer)


def own_jinja(template, **kwargs) -> Official:
    prepare = None if template.reasoning else arguments_as_objects
    return Official(template.tokenizer, template.jinja(), {**template.chat_template_kwargs, **kwargs}, prepare=prepare)


@pytest.mark.parametrize("name", ["qwen2", "qwen2_5"])
def test_qwen2_jinja_renders_as_the_template(manager, qwen_tokenizer, name):
    template = build(manager, name, qwen_tokenizer)
    assert template.chat_template_kwargs == {}
    assert [check_against_official(template, own_jinja(template), case) for case in PLAIN] == ["renders"] * len(PLAIN)


@pytest.mark.parametrize("thinking", [None, True, False], ids=["thinking-unset", "thinking-on", "thinking-off"])
def test_qwen3_jinja_renders_as_the_template(manager, qwen_tokenizer, thinking):
    template = build(manager, "qwen3", qwen_tokenizer)
    assert template.chat_template_kwargs == {}
    official = own_jinja(template) if thinking is None else own_jinja(template, enable_thinking=thinking)
    options = {} if thinking is None else {"options": {"enable_thinking": thinking}, "encode": thinking}
    outcomes = [check_against_official(template, official, case, **options) for case in REASONING]
    assert outcomes == ["renders"] * len(REASONING)


@pytest.mark.parametrize("thinking", [None, True, False], ids=["thinking-unset", "thinking-on", "thinking-off"])
def test_qwen3_nothink_jinja_renders_as_the_template_with_thinking_off_by_default(manager, qwen_tokenizer, thinking):
    template = build(manager, "qwen3-nothink", qwen_tokenizer)
    assert template.chat_template_kwargs == {"enable_thinking": False}
    official = own_jinja(template) if thinking is None else own_jinja(template, enable_thinking=thinking)
    # Its generation prompt ends with the empty <think> block, which a turn that keeps its reasoning does not open with.
    header = own_jinja(template, enable_thinking=True)
    cases = REASONING if thinking is None else REASONING[:25]
    options = {} if thinking is None else {"options": {"enable_thinking": thinking}, "encode": False}
    outcomes = [check_against_official(template, official, case, header=header, **options) for case in cases]
    assert outcomes == ["renders"] * len(cases)
    # Its Jinja, without any argument, prompts for a direct answer.
    prompt = official.render([{"role": "user", "content": "Hi"}], add_generation_prompt=True)
    assert prompt.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n") == (thinking is not True)


def test_qwen3_answer_only_jinja_renders_as_the_template(manager, qwen_tokenizer):
    template = build(manager, "qwen3-answer-only", qwen_tokenizer)
    assert template.chat_template_kwargs == {}
    outcomes = [check_against_official(template, own_jinja(template), case, learned=without_think_blocks) for case in REASONING[:30]]
    assert outcomes == ["renders"] * 30


# Where the template refuses a conversation (a content that is not text where the official template concatenates it).
REFUSED = [
    ("qwen2", [{"role": "user", "content": None}, {"role": "assistant", "content": "Hi"}]),
    ("qwen2_5", [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": None}]),
    ("qwen2_5", [{"role": "system", "content": None}, {"role": "user", "content": "Hi"}]),
    ("qwen2_5", [{"role": "user", "content": "Hi"}, {"role": "tool", "content": None}]),
    ("qwen3", [{"role": "system", "content": None}, {"role": "user", "content": "Hi"}]),
    ("qwen3-nothink", [{"role": "system"}, {"role": "user", "content": "Hi"}]),
    ("qwen3", [{"role": "user", "content": "Hi"}, {"role": "critic", "content": "Hm"}]),
    ("qwen2_5", [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "", "tool_calls": [{"function": {"arguments": {}}}]}]),
]
# And where Qwen3 reads it as empty text, as its official template does.
READ_AS_EMPTY = [
    ("qwen3", [{"role": "user", "content": None}, {"role": "assistant", "content": None}]),
    ("qwen3-answer-only", [{"role": "system", "content": "S"}, {"role": "system", "content": None}, {"role": "user", "content": "Hi"}]),
    ("qwen2_5", [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": None, "tool_calls": [{"function": {"name": "f", "arguments": {}}}]}]),
]


@pytest.mark.parametrize("name, messages", REFUSED + READ_AS_EMPTY, ids=[f"{n}-{k}" for k, (n, _) in enumerate(REFUSED + READ_AS_EMPTY)])
def test_the_jinja_fails_where_the_template_refuses(manager, qwen_tokenizer, name, messages):
    template = build(manager, name, qwen_tokenizer)
    outcome = check_against_official(template, own_jinja(template), Conversation(messages))
    assert outcome.startswith("raises") == ((name, messages) in REFUSED)


@pytest.mark.parametrize("name", ["qwen2", "qwen2_5", "qwen3", "qwen3-nothink", "qwen3-answer-only"])
def test_a_tokenizer_saved_with_the_template_passes_the_parity_check(manager, qwen_tokenizer, tmp_path, name):
    from transformers import AutoTokenizer

    from tuneforge.api import compare_with_chat_template, parity_probes, save_with_chat_template

    template = build(manager, name, qwen_tokenizer)
    save_with_chat_template(qwen_tokenizer, template, tmp_path)
    assert qwen_tokenizer.chat_template is None  # the test tokenizer has none; saving did not give it one
    report = compare_with_chat_template(template, AutoTokenizer.from_pretrained(tmp_path), parity_probes(), name=name)
    assert report.ok and not report.left_out, report.describe()
