"""`tuneforge deploy` of a Qwen-family model returns OpenAI tool_calls to the openai client."""

import json

from tuneforge.testing import WEATHER_CALL, WEATHER_TOOLS, tool_calling_model_dir
from tuneforge.testing.server import Server
from tuneforge_qwen.testing import tiny_qwen_dir


def test_a_qwen_model_calls_a_tool_through_the_server(manager, qwen_tokenizer_dir, tmp_path):
    base = tiny_qwen_dir(tmp_path / "qwen2", "qwen2", tokenizer_dir=qwen_tokenizer_dir)
    # Taught with the template the family picks by itself (qwen2_5), then served with no --template.
    model = tool_calling_model_dir(tmp_path / "qwen2-tools", base_dir=base, template="qwen2_5")
    server = Server(["--model", model, "--served-model-name", "qwen"], tmp_path / "server.log", env={"TUNEFORGE_LOAD_PLUGINS": "qwen"})
    try:
        client = server.client()
        answer = client.chat.completions.create(model="qwen", messages=WEATHER_CALL[:1], tools=WEATHER_TOOLS, temperature=0, max_tokens=60)
        choice = answer.choices[0]
        assert choice.finish_reason == "tool_calls", server.tail()
        [call] = choice.message.tool_calls
        assert call.function.name == "get_weather" and json.loads(call.function.arguments) == {"city": "Vienna"}
        chunks = list(client.chat.completions.create(model="qwen", messages=WEATHER_CALL[:1], tools=WEATHER_TOOLS, temperature=0, max_tokens=60, stream=True))
        assert "<tool_call>" not in "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        [streamed] = [tc for c in chunks if c.choices for tc in (c.choices[0].delta.tool_calls or [])]
        assert streamed.function.name == "get_weather" and chunks[-1].choices[0].finish_reason == "tool_calls"
    finally:
        assert server.stop() == 0, server.tail()


def test_reasoning_sent_back_in_the_history_reaches_the_qwen3_template(manager, qwen_tokenizer_dir, qwen_tokenizer, tmp_path):
    """A multi-step tool turn: the call's reasoning_content (an extra field of the openai client) is rendered in the prompt."""
    from tuneforge.testing import registry

    model = tiny_qwen_dir(tmp_path / "qwen3", "qwen3", tokenizer_dir=qwen_tokenizer_dir)
    reasoning = "The user wants the weather in Vienna, so I call get_weather with the city."
    history = [
        WEATHER_CALL[0],
        {"role": "assistant", "content": "", "reasoning_content": reasoning,
         "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Vienna"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": '{"celsius": 21}'},
    ]
    template = registry(manager).get("chat_templates", "qwen3").build(qwen_tokenizer)
    expected = template.prompt(history, tools=WEATHER_TOOLS)
    without = template.prompt([{k: v for k, v in m.items() if k != "reasoning_content"} for m in history], tools=WEATHER_TOOLS)
    assert reasoning in template.text(history, tools=WEATHER_TOOLS, add_generation_prompt=True)
    assert len(expected) > len(without)
    server = Server(["--model", model, "--served-model-name", "qwen3"], tmp_path / "server.log", env={"TUNEFORGE_LOAD_PLUGINS": "qwen"})
    try:
        client = server.client()
        answer = client.chat.completions.create(model="qwen3", messages=history, tools=WEATHER_TOOLS, temperature=0, max_tokens=2)
        assert answer.usage.prompt_tokens == len(expected), server.tail()
        thinking_off = client.chat.completions.create(
            model="qwen3", messages=history, tools=WEATHER_TOOLS, temperature=0, max_tokens=2,
            extra_body={"chat_template_kwargs": {"enable_thinking": False}},
        )
        # Thinking off changes the generation prompt only: the reasoning in the history stays.
        assert thinking_off.usage.prompt_tokens == len(template.prompt(history, tools=WEATHER_TOOLS, enable_thinking=False))
        assert thinking_off.usage.prompt_tokens == len(expected) + len(qwen_tokenizer("<think>\n\n</think>\n\n", add_special_tokens=False)["input_ids"])
    finally:
        assert server.stop() == 0, server.tail()
