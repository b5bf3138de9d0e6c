"""The Qwen templates against the published layouts, written out by hand, token by token.

The expected texts follow the chat templates shipped in the Qwen2-Instruct,
Qwen2.5-Instruct and Qwen3 tokenizer configurations: ChatML turns, the default system
prompts, the ``<tools>`` system block, ``<tool_call>`` calls, tool results grouped in
one ``user`` turn as ``<tool_response>`` blocks, and Qwen3's ``<think>`` rules.
"""

import json

import pytest

from tuneforge.api import IGNORE_INDEX, TemplateError

QWEN25_SYSTEM = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}

TOOLS_BLOCK = (
    "# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
    "You are provided with function signatures within <tools></tools> XML tags:\n<tools>\n"
    '{"type": "function", "function": {"name": "get_weather", "description": "Current weather in a city", '
    '"parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}\n'
    "</tools>\n\nFor each function call, return a json object with function name and arguments within "
    "<tool_call></tool_call> XML tags:\n<tool_call>\n"
    '{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call>'
)

TOOL_CONVERSATION = [
    {"role": "user", "content": "Weather in Paris and Rome?"},
    {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}},
            {"id": "call_2", "type": "function", "function": {"name": "get_weather", "arguments": {"city": "Rome"}}},
        ],
    },
    {"role": "tool", "tool_call_id": "call_1", "content": '{"temp": 18}'},
    {"role": "tool", "tool_call_id": "call_2", "content": '{"temp": 24}'},
    {"role": "assistant", "content": "Paris 18, Rome 24."},
]

CALLS_TEXT = (
    '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>\n'
    '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Rome"}}\n</tool_call>'
)
RESULTS_TURN = (
    "<|im_start|>user\n<tool_response>\n{\"temp\": 18}\n</tool_response>\n"
    "<tool_response>\n{\"temp\": 24}\n</tool_response><|im_end|>\n"
)


def build(manager, name, tokenizer):
    from tuneforge.testing import registry

    return registry(manager).get("chat_templates", name).build(tokenizer)


def ids(tokenizer, text):
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def learned_text(tokenizer, encoded):
    return tokenizer.decode([i for i, label in zip(encoded.input_ids, encoded.labels) if label != IGNORE_INDEX])


def check(tokenizer, template, messages, expected, learned, tools=None):
    """The ids are those of the expected text, and exactly the ``learned`` pieces carry labels."""
    encoded = template.encode(messages, tools=tools)
    assert template.text(messages, tools) == expected
    assert encoded.input_ids == ids(tokenizer, expected)
    assert learned_text(tokenizer, encoded) == "".join(learned)
    for label, token in zip(encoded.labels, encoded.input_ids):
        assert label in (IGNORE_INDEX, token)
    return encoded


# -- Qwen2.5 -----------------------------------------------------------------------------


def test_qwen2_5_single_turn_gets_the_default_system_prompt(manager, qwen_tokenizer):
    template = build(manager, "qwen2_5", qwen_tokenizer)
    messages = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]
    expected = (
        f"<|im_start|>system\n{QWEN25_SYSTEM}<|im_end|>\n"
        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello!<|im_end|>\n"
    )
    check(qwen_tokenizer, template, messages, expected, ["Hello!<|im_end|>"])
    assert template.prompt(messages[:1]) == ids(
        qwen_tokenizer, f"<|im_start|>system\n{QWEN25_SYSTEM}<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    )
    assert template.stop_token_ids[0] == qwen_tokenizer.convert_tokens_to_ids("<|im_end|>")


def test_qwen2_5_multi_turn_with_a_system_prompt_learns_every_answer(manager, qwen_tokenizer):
    template = build(manager, "qwen2_5", qwen_tokenizer)
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "2+2?"},
        {"role": "assistant", "content": "4"},
        {"role": "user", "content": "And 3+3?"},
        {"role": "assistant", "content": "6"},
    ]
    expected = (
        "<|im_start|>system\nBe brief.<|im_end|>\n"
        "<|im_start|>user\n2+2?<|im_end|>\n<|im_start|>assistant\n4<|im_end|>\n"
        "<|im_start|>user\nAnd 3+3?<|im_end|>\n<|im_start|>assistant\n6<|im_end|>\n"
    )
    check(qwen_tokenizer, template, messages, expected, ["4<|im_end|>", "6<|im_end|>"])


