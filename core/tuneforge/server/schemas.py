"""Read OpenAI request bodies into engine requests, checking every field.

A field of the wrong type, out of range, unknown or not supported here is refused
with a 400 that names it; nothing reaches the engine unchecked.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping

from ..errors import TuneforgeError
from ..inference import ChatRequest, SamplingError, SamplingParams
from .errors import bad_request

MAX_N = 16  # completions per request; more would hold the engine for everyone else

# Fields every endpoint takes.
_SAMPLING_FIELDS = {
    "model", "max_tokens", "temperature", "top_p", "top_k", "repetition_penalty", "seed", "n", "stop",
    "stream", "stream_options", "user", "presence_penalty", "frequency_penalty", "logprobs", "logit_bias",
}
CHAT_FIELDS = _SAMPLING_FIELDS | {"messages", "max_completion_tokens", "top_logprobs", "response_format", "tools", "tool_choice", "parallel_tool_calls", "chat_template_kwargs"}
COMPLETION_FIELDS = _SAMPLING_FIELDS | {"prompt", "echo", "suffix", "best_of"}


@dataclass
class ParsedRequest:
    """What an endpoint needs: the model name, one engine request per prompt, and how to answer."""

    model: str | None
    requests: list[ChatRequest]
    stream: bool
    include_usage: bool


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _describe(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _expect(ok: bool, name: str, value: Any, expected: str) -> None:
    if not ok:
        raise bad_request(f"'{name}' is {_describe(value)}; it must be {expected}.", param=name)


def _unsupported(name: str, value: Any, allowed: str) -> None:
    raise bad_request(f"'{name}' is {_describe(value)}, which this server does not support; {allowed}.", param=name, code="unsupported_parameter")


def _check_fields(body: Mapping[str, Any], known: set[str]) -> None:
    for key in body:
        if key not in known:
            raise bad_request(f"Unrecognized request argument '{key}'; leave it out (see docs/serving.md for the fields this server takes).", param=key, code="unknown_parameter")


def _sampling(body: Mapping[str, Any], default_max_tokens: int, *, max_tokens_key: str = "max_tokens") -> SamplingParams:
    max_tokens = body.get(max_tokens_key)
    if max_tokens is None and max_tokens_key != "max_tokens":
        max_tokens_key, max_tokens = "max_tokens", body.get("max_tokens")
    given = max_tokens is not None
    if given:
        _expect(_is_int(max_tokens) and max_tokens >= 1, max_tokens_key, max_tokens, "an integer of at least 1")
    temperature = body.get("temperature")
    if temperature is not None:
        _expect(_is_number(temperature) and 0 <= temperature <= 2, "temperature", temperature, "a number from 0 to 2")
    top_p = body.get("top_p")
    if top_p is not None:
        _expect(_is_number(top_p) and 0 < top_p <= 1, "top_p", top_p, "a number above 0 and at most 1")
    top_k = body.get("top_k")
    if top_k is not None:
        _expect(_is_int(top_k) and top_k >= 0, "top_k", top_k, "an integer of at least 0 (0: off)")
    penalty = body.get("repetition_penalty")
    if penalty is not None:
        _expect(_is_number(penalty) and penalty > 0, "repetition_penalty", penalty, "a number above 0 (1: off)")
    seed = body.get("seed")
    if seed is not None:
        _expect(_is_int(seed), "seed", seed, "an integer")
    n = body.get("n")
    if n is not None:
        _expect(_is_int(n) and 1 <= n <= MAX_N, "n", n, f"an integer from 1 to {MAX_N}")
    stop = body.get("stop")
    if stop is not None:
        _expect(
            isinstance(stop, str) and stop or isinstance(stop, list) and len(stop) <= 4 and all(isinstance(s, str) and s for s in stop),
            "stop", stop, "a non-empty string or a list of at most 4 non-empty strings",
        )
    penalties = {}
    for name in ("presence_penalty", "frequency_penalty"):
        value = body.get(name)
        if value is not None:
            _expect(_is_number(value) and -2 <= value <= 2, name, value, "a number from -2 to 2")
            penalties[name] = value
    if body.get("logprobs") not in (None, False):
        _unsupported("logprobs", body["logprobs"], "leave it out")
    if body.get("logit_bias"):
        _unsupported("logit_bias", body["logit_bias"], "leave it out")
    if body.get("user") is not None:
        _expect(isinstance(body["user"], str), "user", body["user"], "a string")
    values = dict(
        max_tokens=max_tokens if given else default_max_tokens,
        temperature=1.0 if temperature is None else temperature,
        top_p=1.0 if top_p is None else top_p,
        top_k=top_k or 0,
        repetition_penalty=1.0 if penalty is None else penalty,
        stop=stop or (),
        seed=seed,
        n=n or 1,
        fit_context=not given,  # an unset max_tokens takes what the context leaves, up to the default
        **penalties,
    )
    try:
        return SamplingParams(**values)
    except SamplingError as exc:  # the checks above should catch everything first
        raise bad_request(str(exc), param=exc.name) from None


def _stream_options(body: Mapping[str, Any]) -> tuple[bool, bool]:
    stream = body.get("stream")
    if stream is not None:
        _expect(isinstance(stream, bool), "stream", stream, "true or false")
    options = body.get("stream_options")
    include_usage = False
    if options is not None:
        _expect(isinstance(options, dict), "stream_options", options, "an object such as {\"include_usage\": true}")
        _expect(bool(stream), "stream_options", options, "left out unless 'stream' is true")
        for key, value in options.items():
            if key != "include_usage":
                _unsupported(f"stream_options.{key}", value, "only include_usage is supported")
            _expect(isinstance(value, bool), "stream_options.include_usage", value, "true or false")
            include_usage = value
    return bool(stream), include_usage


def _model(body: Mapping[str, Any]) -> str | None:
    model = body.get("model")
    if model is not None:
        _expect(isinstance(model, str) and model, "model", model, "a model name from GET /v1/models")
    return model


def _content(index: int, content: Any) -> str:
    name = f"messages[{index}].content"
    if isinstance(content, str):
        return content
    if content is None:
        return ""
    if isinstance(content, list):
        texts = []
        for part in content:
            if isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str):
                texts.append(part["text"])
            else:
                _unsupported(name, part, "give the content as a string or a list of {\"type\": \"text\", \"text\": ...} parts")
        return "".join(texts)
    _expect(False, name, content, "a string or a list of text parts")
    return ""


def _message(i: int, message: Any) -> dict:
    """One message of a chat, checked: system/developer, user, assistant (with tool_calls) or tool."""
    _expect(isinstance(message, dict), f"messages[{i}]", message, "an object with 'role' and 'content'")
    role = message.get("role")
    _expect(role in ("system", "developer", "user", "assistant", "tool"), f"messages[{i}].role", role, "one of 'system', 'user', 'assistant', 'tool'")
    clean = {"role": "system" if role == "developer" else role, "content": _content(i, message.get("content"))}
    if message.get("function_call") is not None:
        _unsupported(f"messages[{i}].function_call", message["function_call"], "send the call in 'tool_calls'")
    calls = message.get("tool_calls")
    if calls is not None:
        _expect(role == "assistant", f"messages[{i}].tool_calls", calls, "left out of a message whose role is not 'assistant'")
        _expect(
            isinstance(calls, list) and all(isinstance(c, dict) and isinstance(c.get("function"), dict) and isinstance(c["function"].get("name"), str) for c in calls),
            f"messages[{i}].tool_calls", calls, "a list of {\"id\", \"type\": \"function\", \"function\": {\"name\", \"arguments\"}} objects",
        )
        clean["tool_calls"] = calls
    if role == "tool":
        for key in ("tool_call_id", "name"):
            if message.get(key) is not None:
                _expect(isinstance(message[key], str), f"messages[{i}].{key}", message[key], "a string")
                clean[key] = message[key]
    return clean


def _tools(body: Mapping[str, Any]) -> list | None:
    """The request's tools, as the chat template renders them (None: no tools, or tool_choice 'none')."""
    tools = body.get("tools")
    if tools is not None:
        _expect(
            isinstance(tools, list) and all(isinstance(t, dict) and t.get("type") == "function" and isinstance(t.get("function"), dict) and isinstance(t["function"].get("name"), str) for t in tools),
            "tools", tools, "a list of {\"type\": \"function\", \"function\": {\"name\", \"description\", \"parameters\"}} objects",
        )
    choice = body.get("tool_choice")
    if choice is not None and choice not in ("auto", "none"):
        _unsupported("tool_choice", choice, "use 'auto' (the model decides) or 'none'")
    parallel = body.get("parallel_tool_calls")
    if parallel is not None:
        _expect(isinstance(parallel, bool), "parallel_tool_calls", parallel, "true or false")
    return tools or None if choice != "none" else None


