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