def test_qwen2_uses_its_own_default_system_prompt(manager, qwen_tokenizer):
    template = build(manager, "qwen2", qwen_tokenizer)
    messages = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]
    expected = (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello!<|im_end|>\n"
    )
    check(qwen_tokenizer, template, messages, expected, ["Hello!<|im_end|>"])


def test_qwen2_5_tools_calls_and_results(manager, qwen_tokenizer):
    template = build(manager, "qwen2_5", qwen_tokenizer)
    expected = (
        f"<|im_start|>system\n{QWEN25_SYSTEM}\n\n{TOOLS_BLOCK}<|im_end|>\n"
        "<|im_start|>user\nWeather in Paris and Rome?<|im_end|>\n"
        f"<|im_start|>assistant\n{CALLS_TEXT}<|im_end|>\n"
        f"{RESULTS_TURN}"
        "<|im_start|>assistant\nParis 18, Rome 24.<|im_end|>\n"
    )
    # The loss covers the calls the assistant makes and its final answer, not the results.
    check(
        qwen_tokenizer, template, TOOL_CONVERSATION, expected,
        [f"{CALLS_TEXT}<|im_end|>", "Paris 18, Rome 24.<|im_end|>"], tools=[WEATHER_TOOL],
    )


def test_qwen2_5_call_after_some_text(manager, qwen_tokenizer):
    template = build(manager, "qwen2_5", qwen_tokenizer)
    messages = [
        {"role": "system", "content": "You check the weather."},
        {"role": "user", "content": "Paris?"},
        {"role": "assistant", "content": "Let me look.", "tool_calls": [
            {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]},
    ]
    call = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
    expected = (
        f"<|im_start|>system\nYou check the weather.\n\n{TOOLS_BLOCK}<|im_end|>\n"
        "<|im_start|>user\nParis?<|im_end|>\n"
        f"<|im_start|>assistant\nLet me look.\n{call}<|im_end|>\n"
    )
    check(qwen_tokenizer, template, messages, expected, [f"Let me look.\n{call}<|im_end|>"], tools=[WEATHER_TOOL])


# -- Qwen3 -------------------------------------------------------------------------------


def test_qwen3_has_no_default_system_and_an_empty_think_block_on_the_last_answer(manager, qwen_tokenizer):
    template = build(manager, "qwen3", qwen_tokenizer)
    messages = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]
    expected = "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\nHello!<|im_end|>\n"
    check(qwen_tokenizer, template, messages, expected, ["<think>\n\n</think>\n\nHello!<|im_end|>"])
    assert template.prompt(messages[:1]) == ids(qwen_tokenizer, "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")


def test_qwen3_thinking_on_keeps_the_last_reasoning_and_drops_earlier_ones(manager, qwen_tokenizer):
    template = build(manager, "qwen3", qwen_tokenizer)
    messages = [
        {"role": "system", "content": "Think first."},
        {"role": "user", "content": "2+2?"},
        {"role": "assistant", "content": "<think>\nTwo and two.\n</think>\n\n4"},
        {"role": "user", "content": "And 3+3?"},
        {"role": "assistant", "reasoning_content": "Three and three.", "content": "6"},
    ]
    expected = (
        "<|im_start|>system\nThink first.<|im_end|>\n"
        "<|im_start|>user\n2+2?<|im_end|>\n<|im_start|>assistant\n4<|im_end|>\n"
        "<|im_start|>user\nAnd 3+3?<|im_end|>\n"
        "<|im_start|>assistant\n<think>\nThree and three.\n</think>\n\n6<|im_end|>\n"
    )
    check(qwen_tokenizer, template, messages, expected, ["4<|im_end|>", "<think>\nThree and three.\n</think>\n\n6<|im_end|>"])


