"""The InternLM templates against the published layout, written out by hand, token by token.

The expected texts follow the chat template of the InternLM2/2.5/3 chat tokenizers
(``<s>`` then ChatML turns, no default system prompt) and InternLM's published chat
format for tools: a ``system name=<|plugin|>`` turn with the functions as JSON, calls as
``<|action_start|><|plugin|>`` actions ended by ``<|action_end|>``, results in an
``environment name=<|plugin|>`` turn.
"""

import json

import pytest

from tuneforge.api import IGNORE_INDEX, TemplateError
from tuneforge.testing import registry

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_current_weather",
        "description": "Get the current weather in a given location",
        "parameters": {"type": "object", "properties": {"location": {"type": "string"}}, "required": ["location"]},
    },
}

PLUGIN_TURN = (
    "<|im_start|>system name=<|plugin|>\n"
    "[\n"
    "    {\n"
    '        "name": "get_current_weather",\n'
    '        "description": "Get the current weather in a given location",\n'
    '        "parameters": {\n'
    '            "type": "object",\n'
    '            "properties": {\n'
    '                "location": {\n'
    '                    "type": "string"\n'
    "                }\n"
    "            },\n"
    '            "required": [\n'
    '                "location"\n'
    "            ]\n"
    "        }\n"
    "    }\n"
    "]\n"
    "<|im_end|>\n"
)

TOOL_CONVERSATION = [
    {"role": "system", "content": "You are InternLM2-Chat, a harmless AI assistant"},
    {"role": "user", "content": "I want to know today's weather in Shanghai"},
    {"role": "assistant", "content": "Sure, I will search for the weather of Shanghai.", "tool_calls": [
        {"id": "call_1", "type": "function",
         "function": {"name": "get_current_weather", "arguments": '{"location": "Shanghai"}'}}]},
    {"role": "tool", "tool_call_id": "call_1", "content": '{"temperature": 22}'},
    {"role": "assistant", "content": "The weather in Shanghai is 22 celsius"},
]

ACTION = '<|action_start|><|plugin|>\n{"name": "get_current_weather", "parameters": {"location": "Shanghai"}}<|action_end|>'


def build(manager, name, tokenizer):
    return registry(manager).get("chat_templates", name).build(tokenizer)


def ids(tokenizer, text):
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def check(tokenizer, template, messages, expected, learned, tools=None):
    encoded = template.encode(messages, tools=tools)
    assert template.text(messages, tools) == expected
    assert encoded.input_ids == ids(tokenizer, expected)
    learned_ids = [i for i, label in zip(encoded.input_ids, encoded.labels) if label != IGNORE_INDEX]
    assert learned_ids == ids(tokenizer, "".join(learned))
    return encoded


@pytest.mark.parametrize("name", ["internlm2", "internlm3"])
def test_single_turn_has_no_default_system_prompt(manager, internlm_tokenizer, name):
    template = build(manager, name, internlm_tokenizer)
    messages = [{"role": "user", "content": "Hello"}, {"role": "assistant", "content": "Hi, how can I help?"}]
    expected = "<s><|im_start|>user\nHello<|im_end|>\n<|im_start|>assistant\nHi, how can I help?<|im_end|>\n"
    check(internlm_tokenizer, template, messages, expected, ["Hi, how can I help?<|im_end|>"])
    assert template.prompt(messages[:1]) == ids(internlm_tokenizer, "<s><|im_start|>user\nHello<|im_end|>\n<|im_start|>assistant\n")
    im_end = internlm_tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert template.stop_token_ids[0] == im_end and internlm_tokenizer.eos_token_id in template.stop_token_ids


def test_multi_turn_support_dialogue_with_a_system_prompt(manager, internlm_tokenizer):
    template = build(manager, "internlm3", internlm_tokenizer)
    messages = [
        {"role": "system", "content": "You are the support assistant of ACME."},
        {"role": "user", "content": "My order is late."},
        {"role": "assistant", "content": "Which order number?"},
        {"role": "user", "content": "A-17."},
        {"role": "assistant", "content": "It ships tomorrow."},
    ]
    expected = (
        "<s><|im_start|>system\nYou are the support assistant of ACME.<|im_end|>\n"
        "<|im_start|>user\nMy order is late.<|im_end|>\n<|im_start|>assistant\nWhich order number?<|im_end|>\n"
        "<|im_start|>user\nA-17.<|im_end|>\n<|im_start|>assistant\nIt ships tomorrow.<|im_end|>\n"
    )
    check(internlm_tokenizer, template, messages, expected, ["Which order number?<|im_end|>", "It ships tomorrow.<|im_end|>"])


def test_tools_calls_and_environment_results(manager, internlm_tokenizer):
    template = build(manager, "internlm2", internlm_tokenizer)
    expected = (
        "<s><|im_start|>system\nYou are InternLM2-Chat, a harmless AI assistant<|im_end|>\n"
        f"{PLUGIN_TURN}"
        "<|im_start|>user\nI want to know today's weather in Shanghai<|im_end|>\n"
        f"<|im_start|>assistant\nSure, I will search for the weather of Shanghai.{ACTION}<|im_end|>\n"
        '<|im_start|>environment name=<|plugin|>\n{"temperature": 22}<|im_end|>\n'
        "<|im_start|>assistant\nThe weather in Shanghai is 22 celsius<|im_end|>\n"
    )
    check(
        internlm_tokenizer, template, TOOL_CONVERSATION, expected,
        [f"Sure, I will search for the weather of Shanghai.{ACTION}<|im_end|>", "The weather in Shanghai is 22 celsius<|im_end|>"],
        tools=[WEATHER_TOOL],
    )


