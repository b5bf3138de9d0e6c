"""Chat templates: exact ids against written-out layouts, loss masks, errors."""

import dataclasses
import json

import pytest

from tuneforge.errors import TuneforgeError
from tuneforge.registry import get_registry
from tuneforge.templates import (
    CHATML,
    IGNORE_INDEX,
    Encoded,
    SegmentTemplate,
    TemplateError,
    TurnLayout,
    get_template,
)

SMOL_SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"

SINGLE = [
    {"role": "user", "content": "What is the capital of France?"},
    {"role": "assistant", "content": "Paris."},
]
MULTI = [
    {"role": "user", "content": "Name a colour."},
    {"role": "assistant", "content": "Blue."},
    {"role": "user", "content": "Another one?"},
    {"role": "assistant", "content": "Green, like grass."},
]
WITH_SYSTEM = [{"role": "system", "content": "You answer in one word."}] + SINGLE
MULTI_WITH_SYSTEM = [{"role": "system", "content": "You answer briefly."}] + MULTI

LLAMA3_TOKENS = ["<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]


def ids_of(tokenizer, text):
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def layout(tokenizer, pieces):
    """Expected ids and labels from (text, learned) pieces written out by hand."""
    ids, labels = [], []
    for text, learned in pieces:
        piece_ids = ids_of(tokenizer, text)
        ids += piece_ids
        labels += piece_ids if learned else [IGNORE_INDEX] * len(piece_ids)
    return ids, labels


def chatml_pieces(messages, default_system=None):
    if messages[0]["role"] != "system" and default_system is not None:
        messages = [{"role": "system", "content": default_system}] + messages
    pieces = []
    for m in messages:
        learned = m["role"] == "assistant"
        pieces += [
            ("<|im_start|>", False),
            (m["role"] + "\n", False),
            (m["content"], learned),
            ("<|im_end|>", learned),
            ("\n", False),
        ]
    return pieces


def learned_spans(labels):
    """The (start, end) index ranges of consecutive learned labels."""
    spans, start = [], None
    for i, label in enumerate(labels + [IGNORE_INDEX]):
        if label != IGNORE_INDEX and start is None:
            start = i
        elif label == IGNORE_INDEX and start is not None:
            spans.append((start, i))
            start = None
    return spans


@pytest.fixture(scope="module")
def llama3_tokenizer(smollm2_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(smollm2_dir)
    tokenizer.add_tokens(LLAMA3_TOKENS, special_tokens=True)
    return tokenizer


@pytest.fixture(scope="module")
def bare_tokenizer(smollm2_dir):
    """SmolLM2's tokenizer without a chat template."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(smollm2_dir)
    tokenizer.chat_template = None
    return tokenizer


def test_builtin_templates_are_registered():
    assert {"default", "chatml", "llama3"} <= set(get_registry().names("chat_templates"))


# --- default: the tokenizer's own template ---------------------------------------------------


@pytest.mark.parametrize("messages", [SINGLE, MULTI, WITH_SYSTEM, MULTI_WITH_SYSTEM], ids=["single", "multi", "system", "multi-system"])
def test_default_gives_exactly_apply_chat_template_ids(smollm2_tokenizer, messages):
    template = get_template("default", smollm2_tokenizer)
    encoded = template.encode(messages)
    assert encoded.input_ids == smollm2_tokenizer.apply_chat_template(messages, tokenize=True)["input_ids"]
    assert len(encoded.labels) == len(encoded.input_ids)


@pytest.mark.parametrize("messages", [SINGLE, MULTI, WITH_SYSTEM, MULTI_WITH_SYSTEM], ids=["single", "multi", "system", "multi-system"])
def test_default_learns_exactly_the_assistant_answers_and_end_tokens(smollm2_tokenizer, messages):
    encoded = get_template("default", smollm2_tokenizer).encode(messages)
    # SmolLM2's template injects its own system prompt when the conversation has none
    expected_ids, expected_labels = layout(smollm2_tokenizer, chatml_pieces(messages, default_system=SMOL_SYSTEM))
    assert encoded.input_ids == expected_ids
    assert encoded.labels == expected_labels
    answers = [m["content"] for m in messages if m["role"] == "assistant"]
    spans = learned_spans(encoded.labels)
    assert len(spans) == len(answers)
    for (start, end), answer in zip(spans, answers):
        assert smollm2_tokenizer.decode(encoded.input_ids[start:end]) == answer + "<|im_end|>"
        assert smollm2_tokenizer.decode(encoded.input_ids[end]) == "\n"  # the newline after it is not learned


def test_default_prompt_is_the_generation_prompt(smollm2_tokenizer):
    template = get_template("default", smollm2_tokenizer)
    question = MULTI[:3]
    expected = smollm2_tokenizer.apply_chat_template(question, tokenize=True, add_generation_prompt=True)["input_ids"]
    assert template.prompt(question) == expected
    assert smollm2_tokenizer.decode(template.prompt(question)).endswith("<|im_start|>assistant\n")


def test_default_stop_tokens_are_the_end_of_turn(smollm2_tokenizer):
    template = get_template("default", smollm2_tokenizer)
    assert template.stop_strings == ["<|im_end|>"]
    assert template.stop_token_ids == [smollm2_tokenizer.convert_tokens_to_ids("<|im_end|>")]


def test_train_on_prompt_learns_every_token(smollm2_tokenizer):
    for name in ("default", "chatml"):
        encoded = get_template(name, smollm2_tokenizer).encode(MULTI, train_on_prompt=True)
        assert encoded.labels == encoded.input_ids


def test_default_without_chat_template_says_which_template_to_pass(bare_tokenizer):
    with pytest.raises(TemplateError, match="has no chat template.*--template chatml or --template llama3"):
        get_template("default", bare_tokenizer)


def test_default_refuses_a_template_that_is_not_prefix_stable(smollm2_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(smollm2_dir)
    # the number of messages is written first, so a shorter conversation renders differently
    tokenizer.chat_template = (
        "{{ messages|length }}{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
        "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    template = get_template("default", tokenizer)
    with pytest.raises(TemplateError, match="not prefix-stable"):
        template.encode(MULTI)


def test_default_passes_tools_to_the_tokenizer_template(smollm2_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(smollm2_dir)
    tokenizer.chat_template = (
        "{% if tools %}<|im_start|>system\nTools: {{ tools|tojson }}<|im_end|>\n{% endif %}"
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    tools = [{"type": "function", "function": {"name": "weather", "parameters": {}}}]
    encoded = get_template("default", tokenizer).encode(MULTI, tools=tools)
    assert encoded.input_ids == tokenizer.apply_chat_template(MULTI, tools=tools, tokenize=True)["input_ids"]
    assert "weather" in tokenizer.decode(encoded.input_ids)
    assert [tokenizer.decode(encoded.input_ids[s:e]) for s, e in learned_spans(encoded.labels)] == [
        "Blue.<|im_end|>",
        "Green, like grass.<|im_end|>",
    ]


# --- chatml -----------------------------------------------------------------------------------


@pytest.mark.parametrize("messages", [SINGLE, MULTI, MULTI_WITH_SYSTEM], ids=["single", "multi", "multi-system"])
def test_chatml_layout_without_default_system(smollm2_tokenizer, messages):
    template = get_template("chatml", smollm2_tokenizer)
    encoded = template.encode(messages)
    expected_ids, expected_labels = layout(smollm2_tokenizer, chatml_pieces(messages))
    assert encoded.input_ids == expected_ids
    assert encoded.labels == expected_labels
    assert template.stop_strings == ["<|im_end|>"]


def test_chatml_matches_smollm2_template_when_a_system_prompt_is_given(smollm2_tokenizer):
    chatml = get_template("chatml", smollm2_tokenizer)
    default = get_template("default", smollm2_tokenizer)
    assert chatml.encode(MULTI_WITH_SYSTEM).input_ids == default.encode(MULTI_WITH_SYSTEM).input_ids
    assert chatml.encode(MULTI_WITH_SYSTEM).labels == default.encode(MULTI_WITH_SYSTEM).labels
    assert chatml.prompt(WITH_SYSTEM[:2]) == default.prompt(WITH_SYSTEM[:2])


def test_chatml_renders_tools_and_tool_calls(smollm2_tokenizer):
    template = get_template("chatml", smollm2_tokenizer)
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]
    messages = [
        {"role": "user", "content": "Weather in Oslo?"},
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [{"type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'}}],
        },
        {"role": "tool", "content": '{"celsius": 3}'},
        {"role": "assistant", "content": "It is 3 degrees."},
    ]
    encoded = template.encode(messages, tools=tools)
    text = template.text(messages, tools=tools)
    assert text.startswith("<|im_start|>system\n# Tools")
    assert json.dumps(tools[0]) in text
    assert "<|im_start|>tool\n" in text
    learned = [smollm2_tokenizer.decode(encoded.input_ids[s:e]) for s, e in learned_spans(encoded.labels)]
    assert learned == [
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo"}}\n</tool_call><|im_end|>',
        "It is 3 degrees.<|im_end|>",
    ]


# --- llama3 -----------------------------------------------------------------------------------


@pytest.mark.parametrize("messages", [SINGLE, MULTI_WITH_SYSTEM], ids=["single", "multi-system"])
def test_llama3_layout(llama3_tokenizer, messages):
    template = get_template("llama3", llama3_tokenizer)
    encoded = template.encode(messages)
    text = "<|begin_of_text|>" + "".join(
        f"<|start_header_id|>{m['role']}<|end_header_id|>\n\n{m['content']}<|eot_id|>" for m in messages
    )
    assert encoded.input_ids == ids_of(llama3_tokenizer, text)
    assert encoded.input_ids[0] == llama3_tokenizer.convert_tokens_to_ids("<|begin_of_text|>")
    answers = [m["content"] for m in messages if m["role"] == "assistant"]
    spans = learned_spans(encoded.labels)
    assert [llama3_tokenizer.decode(encoded.input_ids[s:e]) for s, e in spans] == [a + "<|eot_id|>" for a in answers]
    for start, end in spans:
        assert encoded.labels[start:end] == encoded.input_ids[start:end]
        assert llama3_tokenizer.decode(encoded.input_ids[:start]).endswith("assistant<|end_header_id|>\n\n")


def test_llama3_prompt_and_stops(llama3_tokenizer):
    template = get_template("llama3", llama3_tokenizer)
    prompt = template.prompt(SINGLE[:1])
    expected = "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nWhat is the capital of France?<|eot_id|>"
    expected += "<|start_header_id|>assistant<|end_header_id|>\n\n"
    assert prompt == ids_of(llama3_tokenizer, expected)
    assert template.stop_strings[0] == "<|eot_id|>"
    assert llama3_tokenizer.convert_tokens_to_ids("<|eot_id|>") in template.stop_token_ids


def test_llama3_needs_its_special_tokens(smollm2_tokenizer):
    with pytest.raises(TemplateError, match=r"needs '<\|begin_of_text\|>' as one token.*--template default"):
        get_template("llama3", smollm2_tokenizer)


def test_template_errors_are_tuneforge_errors():
    assert issubclass(TemplateError, TuneforgeError)


# --- writing a template -----------------------------------------------------------------------


def test_a_layout_variant_is_a_template_in_one_line(smollm2_tokenizer):
    qwen_like = dataclasses.replace(CHATML, name="qwen-like", default_system="You are a helpful assistant.")
    template = qwen_like.build(smollm2_tokenizer)
    encoded = template.encode(SINGLE)
    expected_ids, expected_labels = layout(
        smollm2_tokenizer, chatml_pieces(SINGLE, default_system="You are a helpful assistant.")
    )
    assert (encoded.input_ids, encoded.labels) == (expected_ids, expected_labels)


def test_layout_special_tokens_are_checked(smollm2_tokenizer):
    broken = TurnLayout(name="broken", header="[{role}]", end="<|no_such_token|>")
    with pytest.raises(TemplateError, match="needs '<\\|no_such_token\\|>' as one token"):
        broken.build(smollm2_tokenizer)


def test_segment_template_labels_by_character_span(smollm2_tokenizer):
    def render(messages, tools, add_generation_prompt):
        pieces = []
        for m in messages:
            if m["role"] == "user":
                pieces.append((f"Q: {m['content']}\nA:", False))
            else:
                pieces.append((f" {m['content']}<|endoftext|>", True))
        if add_generation_prompt:
            pieces.append(("", False))
        return pieces

    template = SegmentTemplate(
        smollm2_tokenizer, render, name="qa", stop_strings=["<|endoftext|>"], special_tokens=["<|endoftext|>"]
    )
    encoded = template.encode(SINGLE)
    assert isinstance(encoded, Encoded)
    assert encoded.input_ids == ids_of(smollm2_tokenizer, "Q: What is the capital of France?\nA: Paris.<|endoftext|>")
    (span,) = learned_spans(encoded.labels)
    assert smollm2_tokenizer.decode(encoded.input_ids[span[0]:span[1]]) == " Paris.<|endoftext|>"
    assert span[1] == len(encoded.input_ids)
    assert encoded.num_learned == span[1] - span[0]
    assert template.stop_strings[0] == "<|endoftext|>"


def test_default_finds_answers_in_a_template_without_generation_prompt(smollm2_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(smollm2_dir)
    tokenizer.chat_template = (
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    )
    encoded = get_template("default", tokenizer).encode(MULTI)
    assert encoded.input_ids == tokenizer.apply_chat_template(MULTI, tokenize=True)["input_ids"]
    assert [tokenizer.decode(encoded.input_ids[s:e]) for s, e in learned_spans(encoded.labels)] == [
        "Blue.<|im_end|>",
        "Green, like grass.<|im_end|>",
    ]


def test_hermes_tool_calls_are_parsed_back():
    from tuneforge.templates import parse_hermes_tool_calls

    text = 'Let me look.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo"}}\n</tool_call>\n<tool_call>{"name": "get_time", "arguments": {}}</tool_call>'
    content, calls = parse_hermes_tool_calls(text)
    assert content == "Let me look."
    assert [(c["function"]["name"], json.loads(c["function"]["arguments"])) for c in calls] == [("get_weather", {"city": "Oslo"}), ("get_time", {})]
    assert all(c["type"] == "function" and c["id"].startswith("call_") for c in calls) and calls[0]["id"] != calls[1]["id"]
    broken = "<tool_call>{not json}</tool_call>"
    assert parse_hermes_tool_calls(broken) == (broken, [])  # nothing the model wrote is lost


def test_chatml_reads_its_own_tool_calls(smollm2_tokenizer):
    from tuneforge.templates import CHATML, LLAMA3

    chatml = CHATML.build(smollm2_tokenizer)
    assert chatml.tool_call_start == "<tool_call>"
    rendered = chatml.text([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "", "tool_calls": [
        {"type": "function", "function": {"name": "f", "arguments": '{"x": 1}'}}]}])
    answer = rendered.split("<|im_start|>assistant\n", 1)[1].removesuffix("<|im_end|>\n").removesuffix("<|im_end|>")
    content, [call] = chatml.parse_tool_calls(answer)
    assert content == "" and call["function"] == {"name": "f", "arguments": '{"x": 1}'}
    assert LLAMA3.tool_calls_parser is None  # its calls are bare JSON: not read back