def test_qwen3_answer_only_shows_the_thinking_but_does_not_learn_it(manager, qwen_tokenizer):
    template = build(manager, "qwen3-answer-only", qwen_tokenizer)
    messages = [{"role": "user", "content": "2+2?"}, {"role": "assistant", "reasoning_content": "Two and two.", "content": "4"}]
    expected = "<|im_start|>user\n2+2?<|im_end|>\n<|im_start|>assistant\n<think>\nTwo and two.\n</think>\n\n4<|im_end|>\n"
    check(qwen_tokenizer, template, messages, expected, ["4<|im_end|>"])


def test_qwen3_thinking_off_puts_the_empty_block_in_the_prompt(manager, qwen_tokenizer):
    template = build(manager, "qwen3-nothink", qwen_tokenizer)
    messages = [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}]
    expected = "<|im_start|>user\n2+2?<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n4<|im_end|>\n"
    check(qwen_tokenizer, template, messages, expected, ["4<|im_end|>"])
    prompt = "<|im_start|>user\n2+2?<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
    assert template.prompt(messages[:1]) == ids(qwen_tokenizer, prompt)
    # A request can switch thinking back on (and the thinking template off) for one prompt.
    assert template.prompt(messages[:1], enable_thinking=True) == ids(qwen_tokenizer, prompt[: -len("<think>\n\n</think>\n\n")])
    thinking = build(manager, "qwen3", qwen_tokenizer)
    assert thinking.prompt(messages[:1], enable_thinking=False) == ids(qwen_tokenizer, prompt)


def test_qwen3_tools_with_and_without_a_system_prompt(manager, qwen_tokenizer):
    template = build(manager, "qwen3", qwen_tokenizer)
    prompt = template.text(TOOL_CONVERSATION[:1], tools=[WEATHER_TOOL], add_generation_prompt=True)
    assert prompt == (
        f"<|im_start|>system\n{TOOLS_BLOCK}<|im_end|>\n"
        "<|im_start|>user\nWeather in Paris and Rome?<|im_end|>\n<|im_start|>assistant\n"
    )
    with_system = [{"role": "system", "content": "Be exact."}, *TOOL_CONVERSATION[:1]]
    assert template.text(with_system, tools=[WEATHER_TOOL]).startswith(f"<|im_start|>system\nBe exact.\n\n{TOOLS_BLOCK}<|im_end|>\n")


def test_qwen3_multi_step_tool_turn_keeps_the_reasoning_of_the_current_query(manager, qwen_tokenizer):
    template = build(manager, "qwen3", qwen_tokenizer)
    messages = [dict(m) for m in TOOL_CONVERSATION]
    messages[1]["reasoning_content"] = "I need both cities."
    messages[4] = {"role": "assistant", "content": "<think>\nBoth known.\n</think>\n\nParis 18, Rome 24."}
    expected = (
        f"<|im_start|>system\n{TOOLS_BLOCK}<|im_end|>\n"
        "<|im_start|>user\nWeather in Paris and Rome?<|im_end|>\n"
        f"<|im_start|>assistant\n<think>\nI need both cities.\n</think>\n\n{CALLS_TEXT}<|im_end|>\n"
        f"{RESULTS_TURN}"
        "<|im_start|>assistant\n<think>\nBoth known.\n</think>\n\nParis 18, Rome 24.<|im_end|>\n"
    )
    check(
        qwen_tokenizer, template, messages, expected,
        [f"<think>\nI need both cities.\n</think>\n\n{CALLS_TEXT}<|im_end|>",
         "<think>\nBoth known.\n</think>\n\nParis 18, Rome 24.<|im_end|>"],
        tools=[WEATHER_TOOL],
    )


