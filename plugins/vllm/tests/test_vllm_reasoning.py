"""The vllm engine returns a thinking model's reasoning apart from its answer, as the pt engine does.

The model is a tiny Qwen3 (heads 64 wide, for vLLM's CPU attention) taught one
answer: a think block that mentions ``<tool_call>``, a sentence, then a real call.
"""

import json

import pytest

pytest.importorskip("vllm", reason="vLLM is not installed here; the README's test command runs these tests in .venv-vllm")
qwen_plugin = pytest.importorskip("tuneforge_qwen.plugin", reason="the Qwen3 templates come from the qwen plugin (put plugins/qwen on the path)")

from tuneforge.api import ChatRequest, Reasoning, SamplingParams, resolve_bundle
from tuneforge.testing import WEATHER_TOOLS, plugin_installed, taught_model_dir

QUESTION = {"role": "user", "content": "What is the weather in Vienna?"}
REASONING = "The user wants the weather. A <tool_call> of get_weather gives it."
ANSWER = "Let me look."
CALL = {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Vienna"}}}


@pytest.fixture(scope="module")
def engine(tmp_path_factory, smollm2_dir):
    from tuneforge_qwen.testing import qwen_tokenizer_dir, tiny_qwen_dir
    from tuneforge_vllm.engine import VLLMEngine

    root = tmp_path_factory.mktemp("vllm-thinking")
    tokenizer = qwen_tokenizer_dir(root / "tokenizer", smollm2_dir)
    base = tiny_qwen_dir(root / "qwen3", "qwen3", tokenizer_dir=tokenizer, hidden_size=128, num_heads=2, num_kv_heads=1, head_dim=64, intermediate_size=256)
    lesson = [QUESTION, {"role": "assistant", "reasoning_content": REASONING, "content": ANSWER, "tool_calls": [CALL]}]
    with plugin_installed(qwen_plugin, "qwen", "tuneforge-qwen"):
        model = taught_model_dir(root / "taught", base_dir=base, template="qwen3", lessons=[(lesson, WEATHER_TOOLS)], learning_rate=1e-2)
        bundle = resolve_bundle(model)
    assert bundle.template_name == "qwen3"
    running = VLLMEngine(bundle, max_model_len=1024, enforce_eager=True)
    yield running
    running.close()


def request(max_tokens: int = 80, **options) -> ChatRequest:
    return ChatRequest([QUESTION], tools=WEATHER_TOOLS, sampling=SamplingParams(max_tokens=max_tokens), **options)


def parts(deltas) -> tuple[str, str]:
    return "".join(d for d in deltas if isinstance(d, Reasoning)), "".join(d for d in deltas if not isinstance(d, Reasoning))


def test_the_reasoning_comes_apart_and_the_call_is_read_from_the_answer(engine):
    [[answer]] = engine.generate([request()])
    assert (answer.reasoning, answer.text, answer.finish_reason) == (REASONING, ANSWER, "tool_calls")
    [call] = answer.tool_calls
    assert call["function"]["name"] == "get_weather" and json.loads(call["function"]["arguments"]) == {"city": "Vienna"}
    deltas = list(engine.stream(request()))
    assert parts(deltas) == (REASONING, ANSWER)
    reasoning_count = sum(isinstance(d, Reasoning) for d in deltas if d)
    assert reasoning_count > 3 and all(isinstance(d, Reasoning) for d in [d for d in deltas if d][:reasoning_count])
    [[raw]] = engine.generate([request(separate_reasoning=False)])
    assert raw.reasoning is None and raw.text.startswith(f"<think>\n{REASONING}\n</think>") and raw.token_ids == answer.token_ids


def test_an_answer_cut_inside_the_reasoning_is_all_reasoning(engine):
    [[cut]] = engine.generate([request(max_tokens=6)])
    assert cut.finish_reason == "length" and cut.text == "" and cut.reasoning and REASONING.startswith(cut.reasoning)
    assert parts(engine.stream(request(max_tokens=6))) == (cut.reasoning, "")
