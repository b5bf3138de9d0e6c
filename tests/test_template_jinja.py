"""The core's named templates as Jinja: ``template.jinja()``, rendered by transformers, renders what ``text()`` renders.

Generated conversations (tuneforge.testing.reference) with tools: text and ids with and
without the generation prompt, every prompt, and the loss mask found from the Jinja's
rendering. The Python templates read tool-call arguments given as a JSON string and
write them again; Jinja cannot read JSON, so it writes such a string as it is. The
comparison therefore gives the Jinja the arguments as objects (``arguments_as_objects``,
the shape transformers documents and vLLM passes); a separate test shows a JSON string
written the way ``json.dumps`` writes it renders the same either way.
"""

import dataclasses

import pytest

from tuneforge.templates import CHATML, LLAMA3, HFChatTemplate, get_template
from tuneforge.testing.reference import Conversation, Official, arguments_as_objects, check_against_official, conversations

LLAMA3_TOKENS = ["<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]
CASES = conversations(seed=21, count=80, tools=True)


@pytest.fixture(scope="module")
def llama3_tokenizer(smollm2_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(smollm2_dir)
    tokenizer.add_tokens(LLAMA3_TOKENS, special_tokens=True)
    return tokenizer


def own_jinja(template, prepare=arguments_as_objects) -> Official:
    return Official(template.tokenizer, template.jinja(), template.chat_template_kwargs, prepare=prepare)


@pytest.mark.parametrize("name", ["chatml", "llama3"])
def test_the_jinja_renders_as_the_template(llama3_tokenizer, name):
    template = get_template(name, llama3_tokenizer)
    assert template.chat_template_kwargs == {}
    outcomes = [check_against_official(template, own_jinja(template), case) for case in CASES]
    assert outcomes == ["renders"] * len(CASES)


def test_a_layout_writes_its_fields_into_its_jinja(llama3_tokenizer):
    """Role names, a default system prompt, the begin token, trimming and the separator all come from the layout."""
    layout = dataclasses.replace(
        LLAMA3, name="custom", default_system="Be brief {role} \"quoted\" \\ {{ }}.", role_names={"tool": "ipython", "user": "human"},
        separator="\n", begin="<|begin_of_text|>",
    )
    template = layout.build(llama3_tokenizer)
    jinja = template.jinja()
    assert '"human"' in jinja and "Be brief" in jinja
    outcomes = [check_against_official(template, own_jinja(template), case) for case in CASES[:30]]
    assert outcomes == ["renders"] * 30
    assert template.text(CASES[0].messages).startswith("<|begin_of_text|>")


def test_json_string_arguments_written_as_json_dumps_writes_them_render_the_same(llama3_tokenizer):
    import json

    arguments = {"city": "Wien", "tags": ["naïve", None, 1.5]}
    call = {"type": "function", "function": {"name": "get_weather", "arguments": json.dumps(arguments, ensure_ascii=False)}}
    messages = [{"role": "user", "content": "Weather?"}, {"role": "assistant", "content": None, "tool_calls": [call]}]
    for name in ("chatml", "llama3"):
        template = get_template(name, llama3_tokenizer)
        assert check_against_official(template, own_jinja(template, prepare=None), Conversation(messages)) == "renders"


NONE_CONTENT = [
    [{"role": "user", "content": None}, {"role": "assistant", "content": "Hi"}],
    [{"role": "system", "content": None}, {"role": "user", "content": "Hi"}],
    [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": None}],
    [{"role": "user", "content": "Hi"}, {"role": "assistant"}],
]


@pytest.mark.parametrize("messages", NONE_CONTENT, ids=["user", "system", "assistant", "missing"])
def test_where_chatml_refuses_a_missing_content_its_jinja_fails_and_llama3_renders_it(llama3_tokenizer, messages):
    chatml = get_template("chatml", llama3_tokenizer)
    assert check_against_official(chatml, own_jinja(chatml), Conversation(messages)).startswith("raises")
    with pytest.raises(Exception, match="has no content \\(None\\)"):
        own_jinja(chatml).render(messages)
    llama3 = get_template("llama3", llama3_tokenizer)
    assert check_against_official(llama3, own_jinja(llama3), Conversation(messages)) == "renders"


def test_a_layout_with_its_own_tool_helpers_has_no_jinja(smollm2_tokenizer):
    layout = dataclasses.replace(CHATML, name="own-tools", tools_prompt=lambda tools: f"{len(tools)} tools")
    assert layout.build(smollm2_tokenizer).jinja() is None
    assert dataclasses.replace(CHATML, tool_calls_text=lambda calls: "call").jinja() is None


def test_the_default_template_is_the_tokenizers_own(smollm2_tokenizer):
    template = HFChatTemplate(smollm2_tokenizer)
    assert template.jinja() == smollm2_tokenizer.chat_template
    assert template.chat_template_kwargs == {}


@pytest.mark.parametrize("name", ["chatml", "llama3"])
def test_a_tokenizer_saved_with_the_template_passes_the_parity_check(llama3_tokenizer, tmp_path, name):
    """save_with_chat_template writes the Jinja (leaving the tokenizer in memory as it was); the parity probes find no drift."""
    from transformers import AutoTokenizer

    from tuneforge.parity import compare, probes
    from tuneforge.templates import save_with_chat_template

    template = get_template(name, llama3_tokenizer)
    own = llama3_tokenizer.chat_template
    assert save_with_chat_template(llama3_tokenizer, template, tmp_path) == template.jinja()
    assert llama3_tokenizer.chat_template == own
    saved = AutoTokenizer.from_pretrained(tmp_path)
    assert saved.chat_template == template.jinja()
    report = compare(template, saved, probes(), name=name)
    assert report.ok and not report.left_out, report.describe()
