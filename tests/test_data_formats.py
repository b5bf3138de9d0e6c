"""Dataset formats: detection per row, conversion to the canonical conversation, validation."""

import json

import pytest

from tuneforge.data import BadRows, Row, convert_row, convert_rows, dataset_formats, validate_conversation
from tuneforge.errors import DataError


def convert(row, **kwargs):
    (converted,) = convert_rows([Row(row, "meetings.jsonl line 17", "meetings.jsonl")], **kwargs)
    return converted


def test_formats_are_registered_in_priority_order():
    assert [f.name for f in dataset_formats()] == ["messages", "sharegpt", "alpaca", "query-response"]


def test_messages_row_keeps_tools_and_tool_calls():
    tools = [{"type": "function", "function": {"name": "lookup", "parameters": {}}}]
    call = [{"id": "c1", "type": "function", "function": {"name": "lookup", "arguments": "{}"}}]
    row = {
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Find the minutes."},
            {"role": "assistant", "content": None, "tool_calls": call},
            {"role": "tool", "content": "found", "tool_call_id": "c1"},
            {"role": "assistant", "content": "Here they are."},
        ],
        "tools": tools,
    }
    converted = convert(row)
    assert converted.format == "messages"
    assert converted.tools == tools
    assert [m["role"] for m in converted.messages] == ["system", "user", "assistant", "tool", "assistant"]
    assert converted.messages[2] == {"role": "assistant", "content": "", "tool_calls": call}
    assert converted.messages[3]["tool_call_id"] == "c1"


def test_messages_row_keeps_the_reasoning_of_an_answer():
    row = {"messages": [{"role": "user", "content": "2+2?"},
                        {"role": "assistant", "content": "4", "reasoning_content": "Two and two."}]}
    assert convert(row).messages[1] == {"role": "assistant", "content": "4", "reasoning_content": "Two and two."}


def test_messages_text_parts_are_joined():
    row = {"messages": [{"role": "user", "content": [{"type": "text", "text": "Hi "}, {"type": "text", "text": "there"}]},
                        {"role": "assistant", "content": "Hello"}]}
    assert convert(row).messages[0]["content"] == "Hi there"


def test_sharegpt_with_system_function_call_and_observation():
    row = {
        "system": "You take minutes.",
        "tools": json.dumps([{"name": "clock", "parameters": {}}]),
        "conversations": [
            {"from": "human", "value": "What time is it?"},
            {"from": "function_call", "value": json.dumps({"name": "clock", "arguments": {}})},
            {"from": "observation", "value": "10:00"},
            {"from": "gpt", "value": "It is ten."},
        ],
    }
    converted = convert(row)
    assert converted.format == "sharegpt"
    assert converted.tools == [{"name": "clock", "parameters": {}}]
    assert [m["role"] for m in converted.messages] == ["system", "user", "assistant", "tool", "assistant"]
    assert converted.messages[0]["content"] == "You take minutes."
    assert converted.messages[2]["tool_calls"][0]["function"] == {"name": "clock", "arguments": {}}


def test_alpaca_with_input_system_and_history():
    row = {
        "instruction": "Summarise the meeting.",
        "input": "We agreed to ship on Friday.",
        "output": "Ship Friday.",
        "system": "You are terse.",
        "history": [["Who chaired?", "Ana."]],
    }
    converted = convert(row)
    assert converted.format == "alpaca"
    assert converted.messages == [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Who chaired?"},
        {"role": "assistant", "content": "Ana."},
        {"role": "user", "content": "Summarise the meeting.\n\nWe agreed to ship on Friday."},
        {"role": "assistant", "content": "Ship Friday."},
    ]


def test_alpaca_empty_input_and_system_are_left_out():
    converted = convert({"instruction": "Say hi.", "input": "", "output": "Hi.", "system": ""})
    assert converted.messages == [{"role": "user", "content": "Say hi."}, {"role": "assistant", "content": "Hi."}]


@pytest.mark.parametrize(
    "row",
    [{"query": "Q?", "response": "A."}, {"prompt": "Q?", "response": "A."}, {"question": "Q?", "answer": "A."}],
)
def test_query_response_variants(row):
    converted = convert(row)
    assert converted.format == "query-response"
    assert converted.messages == [{"role": "user", "content": "Q?"}, {"role": "assistant", "content": "A."}]


def test_query_response_history_given_as_json_text():
    converted = convert({"query": "And then?", "response": "Lunch.", "history": '[["First?", "Coffee."]]'})
    assert [m["content"] for m in converted.messages] == ["First?", "Coffee.", "And then?", "Lunch."]