def test_a_request_with_tools_and_a_typical_answer_round_trip(manager, internlm_tokenizer):
    template = build(manager, "internlm3", internlm_tokenizer)
    prompt = template.text(TOOL_CONVERSATION[1:2], tools=[WEATHER_TOOL], add_generation_prompt=True)
    assert prompt == f"<s>{PLUGIN_TURN}<|im_start|>user\nI want to know today's weather in Shanghai<|im_end|>\n<|im_start|>assistant\n"
    assert template.tool_call_start == "<|action_start|>"

    content, calls = template.parse_tool_calls(f"Sure, I will search for the weather of Shanghai.{ACTION}")
    assert content == "Sure, I will search for the weather of Shanghai."
    [call] = calls
    assert call["type"] == "function" and call["id"].startswith("call_")
    assert call["function"]["name"] == "get_current_weather"
    assert json.loads(call["function"]["arguments"]) == {"location": "Shanghai"}

    assert template.parse_tool_calls("No tool needed.") == ("No tool needed.", [])
    broken = "<|action_start|><|plugin|>\n{oops}<|action_end|>"
    assert template.parse_tool_calls(broken) == (broken, [])


def test_bad_tool_call_arguments_are_named(manager, internlm_tokenizer):
    template = build(manager, "internlm3", internlm_tokenizer)
    messages = [{"role": "user", "content": "x"},
                {"role": "assistant", "content": "", "tool_calls": [{"function": {"name": "f", "arguments": "loc=SH"}}]}]
    with pytest.raises(TemplateError, match="loc=SH"):
        template.encode(messages)


def test_a_tokenizer_without_the_action_tokens_is_refused(manager, smollm2_tokenizer):
    with pytest.raises(TemplateError, match="splits it into"):
        build(manager, "internlm3", smollm2_tokenizer)


def test_tool_calls_in_internlm_markup_are_scored_through_the_template(manager, internlm_tokenizer):
    from tuneforge.api import device_action_tools, judge_tool_calls, score_tool_calls

    template = build(manager, "internlm3", internlm_tokenizer)

    def action(name, arguments):
        return f'<|action_start|><|plugin|>\n{json.dumps({"name": name, "parameters": arguments})}<|action_end|>'

    calls = [{"type": "function", "function": {"name": "mute_microphone", "arguments": "{}"}},
             {"type": "function", "function": {"name": "share_screen", "arguments": '{"screen": 2}'}}]
    command = {"tools": device_action_tools, "messages": [
        {"role": "user", "content": "mute me and share my second screen"},
        {"role": "assistant", "content": "", "tool_calls": calls}]}
    refuse = {"tools": device_action_tools, "messages": [
        {"role": "user", "content": "order a pizza"}, {"role": "assistant", "content": "I can't order food."}]}
    answer = action("mute_microphone", {}) + action("share_screen", {"screen": 2})

    verdict = judge_tool_calls(command, answer, template)
    assert verdict.valid_json and verdict.exact and not verdict.refused
    # Read as Hermes text, the same answer holds no call: a command wrongly refused.
    hermes = judge_tool_calls(command, answer)
    assert hermes.refused and not hermes.valid_json and not hermes.action_match
    # A broken action is an unreadable attempt, not a refusal.
    broken = judge_tool_calls(command, '<|action_start|><|plugin|>\n{"name": "mute_microphone",}<|action_end|>', template)
    assert not broken.refused and not broken.valid_json and "call is not JSON" in broken.problems[0]
    # Text the engine left beside the calls it parsed (an assistant message) is read by the template too.
    message = {"role": "assistant", "content": action("share_screen", {"screen": 2}), "tool_calls": calls[:1]}
    assert judge_tool_calls(command, message, template).exact

    scores = score_tool_calls([command, refuse], [answer, "Sorry, I can't order food."], template)
    assert (scores["valid_json_rate"], scores["action_accuracy"], scores["argument_f1"], scores["refusal_accuracy"]) == (1.0, 1.0, 1.0, 1.0)


def test_rewards_judge_an_answer_in_internlm_markup_on_its_calls(manager, internlm_tokenizer):
    """GRPO hands each answer to the rewards as an ``AnswerText`` of the run's template, read by the template's parser."""
    from tuneforge.api import AnswerText, combine_rewards

    template = build(manager, "internlm2", internlm_tokenizer)
    row = {"tools": [WEATHER_TOOL], "messages": [
        {"role": "user", "content": "What's the weather in Shanghai?"},
        {"role": "assistant", "content": "", "tool_calls": [
            {"type": "function", "function": {"name": "get_current_weather", "arguments": {"location": "Shanghai"}}}]},
    ]}
    rewards = combine_rewards(["json_valid", "action_match", "argument_f1"])
    # read as Hermes, the action is text: no call where one is expected
    assert rewards(row, ACTION).total == 0.0
    answer = AnswerText(ACTION, template)
    assert isinstance(answer, str) and answer == ACTION  # a user's reward function still gets the text
    assert rewards(row, answer).values == {"json_valid": 1.0, "action_match": 1.0, "argument_f1": 1.0}
    wrong = AnswerText(ACTION.replace("Shanghai", "Beijing"), template)
    assert rewards(row, wrong).values == {"json_valid": 1.0, "action_match": 1.0, "argument_f1": 0.0}