def test_qwen3_thinking_off_keeps_the_reasoning_after_the_latest_query(manager, qwen_tokenizer):
    """As the official template: thinking off changes the generation prompt only, not the history it renders."""
    template = build(manager, "qwen3-nothink", qwen_tokenizer)
    messages = [dict(m) for m in TOOL_CONVERSATION]
    messages[1]["reasoning_content"] = "I need both cities."
    expected = (
        f"<|im_start|>system\n{TOOLS_BLOCK}<|im_end|>\n"
        "<|im_start|>user\nWeather in Paris and Rome?<|im_end|>\n"
        f"<|im_start|>assistant\n<think>\nI need both cities.\n</think>\n\n{CALLS_TEXT}<|im_end|>\n"
        f"{RESULTS_TURN}"
        "<|im_start|>assistant\n<think>\n\n</think>\n\nParis 18, Rome 24.<|im_end|>\n"
    )
    check(
        qwen_tokenizer, template, messages, expected,
        [f"<think>\nI need both cities.\n</think>\n\n{CALLS_TEXT}<|im_end|>", "Paris 18, Rome 24.<|im_end|>"],
        tools=[WEATHER_TOOL],
    )
    prompt = template.text(messages[:4], tools=[WEATHER_TOOL], add_generation_prompt=True)
    assert "I need both cities." in prompt and prompt.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")


@pytest.mark.parametrize("name, header", [("qwen2_5", "<|im_start|>system\n\n\n"), ("qwen3", "<|im_start|>system\n\n\n")])
def test_an_empty_system_prompt_with_tools_keeps_its_blank_line(manager, qwen_tokenizer, name, header):
    template = build(manager, name, qwen_tokenizer)
    messages = [{"role": "system", "content": ""}, {"role": "user", "content": "Weather?"}]
    assert template.text(messages, tools=[WEATHER_TOOL]).startswith(f"{header}{TOOLS_BLOCK}<|im_end|>\n")


def test_content_the_official_template_cannot_render_is_refused(manager, qwen_tokenizer):
    messages = [{"role": "user", "content": None}, {"role": "assistant", "content": "Hi"}]
    with pytest.raises(TemplateError, match=r"Message 1 \(user\) has content None.*give it text"):
        build(manager, "qwen2_5", qwen_tokenizer).encode(messages)
    with pytest.raises(TemplateError, match=r"Message 1 \(system\) has content None"):
        build(manager, "qwen3", qwen_tokenizer).encode([{"role": "system", "content": None}, *messages[1:]])
    # Qwen3's template reads other non-text content as empty.
    assert build(manager, "qwen3", qwen_tokenizer).text(messages).startswith("<|im_start|>user\n<|im_end|>\n")


# -- reading tool calls back -------------------------------------------------------------


def test_a_request_with_tools_and_a_typical_answer_round_trip(manager, qwen_tokenizer):
    template = build(manager, "qwen2_5", qwen_tokenizer)
    request = [{"role": "user", "content": "Weather in Paris?"}]
    prompt = qwen_tokenizer.decode(template.prompt(request, tools=[WEATHER_TOOL]))
    assert prompt.startswith(f"<|im_start|>system\n{QWEN25_SYSTEM}\n\n# Tools\n")
    assert '"name": "get_weather"' in prompt and prompt.endswith("<|im_start|>assistant\n")
    assert template.tool_call_start == "<tool_call>"

    output = 'I will check.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
    content, calls = template.parse_tool_calls(output)
    assert content == "I will check."
    assert len(calls) == 1
    [call] = calls
    assert call["type"] == "function" and call["id"].startswith("call_") and len(call["id"]) > len("call_")
    assert call["function"]["name"] == "get_weather"
    assert json.loads(call["function"]["arguments"]) == {"city": "Paris"}

    # The parsed calls go back into the history and render as the model wrote them.
    history = [*request, {"role": "assistant", "content": content, "tool_calls": calls}]
    assert template.text(history, tools=[WEATHER_TOOL]).endswith(f"<|im_start|>assistant\n{output}<|im_end|>\n")


def test_parse_tool_calls_takes_several_calls_an_unclosed_one_and_keeps_broken_ones(manager, qwen_tokenizer):
    template = build(manager, "qwen3", qwen_tokenizer)
    content, calls = template.parse_tool_calls(CALLS_TEXT)
    assert content == ""
    assert [json.loads(c["function"]["arguments"]) for c in calls] == [{"city": "Paris"}, {"city": "Rome"}]
    assert calls[0]["id"] != calls[1]["id"]

    content, calls = template.parse_tool_calls('<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo"}}')
    assert content == "" and calls[0]["function"]["name"] == "get_weather"

    broken = "<tool_call>\n{not json}\n</tool_call>"
    assert template.parse_tool_calls(broken) == (broken, [])
    assert template.parse_tool_calls("No tools needed.") == ("No tools needed.", [])