def test_detection_is_per_row():
    rows = [
        Row({"query": "a", "response": "b"}, "mix.jsonl line 1", "mix.jsonl"),
        Row({"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}, "mix.jsonl line 2", "mix.jsonl"),
        Row({"instruction": "a", "output": "b"}, "mix.jsonl line 3", "mix.jsonl"),
    ]
    converted = convert_rows(rows)
    assert [c.format for c in converted] == ["query-response", "messages", "alpaca"]
    assert all(c.messages[-1] == {"role": "assistant", "content": "b"} for c in converted)


def test_system_option_is_added_where_missing():
    assert convert({"query": "Q", "response": "A"}, system="Be kind.").messages[0] == {"role": "system", "content": "Be kind."}
    kept = convert({"query": "Q", "response": "A", "system": "Own."}, system="Be kind.")
    assert kept.messages[0]["content"] == "Own."


def test_row_matching_no_format_names_file_line_keys_and_formats():
    with pytest.raises(DataError) as info:
        convert({"foo": 1, "bar": 2})
    assert str(info.value) == (
        "meetings.jsonl line 17: the row has keys ['bar', 'foo'], which match no dataset format "
        "(messages, sharegpt, alpaca, query-response); rename the keys or pass --dataset-format."
    )


def test_forced_format_reports_missing_keys():
    with pytest.raises(DataError, match=r"meetings.jsonl line 17: the row has keys \['query', 'response'\] and lacks 'instruction', 'output'"):
        convert({"query": "Q", "response": "A"}, dataset_format="alpaca")


def test_forced_unknown_format_lists_known_ones():
    with pytest.raises(DataError, match="Unknown dataset format 'alpacca'.*Did you mean 'alpaca'"):
        convert({"query": "Q", "response": "A"}, dataset_format="alpacca")


@pytest.mark.parametrize(
    "row, message",
    [
        ({"messages": [{"role": "user", "content": "Hi"}]}, "the last message is a user message; a training row must end with an assistant answer"),
        ({"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "  "}]}, r"message 2 \(assistant\) is empty"),
        ({"messages": [{"role": "assistant", "content": "Hi"}, {"role": "user", "content": "Yo"}]}, r"message 1 \(assistant\) comes first"),
        ({"messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}, {"role": "assistant", "content": "c"}]},
         r"message 2 \(user\) follows a user message; a user message must be followed by an assistant answer"),
        ({"messages": [{"role": "user", "content": "a"}, {"role": "bot", "content": "b"}]}, "message 2 has role 'bot'; use one of system, user, assistant, tool"),
        ({"messages": [{"role": "user", "content": "a"}, {"role": "system", "content": "b"}, {"role": "assistant", "content": "c"}]},
         "message 2 is a system message; only the first message may be a system prompt"),
        ({"messages": "hello"}, "the 'messages' value is text that is not valid JSON"),
        ({"messages": [{"role": "user", "content": ["x"]}, {"role": "assistant", "content": "y"}]}, r"message 1 \(user\) part 1 is 'x'; a part must be an object whose 'type' is one of text, image_url"),
        ({"conversations": [{"from": "human", "value": "a"}, {"from": "bot", "value": "b"}]}, "turn 2 has from='bot'; use one of human"),
        ({"conversations": [{"from": "human", "value": "a"}, {"from": "function_call", "value": "not json"}]},
         r"turn 2 \(function_call\) is 'not json'; it must be a JSON object with 'name' and 'arguments'"),
        ({"instruction": "Do it", "output": ""}, r"message 2 \(assistant\) is empty"),
        ({"query": "Q", "response": "A", "history": [["only one"]]}, r"history entry 1 is \['only one'\]; each entry must be a \[user, assistant\] pair"),
        ({"query": {"a": 1}, "response": "A"}, "the 'query' value is a dict; it must be text"),
        (["not", "an", "object"], "the row is a list, not an object with named fields"),
    ],
)
def test_malformed_rows_get_a_specific_sentence(row, message):
    with pytest.raises(DataError, match=r"^meetings\.jsonl line 17: " + ".*" + message):
        convert(row)


def test_bad_rows_can_be_skipped_and_counted():
    rows = [
        Row({"query": "Q", "response": "A"}, "d.jsonl line 1", "d.jsonl"),
        Row({"foo": "bar"}, "d.jsonl line 2", "d.jsonl"),
        Row({"query": "Q", "response": ""}, "d.jsonl line 3", "d.jsonl"),
    ]
    bad = BadRows(skip=True)
    converted = convert_rows(rows, bad=bad)
    assert [c.where for c in converted] == ["d.jsonl line 1"]
    assert bad.count == 2
    assert bad.examples[0].startswith("d.jsonl line 2: the row has keys ['foo']")
    assert bad.examples[1].startswith("d.jsonl line 3: message 2 (assistant) is empty")


def test_validation_keeps_an_empty_system_prompt_and_allows_inference_rows():
    """An empty system prompt is rendered as the official templates render it (Qwen2.5: an empty system turn, not its
    default one), so it is kept; --system fills it in as it fills in a missing one."""
    from tuneforge.data.convert import add_system_prompt

    conversation = {"messages": [{"role": "system", "content": ""}, {"role": "user", "content": "Hi"}]}
    assert validate_conversation(conversation, training=False) == conversation
    assert add_system_prompt(conversation, "Be brief.")["messages"] == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    given = {"messages": [{"role": "system", "content": "Be kind."}, {"role": "user", "content": "Hi"}]}
    assert add_system_prompt(given, "Be brief.") == given


def test_convert_row_returns_the_format_name():
    data, name = convert_row({"question": "Q", "answer": "A"}, dataset_formats())
    assert name == "query-response"
    assert data["messages"][1]["content"] == "A"


def test_forced_query_response_names_the_key_pairs():
    row = {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}
    with pytest.raises(DataError, match="the query-response format needs query/response, prompt/response or question/answer"):
        convert(row, dataset_format="query-response")
