"""Structured output through vLLM's own guided decoding, and logprobs from vLLM: `tuneforge deploy --engine vllm`
and the openai client, and the engine beside a direct forward pass of the same model.

The model has random weights: an answer that parses and validates against its schema
does so only because vLLM held every token to the regular expression tuneforge gave
it. Schemas bound their strings and arrays, so every answer can end within max_tokens.
"""

import json
from typing import Literal

import pytest

pytest.importorskip("vllm", reason="vLLM is not installed here; the README's test command runs these tests in .venv-vllm")
pytest.importorskip("outlines_core", reason="tuneforge builds the guided regex with outlines-core")

from pydantic import BaseModel, ConfigDict, Field

from tuneforge.api import ChatRequest, SamplingParams, StructuredOutput, TuneforgeError, create_engine, guided_regex
from tuneforge.testing.server import Server

BASE = "tiny"


class Guest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(max_length=8)
    seat: Literal["aisle", "window"]


class Booking(BaseModel):
    model_config = ConfigDict(extra="forbid")
    room: Literal["cedar", "oak", "online"]
    hour: int
    guests: list[Guest] = Field(max_length=2)
    confirmed: bool


SET_VOLUME = {"type": "function", "function": {"name": "set_volume", "description": "Set the volume.", "parameters": {
    "type": "object", "properties": {"level": {"type": "integer"}, "device": {"enum": ["speaker", "headset"]}},
    "required": ["level", "device"], "additionalProperties": False}}}
RAISE_HAND = {"type": "function", "function": {"name": "raise_hand", "description": "Raise your hand.", "parameters": {
    "type": "object", "properties": {}, "additionalProperties": False}}}
TOOLS = [SET_VOLUME, RAISE_HAND]
PROMPTS = ["Book Cedar at ten for Ana.", "hi", "Turn the headset up to 7."]