def parse_chat(body: Any, default_max_tokens: int) -> ParsedRequest:
    _expect(isinstance(body, dict), "body", body, "a JSON object with 'model' and 'messages'")
    _check_fields(body, CHAT_FIELDS)
    model = _model(body)
    messages = body.get("messages")
    _expect(isinstance(messages, list) and bool(messages), "messages", messages, "a non-empty list of {\"role\", \"content\"} objects")
    clean = [_message(i, message) for i, message in enumerate(messages)]
    tools = _tools(body)
    if body.get("top_logprobs") is not None:
        _unsupported("top_logprobs", body["top_logprobs"], "leave it out")
    response_format = body.get("response_format")
    if response_format is not None and response_format != {"type": "text"}:
        _unsupported("response_format", response_format, "only {\"type\": \"text\"} is supported")
    stream, include_usage = _stream_options(body)
    max_completion = body.get("max_completion_tokens")
    sampling = _sampling(body, default_max_tokens, max_tokens_key="max_completion_tokens" if max_completion is not None else "max_tokens")
    options = body.get("chat_template_kwargs")
    if options is not None:
        _expect(isinstance(options, dict), "chat_template_kwargs", options, "an object of chat template options, such as {\"enable_thinking\": false}")
    try:
        request = ChatRequest(messages=clean, tools=tools, sampling=sampling, template_options=options or None)
    except TuneforgeError as exc:
        raise bad_request(str(exc), param="messages") from None
    return ParsedRequest(model, [request], stream, include_usage)


def parse_completion(body: Any, default_max_tokens: int) -> ParsedRequest:
    _expect(isinstance(body, dict), "body", body, "a JSON object with 'model' and 'prompt'")
    _check_fields(body, COMPLETION_FIELDS)
    model = _model(body)
    prompt = body.get("prompt")
    prompts = [prompt] if isinstance(prompt, str) else prompt
    _expect(
        isinstance(prompts, list) and bool(prompts) and len(prompts) <= 64 and all(isinstance(p, str) and p for p in prompts),
        "prompt", prompt, "a non-empty string or a list of at most 64 non-empty strings",
    )
    if body.get("echo"):
        _unsupported("echo", body["echo"], "leave it out")
    if body.get("suffix"):
        _unsupported("suffix", body["suffix"], "leave it out")
    if body.get("best_of") not in (None, 1):
        _unsupported("best_of", body["best_of"], "leave it out or set it to 1")
    stream, include_usage = _stream_options(body)
    if stream and len(prompts) > 1:
        _unsupported("prompt", prompt, "a streamed completion takes one prompt string")
    sampling = _sampling(body, default_max_tokens)
    requests = [ChatRequest(prompt=p, sampling=sampling) for p in prompts]
    return ParsedRequest(model, requests, stream, include_usage)
