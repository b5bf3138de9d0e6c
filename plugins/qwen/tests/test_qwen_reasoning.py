"""A Qwen3 model's reasoning comes apart from its answer: in the server's messages and deltas, and in infer's rows.

The model is a tiny Qwen3 taught one answer (a think block that mentions
``<tool_call>``, a sentence, then a real call), so what it writes is known; the
server is a real ``tuneforge deploy`` called by the official openai client.
"""

import json

import pytest
import tuneforge_qwen.plugin
from tuneforge.api import ChatRequest, Completion, Reasoning, SamplingParams, create_engine
from tuneforge.api import AnswerStream, finish_completion
from tuneforge.testing import WEATHER_TOOLS, plugin_installed, registry, taught_model_dir
from tuneforge.testing.server import Server
from tuneforge_qwen.testing import tiny_qwen_dir

QUESTION = {"role": "user", "content": "What is the weather in Vienna?"}
REASONING = "The user wants the weather. A <tool_call> of get_weather gives it."
ANSWER = "Let me look."
CALL = {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Vienna"}}}
GENERATED = f'<think>\n{REASONING}\n</think>\n\n{ANSWER}\n<tool_call>\n{{"name": "get_weather", "arguments": {{"city": "Vienna"}}}}\n</tool_call>'
SERVED = "qwen3"
ENV = {"TUNEFORGE_LOAD_PLUGINS": "qwen"}


def installed():
    return plugin_installed(tuneforge_qwen.plugin, "qwen", "tuneforge-qwen")


@pytest.fixture(scope="module")
def thinking_model(qwen_tokenizer_dir, tmp_path_factory):
    """A Qwen3 checkpoint that answers QUESTION (with WEATHER_TOOLS) with GENERATED, greedily."""
    root = tmp_path_factory.mktemp("thinking")
    base = tiny_qwen_dir(root / "qwen3", "qwen3", tokenizer_dir=qwen_tokenizer_dir)
    lesson = [QUESTION, {"role": "assistant", "reasoning_content": REASONING, "content": ANSWER, "tool_calls": [CALL]}]
    with installed():
        return taught_model_dir(root / "taught", base_dir=base, template="qwen3", lessons=[(lesson, WEATHER_TOOLS)], learning_rate=1e-2)


@pytest.fixture(scope="module")
def template(thinking_model):
    from transformers import AutoTokenizer

    with installed() as manager:
        return registry(manager).get("chat_templates", "qwen3").build(AutoTokenizer.from_pretrained(thinking_model))


@pytest.fixture(scope="module")
def server(thinking_model, tmp_path_factory):
    running = Server(["--model", thinking_model, "--served-model-name", SERVED], tmp_path_factory.mktemp("server") / "server.log", env=ENV)
    yield running
    assert running.stop() == 0, running.tail()


def ask(client, **kw):
    kw.setdefault("max_tokens", 80)
    return client.chat.completions.create(model=SERVED, messages=[QUESTION], tools=WEATHER_TOOLS, temperature=0, **kw)


def streamed(client, **kw):
    """(reasoning deltas, content deltas, tool calls, the kinds in order, finish_reason, usage) of a streamed answer."""
    reasoning, content, calls, kinds, finish, usage = [], [], [], [], None, None
    for chunk in ask(client, stream=True, stream_options={"include_usage": True}, **kw):
        usage = chunk.usage or usage
        if not chunk.choices:
            continue
        delta, finish = chunk.choices[0].delta, chunk.choices[0].finish_reason or finish
        if getattr(delta, "reasoning_content", None):
            reasoning.append(delta.reasoning_content)
            kinds.append("reasoning")
        if delta.content:
            content.append(delta.content)
            kinds.append("content")
        calls += delta.tool_calls or []
    return reasoning, content, calls, kinds, finish, usage


def expected_usage(template, completion_text, **prompt_options):
    prompt = len(template.prompt([QUESTION], tools=WEATHER_TOOLS, **prompt_options))
    completion = len(template.tokenizer(completion_text, add_special_tokens=False)["input_ids"]) + 1  # and <|im_end|>
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def test_the_reasoning_comes_in_reasoning_content_and_the_answer_in_content(server, template):
    answer = ask(server.client())
    choice = answer.choices[0]
    message = choice.message
    assert message.model_extra["reasoning_content"] == REASONING, server.tail()
    assert message.reasoning_content == REASONING  # what a client reads as an attribute, too
    assert message.content == ANSWER
    [call] = message.tool_calls  # parsed from the answer: the <tool_call> of the reasoning is no call
    assert call.function.name == "get_weather" and json.loads(call.function.arguments) == {"city": "Vienna"}
    assert choice.finish_reason == "tool_calls"
    assert answer.usage.model_dump(exclude_none=True) == expected_usage(template, GENERATED)  # the reasoning's tokens count


def test_a_stream_sends_reasoning_deltas_then_content_deltas(server):
    whole = ask(server.client())
    reasoning, content, calls, kinds, finish, usage = streamed(server.client())
    assert "".join(reasoning) == whole.choices[0].message.reasoning_content == REASONING
    assert "".join(content) == whole.choices[0].message.content == ANSWER
    assert len(reasoning) > 3 and kinds == ["reasoning"] * len(reasoning) + ["content"] * len(content)  # token by token, in order
    assert not any(marker in delta for delta in reasoning + content for marker in ("<think>", "</think>", "\n\n"))
    [call] = calls
    assert call.function.name == "get_weather" and json.loads(call.function.arguments) == {"city": "Vienna"}
    assert finish == "tool_calls" and usage == whole.usage


def test_several_choices_streamed_each_carry_their_reasoning(server):
    chunks = list(ask(server.client(), n=2, stream=True))
    for index in (0, 1):
        deltas = [c.choices[0].delta for c in chunks if c.choices and c.choices[0].index == index]
        assert "".join(getattr(d, "reasoning_content", None) or "" for d in deltas) == REASONING
        assert "".join(d.content or "" for d in deltas) == ANSWER


def test_a_stream_cut_inside_the_reasoning_ends_with_length(server, template):
    whole = ask(server.client(), max_tokens=6)
    reasoning, content, calls, kinds, finish, usage = streamed(server.client(), max_tokens=6)
    message = whole.choices[0].message
    assert whole.choices[0].finish_reason == finish == "length"
    assert message.reasoning_content and REASONING.startswith(message.reasoning_content)
    assert message.content is None and not content and not calls
    assert "".join(reasoning) == message.reasoning_content
    assert usage.completion_tokens == whole.usage.completion_tokens == 6


def test_include_reasoning_false_gives_the_text_as_generated(server):
    client = server.client()
    raw = ask(client, extra_body={"include_reasoning": False})
    message = raw.choices[0].message
    assert "reasoning_content" not in (message.model_extra or {})
    assert message.content.startswith(f"<think>\n{REASONING}\n</think>\n\n{ANSWER}")
    reasoning, content, *_ = streamed(client, extra_body={"include_reasoning": False})
    assert not reasoning and "".join(content) == message.content
    assert raw.usage == ask(client).usage


def test_thinking_off_leaves_no_reasoning_to_split(server, template):
    off = ask(server.client(), max_tokens=20, extra_body={"chat_template_kwargs": {"enable_thinking": False}})
    message = off.choices[0].message
    assert message.model_extra.get("reasoning_content") is None
    assert off.usage.prompt_tokens == len(template.prompt([QUESTION], tools=WEATHER_TOOLS, enable_thinking=False))
    raw = ask(server.client(), max_tokens=20, extra_body={"chat_template_kwargs": {"enable_thinking": False}, "include_reasoning": False})
    assert message.content == raw.choices[0].message.content  # the answer as generated: nothing was taken out


def test_a_bad_include_reasoning_is_refused(server):
    response = server.post("/v1/chat/completions", {"model": SERVED, "messages": [QUESTION], "include_reasoning": "no"})
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["param"] == "include_reasoning" and "'include_reasoning' is 'no'; it must be true" in error["message"]


def test_a_server_without_the_reasoning_field_answers_as_generated(thinking_model, tmp_path):
    server = Server(["--model", thinking_model, "--served-model-name", SERVED, "--no-reasoning-field"], tmp_path / "server.log", env=ENV)
    try:
        client = server.client()
        raw = ask(client).choices[0].message
        assert "reasoning_content" not in (raw.model_extra or {}), server.tail()
        assert raw.content.startswith(f"<think>\n{REASONING}\n</think>")
        asked = ask(client, extra_body={"include_reasoning": True}).choices[0].message  # a request may still ask for it
        assert (asked.reasoning_content, asked.content) == (REASONING, ANSWER)
    finally:
        assert server.stop() == 0, server.tail()


def test_infer_writes_the_reasoning_beside_the_answer(thinking_model, tmp_path):
    from tuneforge.testing import run_cli

    requests = tmp_path / "requests.jsonl"
    requests.write_text(json.dumps({"messages": [QUESTION], "tools": WEATHER_TOOLS, "reasoning": "the row's own"}) + "\n")
    with installed():
        for template, output in (("qwen3", tmp_path / "split.jsonl"), ("qwen2_5", tmp_path / "plain.jsonl")):
            run_cli("infer", "--model", thinking_model, "--template", template, "--input", requests, "--output", output, "--max-new-tokens", "80")
    [split] = [json.loads(line) for line in (tmp_path / "split.jsonl").read_text().splitlines()]
    assert (split["reasoning"], split["answer"], split["finish_reason"]) == (REASONING, ANSWER, "tool_calls")
    assert split["input_reasoning"] == "the row's own"
    [plain] = [json.loads(line) for line in (tmp_path / "plain.jsonl").read_text().splitlines()]
    assert plain["reasoning"] == "the row's own" and "input_reasoning" not in plain  # a template that parses no reasoning: as before


# -- the shared layer, on the Qwen3 template: every way a text can arrive ------------------------


def pieces(text: str, size: int) -> list[str]:
    """The growing text, ``size`` characters more at a time (a marker may arrive split)."""
    return [text[:end] for end in range(size, len(text) + size, size)]


@pytest.mark.parametrize("size", [1, 2, 3, 7])
@pytest.mark.parametrize(
    "text, reasoning, answer, tools",
    [
        (GENERATED + "<|im_end|>", REASONING, ANSWER, WEATHER_TOOLS),
        ("<think>\nFirst.\n\nSecond.\n</think>\n\nYes.<|im_end|>", "First.\n\nSecond.", "Yes.", None),
        ("\n<think>\nCut in the middle\n", "Cut in the middle", "", None),
        ("<think>\n\n</think>\n\nDirect.", "", "Direct.", None),
        ("Direct, though it names </think> and <think>.", None, "Direct, though it names </think> and <think>.", None),
        ("<thinking aloud", None, "<thinking aloud", None),
    ],
)
def test_streamed_parts_join_to_the_completions(template, text, reasoning, answer, tools, size):
    request = ChatRequest([QUESTION], tools=tools)
    stream = AnswerStream(template, request, stops=("<|im_end|>",))
    deltas = [delta for piece in pieces(text, size) for delta in stream.push(piece)]
    cut = text.split("<|im_end|>")[0]
    completion = finish_completion(Completion(cut, [], "stop" if "<|im_end|>" in text else "length", 1, 1), template, request)
    deltas += stream.finish(completion)
    assert (completion.reasoning, completion.text) == (reasoning, answer)
    shown_reasoning = [d for d in deltas if isinstance(d, Reasoning)]
    assert "".join(shown_reasoning) == (reasoning or "") and "".join(d for d in deltas if not isinstance(d, Reasoning)) == answer
    assert deltas[: len(shown_reasoning)] == shown_reasoning  # the reasoning first
    if size == 1 and reasoning:
        assert len(shown_reasoning) > 1  # shown as it grows, not at the end
    assert stream.stopped == ("<|im_end|>" in text)


def test_the_engine_separates_the_reasoning_unless_asked_not_to(thinking_model):
    with installed():
        engine = create_engine("pt", thinking_model)
        try:
            request = ChatRequest([QUESTION], tools=WEATHER_TOOLS, sampling=SamplingParams(max_tokens=80))
            [[separated]], [[raw]] = engine.generate([request]), engine.generate([ChatRequest([QUESTION], tools=WEATHER_TOOLS, sampling=SamplingParams(max_tokens=80), separate_reasoning=False)])
            deltas = list(engine.stream(request))
        finally:
            engine.close()
    assert (separated.reasoning, separated.text, separated.finish_reason) == (REASONING, ANSWER, "tool_calls")
    assert raw.reasoning is None and raw.text.startswith("<think>") and raw.token_ids == separated.token_ids
    assert "".join(d for d in deltas if isinstance(d, Reasoning)) == REASONING
    assert "".join(d for d in deltas if not isinstance(d, Reasoning)) == ANSWER
