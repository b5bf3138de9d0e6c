"""Logprobs and structured output (response_format, forced tool_choice), through a real server and the openai client.

The model has random weights: an answer that parses and validates against its
schema does so only because the grammar held every token to it. Schemas bound
their strings and arrays (maxLength, maxItems), so every answer can end well
within max_tokens.
"""

import json
import sys
from typing import Literal

import openai
import pytest
from pydantic import BaseModel, ConfigDict, Field

from tuneforge.errors import TuneforgeError
from tuneforge.inference import ChatRequest, SamplingParams
from tuneforge.inference.structured import INSTALL, StructuredOutput, check_features
from tuneforge.testing.server import Server

pytest.importorskip("outlines_core", reason=f"structured output needs outlines-core: {INSTALL}")

BASE = "tiny"
MAX_TOKENS = 160  # far above what the bounded schemas below can take


class Attendee(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(max_length=10)
    role: Literal["host", "guest", "viewer"]
    muted: bool


class Meeting(BaseModel):
    model_config = ConfigDict(extra="forbid")
    title: str = Field(max_length=12)
    room: Literal["small", "large", "online"]
    attendees: list[Attendee] = Field(max_length=2)
    tags: list[Literal["urgent", "weekly", "external"]] = Field(max_length=3)
    recurring: bool


TOOLS = [
    {"type": "function", "function": {"name": "mute", "description": "Mute or unmute the microphone.", "parameters": {
        "type": "object", "properties": {"on": {"type": "boolean"}}, "required": ["on"], "additionalProperties": False}}},
    {"type": "function", "function": {"name": "share_screen", "description": "Share a screen.", "parameters": {
        "type": "object", "properties": {"screen": {"enum": ["first", "second"]}, "audio": {"type": "boolean"},
                                        "window": {"type": "object", "properties": {"title": {"type": "string", "maxLength": 8}},
                                                   "required": ["title"], "additionalProperties": False}},
        "required": ["screen", "window"], "additionalProperties": False}}},
]


class MuteArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")
    on: bool


class Window(BaseModel):
    model_config = ConfigDict(extra="forbid")
    title: str = Field(max_length=8)


class ShareArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")
    screen: Literal["first", "second"]
    audio: bool | None = None
    window: Window


ARGUMENTS = {"mute": MuteArgs, "share_screen": ShareArgs}
PROMPTS = ["Book the small room tomorrow at ten.", "hi", "Mute me and share my second screen."]


@pytest.fixture(scope="module")
def server(varied_tiny_dir, tmp_path_factory):
    log = tmp_path_factory.mktemp("structured-server") / "server.log"
    running = Server(["--model", varied_tiny_dir, "--served-model-name", BASE], log)
    yield running
    assert running.stop() == 0, running.tail()


@pytest.fixture(scope="module")
def client(server):
    return server.client()


def ask(client, text, **kw):
    kw.setdefault("max_tokens", MAX_TOKENS)
    kw.setdefault("temperature", 0)
    return client.chat.completions.create(model=BASE, messages=[{"role": "user", "content": text}], **kw)


def meeting_format(strict=True):
    return {"type": "json_schema", "json_schema": {"name": "meeting", "schema": Meeting.model_json_schema(), "strict": strict}}


# -- logprobs ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def forward(varied_tiny_dir):
    """The same model, its template and tokenizer, loaded in the test for direct forward passes."""
    import torch

    from tuneforge.inference.text import prompt_ids
    from tuneforge.modeling import load_for_inference

    torch.set_num_threads(1)
    loaded = load_for_inference(varied_tiny_dir, torch_dtype="float32")

    def steps(text, entries):
        """For each entry, the forward pass's log-softmax at its position, the id of the token it names (same
        token text and logprob), then the prompt grows by that id."""
        request = ChatRequest(messages=[{"role": "user", "content": text}])
        ids = prompt_ids(loaded.template, loaded.tokenizer, request)
        out = []
        for entry in entries:
            with torch.inference_mode():
                logprobs = loaded.model(torch.tensor([ids])).logits[0, -1].float().log_softmax(-1)
            near = (logprobs - entry.logprob).abs() < 1e-3
            chosen = [i for i in near.nonzero().flatten().tolist() if loaded.tokenizer.decode([i]) == entry.token]
            assert chosen, f"no token {entry.token!r} with logprob {entry.logprob} at this position"
            out.append((logprobs, chosen[0]))
            ids.append(chosen[0])
        return out

    return steps


def test_logprobs_match_a_direct_forward_pass(client, forward):
    answer = ask(client, PROMPTS[0], max_tokens=6, logprobs=True, top_logprobs=5)
    [choice] = answer.choices
    entries = choice.logprobs.content
    assert len(entries) == answer.usage.completion_tokens - (choice.finish_reason == "stop")
    assert "".join(e.token for e in entries) == choice.message.content
    for entry, (logprobs, chosen) in zip(entries, forward(PROMPTS[0], entries)):
        top = logprobs.topk(5)
        assert [t.logprob for t in entry.top_logprobs] == pytest.approx(top.values.tolist(), abs=1e-3)
        assert [t.logprob for t in entry.top_logprobs] == sorted((t.logprob for t in entry.top_logprobs), reverse=True)
        assert entry.top_logprobs[0].token == entry.token  # greedy picks the most likely
        assert entry.bytes == list(entry.token.encode())
    plain = ask(client, PROMPTS[0], max_tokens=6)
    assert plain.choices[0].logprobs is None and plain.choices[0].message.content == choice.message.content


def test_logprobs_of_a_constrained_answer_are_the_models(client, forward):
    """The constraint picks tokens the model did not rank first; their logprobs are still the raw model's."""
    answer = ask(client, PROMPTS[1], logprobs=True, top_logprobs=2, response_format=meeting_format())
    [choice] = answer.choices
    Meeting.model_validate_json(choice.message.content)
    entries = choice.logprobs.content
    steps = forward(PROMPTS[1], entries[:8])
    assert any(chosen != logprobs.argmax().item() for logprobs, chosen in steps)  # held off the model's own choice
    for entry, (logprobs, chosen) in zip(entries, steps):
        assert entry.logprob == pytest.approx(logprobs[chosen].item(), abs=1e-3)
        assert [t.logprob for t in entry.top_logprobs] == pytest.approx(logprobs.topk(2).values.tolist(), abs=1e-3)


def test_streamed_logprobs_come_with_the_answer(client):
    whole = ask(client, PROMPTS[2], max_tokens=5, logprobs=True, top_logprobs=1)
    chunks = list(ask(client, PROMPTS[2], max_tokens=5, logprobs=True, top_logprobs=1, stream=True))
    content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    carrying = [c for c in chunks if c.choices and c.choices[0].logprobs]
    streamed = [e for c in carrying for e in c.choices[0].logprobs.content]
    assert len(carrying) > 1  # with the text as it comes, not in one chunk at the end
    assert content == whole.choices[0].message.content
    assert [(e.token, e.logprob) for e in streamed] == [(e.token, e.logprob) for e in whole.choices[0].logprobs.content]


# -- response_format ----------------------------------------------------------------------


def test_json_schema_answers_validate(client):
    answers = [ask(client, text, response_format=meeting_format()) for text in PROMPTS]
    answers += [ask(client, PROMPTS[0], response_format=meeting_format(strict=False), temperature=1.0, seed=seed) for seed in (1, 2, 3)]
    meetings = []
    for answer in answers:
        [choice] = answer.choices
        assert choice.finish_reason == "stop", choice.message.content
        meetings.append(Meeting.model_validate_json(choice.message.content))
    assert len({m.model_dump_json() for m in meetings}) > 1  # the sampled ones differ: the grammar allows, the model picks
    free = ask(client, PROMPTS[0], max_tokens=24).choices[0].message.content
    with pytest.raises(ValueError):
        Meeting.model_validate_json(free)  # without the constraint the random model writes no such thing


def test_json_object_answers_parse(client):
    for text in PROMPTS:
        answer = ask(client, text, response_format={"type": "json_object"}, max_tokens=48)
        [choice] = answer.choices
        if choice.finish_reason == "stop":
            assert isinstance(json.loads(choice.message.content), dict)
        else:  # an unbounded string may run into max_tokens: cut JSON, never other text
            assert choice.finish_reason == "length" and choice.message.content.startswith("{")
    assert ask(client, PROMPTS[0], response_format={"type": "text"}, max_tokens=4).choices[0].finish_reason == "length"


def test_a_streamed_json_schema_answer_validates(client):
    chunks = list(ask(client, PROMPTS[1], response_format=meeting_format(), stream=True))
    content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert content == ask(client, PROMPTS[1], response_format=meeting_format()).choices[0].message.content
    Meeting.model_validate_json(content)


# -- tool_choice --------------------------------------------------------------------------


def check_calls(choice, names):
    assert choice.finish_reason == "tool_calls" and not choice.message.content
    assert choice.message.tool_calls
    for call in choice.message.tool_calls:
        assert call.type == "function" and call.id.startswith("call_")
        assert call.function.name in names
        ARGUMENTS[call.function.name].model_validate_json(call.function.arguments)


def test_tool_choice_required_calls_a_tool(client):
    for text in PROMPTS:
        single = ask(client, text, tools=TOOLS, tool_choice="required", parallel_tool_calls=False).choices[0]
        check_calls(single, {"mute", "share_screen"})
        assert len(single.message.tool_calls) == 1
    # Parallel calls: a list without a bound, which a random model may not close before max_tokens.
    parallel = ask(client, PROMPTS[2], tools=TOOLS, tool_choice="required", max_tokens=48).choices[0]
    if parallel.finish_reason == "length":
        assert parallel.message.content.startswith("[") and not parallel.message.tool_calls
    else:
        check_calls(parallel, {"mute", "share_screen"})


def test_a_named_tool_choice_calls_that_function(client):
    for text in PROMPTS[:2]:
        answer = ask(client, text, tools=TOOLS, tool_choice={"type": "function", "function": {"name": "share_screen"}})
        check_calls(answer.choices[0], {"share_screen"})
        assert len(answer.choices[0].message.tool_calls) == 1
    chunks = list(ask(client, PROMPTS[0], tools=TOOLS, tool_choice={"type": "function", "function": {"name": "mute"}}, stream=True))
    calls = [call for c in chunks if c.choices for call in c.choices[0].delta.tool_calls or ()]
    # OpenAI's shape: the first delta names the call, the next ones carry pieces of its arguments.
    assert calls[0].id.startswith("call_") and calls[0].function.name == "mute" and calls[0].function.arguments == ""
    assert len(calls) > 2 and {call.index for call in calls} == {0} and all(call.function.name is None for call in calls[1:])
    MuteArgs.model_validate_json("".join(call.function.arguments for call in calls))
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["tool_calls"]


def test_forced_tool_calls_and_logprobs_stream_token_by_token(client):
    """The openai client's own stream helper accumulates the deltas into the answer the request gets whole."""
    kw = dict(model=BASE, messages=[{"role": "user", "content": PROMPTS[2]}], tools=TOOLS, tool_choice="required",
              max_tokens=MAX_TOKENS, temperature=0, logprobs=True, top_logprobs=2)
    whole = client.chat.completions.create(**kw, parallel_tool_calls=False).choices[0]
    with client.chat.completions.stream(**kw, parallel_tool_calls=False) as stream:
        events = list(stream)
        final = stream.get_final_completion().choices[0]
    argument_pieces = [e for e in events if e.type == "tool_calls.function.arguments.delta"]
    logprob_chunks = [e for e in events if e.type == "chunk" and e.chunk.choices and e.chunk.choices[0].logprobs]
    assert len(argument_pieces) > 2 and len(logprob_chunks) > 2  # token by token, not one chunk at the end
    check_calls(final, {"mute", "share_screen"})
    assert [(c.function.name, json.loads(c.function.arguments)) for c in final.message.tool_calls] == \
        [(c.function.name, json.loads(c.function.arguments)) for c in whole.message.tool_calls]
    streamed = [e for c in logprob_chunks for e in c.chunk.choices[0].logprobs.content]
    assert [(e.token, e.logprob, [t.token for t in e.top_logprobs]) for e in streamed] == \
        [(e.token, e.logprob, [t.token for t in e.top_logprobs]) for e in whole.logprobs.content]


# -- refusals -----------------------------------------------------------------------------


@pytest.mark.parametrize("fields, param, words", [
    ({"top_logprobs": 2}, "top_logprobs", "unless 'logprobs' is true"),
    ({"logprobs": True, "top_logprobs": 21}, "top_logprobs", "from 0 to 20"),
    ({"response_format": {"type": "xml"}}, "response_format", "json_schema"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x"}}}, "response_format", "give the schema"),
    ({"tool_choice": "required"}, "tool_choice", "has no 'tools'"),
    ({"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "unmute"}}}, "tool_choice", "not among the tools (mute, share_screen)"),
    ({"tools": TOOLS, "tool_choice": "required", "response_format": {"type": "json_object"}}, "response_format", "give one of them"),
])
def test_bad_requests_are_refused(client, fields, param, words):
    with pytest.raises(openai.BadRequestError) as caught:
        ask(client, "hi", max_tokens=4, **fields)
    assert caught.value.body["param"] == param and words in caught.value.body["message"]


def test_completions_refuse_logprobs(client):
    with pytest.raises(openai.BadRequestError) as caught:
        client.completions.create(model=BASE, prompt="hi", max_tokens=2, logprobs=2)
    assert "/v1/chat/completions" in caught.value.body["message"]


def test_without_outlines_core_the_engine_names_the_install(tiny_llama_dir, monkeypatch):
    from tuneforge.inference import create_engine

    engine = create_engine("pt", tiny_llama_dir)
    try:
        monkeypatch.setitem(sys.modules, "outlines_core", None)  # as if it were not installed
        request = ChatRequest(messages=[{"role": "user", "content": "hi"}],
                              sampling=SamplingParams(max_tokens=4, structured=StructuredOutput({"type": "object"})))
        with pytest.raises(TuneforgeError, match=r"needs outlines-core.*pip install 'tuneforge\[structured\]'"):
            engine.generate([request])
    finally:
        engine.close()


def test_an_engine_without_the_features_refuses():
    class Plain:  # an engine that declares no features
        pass

    for sampling, words in [(SamplingParams(structured=StructuredOutput({"type": "object"})), "does not enforce structured output"),
                            (SamplingParams(logprobs=True), "does not return logprobs")]:
        with pytest.raises(TuneforgeError, match=words):
            check_features(Plain(), [ChatRequest(messages=[{"role": "user", "content": "hi"}], sampling=sampling)])


@pytest.mark.parametrize("schema, words", [
    ({"type": "object", "properties": {"note": {"type": "string", "maxLength": 1000}}}, "bounds a string, list or number at 1000"),
    ({"type": "object", "properties": {"a": {"type": "frob"}}}, "cannot be enforced (Unsupported type: frob)"),
])
def test_schemas_the_engine_cannot_index_are_refused(client, schema, words):
    with pytest.raises(openai.BadRequestError) as caught:
        ask(client, "hi", max_tokens=4, response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": schema}})
    assert words in caught.value.body["message"]
    assert ask(client, "hi", max_tokens=2).choices[0].finish_reason == "length"  # the server goes on