def test_qwen3_parse_reasoning(manager, qwen_tokenizer):
    template = build(manager, "qwen3", qwen_tokenizer)
    assert template.parse_reasoning("<think>\nHmm.\n</think>\n\nYes.") == ("Hmm.", "Yes.")
    assert template.parse_reasoning("Yes.") == (None, "Yes.")


def test_bad_tool_call_arguments_are_named(manager, qwen_tokenizer):
    template = build(manager, "qwen3", qwen_tokenizer)
    messages = [
        {"role": "user", "content": "x"},
        {"role": "assistant", "content": "", "tool_calls": [{"function": {"name": "f", "arguments": "city=Paris"}}]},
    ]
    with pytest.raises(TemplateError, match="city=Paris"):
        template.encode(messages)


def test_a_tokenizer_without_chatml_tokens_is_refused(manager, qwen_tokenizer, tmp_path):
    broken = _without_im_end(qwen_tokenizer, tmp_path)
    with pytest.raises(TemplateError, match="<\\|im_start\\|>"):
        build(manager, "qwen3", broken)


def _without_im_end(tokenizer, tmp_path):
    """A tokenizer whose vocabulary splits <|im_end|> into pieces (its added tokens dropped)."""
    import json as _json

    from transformers import PreTrainedTokenizerFast

    tokenizer.save_pretrained(tmp_path)
    data = _json.loads((tmp_path / "tokenizer.json").read_text())
    data["added_tokens"] = [t for t in data["added_tokens"] if t["content"] not in ("<|im_start|>", "<|im_end|>")]
    (tmp_path / "tokenizer.json").write_text(_json.dumps(data))
    return PreTrainedTokenizerFast(tokenizer_file=str(tmp_path / "tokenizer.json"))


def test_a_token_stream_meets_the_tool_call_start_in_one_token(manager, qwen_tokenizer):
    """A streaming server emits text until ``tool_call_start`` appears, then buffers and parses the rest."""
    template = build(manager, "qwen3", qwen_tokenizer)
    output = 'Let me check.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo"}}\n</tool_call>'
    token_ids = ids(qwen_tokenizer, output)
    assert qwen_tokenizer.convert_tokens_to_ids(template.tool_call_start) in token_ids

    emitted, buffered = "", None
    for n in range(1, len(token_ids) + 1):
        text = qwen_tokenizer.decode(token_ids[:n])
        if buffered is None and template.tool_call_start not in text:
            emitted = text  # still plain text: safe to send as deltas
        else:
            buffered = text
    assert emitted == "Let me check.\n"
    content, [call] = template.parse_tool_calls(buffered)
    assert content == "Let me check." and json.loads(call["function"]["arguments"]) == {"city": "Oslo"}


def test_qwen3_a_call_without_reasoning_gets_no_think_block_unless_it_is_last(manager, qwen_tokenizer):
    template = build(manager, "qwen3", qwen_tokenizer)
    expected = (
        f"<|im_start|>system\n{TOOLS_BLOCK}<|im_end|>\n"
        "<|im_start|>user\nWeather in Paris and Rome?<|im_end|>\n"
        f"<|im_start|>assistant\n{CALLS_TEXT}<|im_end|>\n"
        f"{RESULTS_TURN}"
        "<|im_start|>assistant\n<think>\n\n</think>\n\nParis 18, Rome 24.<|im_end|>\n"
    )
    check(
        qwen_tokenizer, template, TOOL_CONVERSATION, expected,
        [f"{CALLS_TEXT}<|im_end|>", "<think>\n\n</think>\n\nParis 18, Rome 24.<|im_end|>"], tools=[WEATHER_TOOL],
    )