@pytest.fixture(scope="module")
def server(vllm_tiny_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("vllm-structured")
    args = ["--model", vllm_tiny_dir, "--engine", "vllm", "--served-model-name", BASE,
            "--engine-option", "max_model_len=1024", "--engine-option", "enforce_eager=true", "--engine-option", "dtype=float32",
            "--max-tokens", "120"]
    running = Server(args, root / "server.log", timeout=600)
    yield running
    assert running.stop() == 0, running.tail()


def ask(client, text, **kw):
    kw.setdefault("max_tokens", 120)
    kw.setdefault("temperature", 0)
    return client.chat.completions.create(model=BASE, messages=[{"role": "user", "content": text}], **kw)


def test_json_schema_answers_validate(server):
    client = server.client()
    booking = {"type": "json_schema", "json_schema": {"name": "booking", "schema": Booking.model_json_schema(), "strict": True}}
    answers = [ask(client, text, response_format=booking) for text in PROMPTS]
    answers += [ask(client, PROMPTS[0], response_format=booking, temperature=1.0, seed=seed) for seed in (1, 2)]
    for answer in answers:
        [choice] = answer.choices
        assert choice.finish_reason == "stop", choice.message.content
        Booking.model_validate_json(choice.message.content)
    free = ask(client, PROMPTS[0], max_tokens=24).choices[0].message.content
    with pytest.raises(ValueError):
        Booking.model_validate_json(free)  # without the constraint the random model writes no such thing
    anything = ask(client, PROMPTS[1], response_format={"type": "json_object"}, max_tokens=48).choices[0]
    if anything.finish_reason == "stop":
        assert isinstance(json.loads(anything.message.content), dict)
    else:  # an unbounded string may run into max_tokens: cut JSON, never other text
        assert anything.message.content.startswith("{")


def test_a_forced_tool_choice_calls_a_tool_with_valid_arguments(server):
    client = server.client()
    for text in PROMPTS:
        [choice] = ask(client, text, tools=TOOLS, tool_choice="required", parallel_tool_calls=False).choices
        assert choice.finish_reason == "tool_calls" and len(choice.message.tool_calls) == 1, choice.message
        call = choice.message.tool_calls[0].function
        arguments = json.loads(call.arguments)
        assert call.name in ("set_volume", "raise_hand")
        if call.name == "set_volume":
            assert set(arguments) == {"level", "device"} and isinstance(arguments["level"], int)
            assert arguments["device"] in ("speaker", "headset")
        else:
            assert arguments == {}
    named = {"type": "function", "function": {"name": "set_volume"}}
    [choice] = ask(client, PROMPTS[1], tools=TOOLS, tool_choice=named).choices
    assert [c.function.name for c in choice.message.tool_calls] == ["set_volume"]
    assert json.loads(choice.message.tool_calls[0].function.arguments)["device"] in ("speaker", "headset")


def test_the_engine_gives_vllm_the_regex_the_pt_engine_enforces(vllm_tiny_dir):
    """The same constraint on both engines: vLLM's answer matches the regex, and a schema it cannot take is named."""
    import re

    structured = StructuredOutput(Booking.model_json_schema())
    pattern = re.compile(guided_regex(structured))
    engine = create_engine("vllm", vllm_tiny_dir, max_model_len=1024, enforce_eager=True)
    try:
        [[answer]] = engine.generate([ChatRequest([{"role": "user", "content": "hi"}],
                                                  sampling=SamplingParams(max_tokens=120, structured=structured))])
        assert pattern.fullmatch(answer.text), answer.text
        unknown = StructuredOutput({"type": "object", "properties": {"a": {"type": "frob"}}}, source="response_format")
        with pytest.raises(TuneforgeError, match=r"'response_format' cannot be enforced \(Unsupported type: frob\)"):
            engine.generate([ChatRequest([{"role": "user", "content": "hi"}], sampling=SamplingParams(max_tokens=4, structured=unknown))])
    finally:
        engine.close()


def test_logprobs_are_the_models_and_stream_with_their_tokens(server, vllm_tiny_dir):
    import torch

    from tuneforge.api import load_for_inference, prompt_ids

    client = server.client()
    whole = ask(client, PROMPTS[2], max_tokens=8, logprobs=True, top_logprobs=3).choices[0]
    entries = whole.logprobs.content
    assert len(entries) == 8 and "".join(e.token for e in entries) == whole.message.content
    # the same model in transformers: each token's log-softmax at its position, the prompt growing by the answer
    loaded = load_for_inference(vllm_tiny_dir, torch_dtype="float32")
    ids = prompt_ids(loaded.template, loaded.tokenizer, ChatRequest([{"role": "user", "content": PROMPTS[2]}]))
    for entry in entries:
        with torch.inference_mode():
            logprobs = loaded.model(torch.tensor([ids])).logits[0, -1].float().log_softmax(-1)
        token = int(logprobs.argmax())  # greedy: the answer's token is the most likely one
        assert loaded.tokenizer.decode([token]) == entry.token
        assert abs(float(logprobs[token]) - entry.logprob) < 1e-2
        top = logprobs.topk(3)
        assert [loaded.tokenizer.decode([t]) for t in top.indices.tolist()] == [t.token for t in entry.top_logprobs]
        assert all(abs(a - t.logprob) < 1e-2 for a, t in zip(top.values.tolist(), entry.top_logprobs)), (top.values.tolist(), [t.logprob for t in entry.top_logprobs], entry.logprob)
        ids.append(token)
    chunks = list(ask(client, PROMPTS[2], max_tokens=8, logprobs=True, top_logprobs=3, stream=True))
    streamed = [e for c in chunks if c.choices and c.choices[0].logprobs for e in c.choices[0].logprobs.content]
    assert [(e.token, round(e.logprob, 4)) for e in streamed] == [(e.token, round(e.logprob, 4)) for e in entries]
    # token by token: no chunk carries more than the tokens its text shows
    assert sum(1 for c in chunks if c.choices and c.choices[0].logprobs and c.choices[0].logprobs.content) > 1
