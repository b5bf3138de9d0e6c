"""Read OpenAI request bodies into engine requests, checking every field.

A field of the wrong type, out of range, unknown or not supported here is refused
with a 400 that names it; nothing reaches the engine unchecked. ``load_json``
reads the body first: JSON that Python cannot hold safely (nesting too deep,
integers too long, lone UTF-16 surrogates, which no tokenizer can encode) is
refused there. ``RequestLimits`` bound the work one request can ask for.
"""

from __future__ import annotations

import json
import math
import re
import reprlib
from dataclasses import dataclass
from typing import Any, Mapping

from ..errors import TuneforgeError
from ..messages import ContentError, check_content
from ..inference import MAX_TOP_LOGPROBS, REPETITION_PENALTY_RANGE, ChatRequest, SamplingError, SamplingParams
from ..inference.structured import from_response_format, from_tool_choice
from .errors import bad_request

MAX_N = 16  # completions per request by default; more would hold the engine for everyone else
MAX_DEPTH = 64  # JSON nesting: tool schemas need a dozen levels; deeper only exhausts the stack
PROMPT_CHARS_PER_TOKEN = 32  # text averages 3-5 characters a token; a prompt with more than this many cannot fit
SEED_RANGE = (-(2**63), 2**64 - 1)  # what a 64-bit generator seed holds
MAX_TOP_K = 2**31 - 1


@dataclass(frozen=True)
class RequestLimits:
    """The most work one request may ask for (the ``tuneforge deploy`` options of the same names).

    ``context_length`` (the engine's, when it has one) bounds a prompt's characters
    before it is tokenized: more than ``PROMPT_CHARS_PER_TOKEN`` a token of context
    cannot fit, and tokenizing it would only cost time.
    """

    default_max_tokens: int = 512
    max_tokens: int = 8192
    max_n: int = MAX_N
    max_choices: int = 64
    context_length: int | None = None

# Fields every endpoint takes.
_SAMPLING_FIELDS = {
    "model", "max_tokens", "temperature", "top_p", "top_k", "repetition_penalty", "seed", "n", "stop",
    "stream", "stream_options", "user", "presence_penalty", "frequency_penalty", "logprobs", "logit_bias",
}
CHAT_FIELDS = _SAMPLING_FIELDS | {"messages", "max_completion_tokens", "top_logprobs", "response_format", "tools", "tool_choice", "parallel_tool_calls", "chat_template_kwargs", "include_reasoning"}
COMPLETION_FIELDS = _SAMPLING_FIELDS | {"prompt", "echo", "suffix", "best_of"}


@dataclass
class ParsedRequest:
    """What an endpoint needs: the model name, one engine request per prompt, and how to answer.

    ``include_reasoning``: the request's choice of a separate ``reasoning_content``
    (None: it made none, the server's default applies).
    """

    model: str | None
    requests: list[ChatRequest]
    stream: bool
    include_usage: bool
    include_reasoning: bool | None = None


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxdict, _REPR.maxlist, _REPR.maxstring, _REPR.maxlong, _REPR.maxother = 3, 4, 4, 40, 40, 40


def _describe(value: Any) -> str:
    """A short repr of a request's value (never the whole of a large one)."""
    text = _REPR.repr(value)
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


def _sampling(body: Mapping[str, Any], limits: RequestLimits, *, max_tokens_key: str = "max_tokens", chat: bool = False, **extra: Any) -> SamplingParams:
    max_tokens = body.get(max_tokens_key)
    if max_tokens is None and max_tokens_key != "max_tokens":
        max_tokens_key, max_tokens = "max_tokens", body.get("max_tokens")
    given = max_tokens is not None
    if given:
        _expect(_is_int(max_tokens) and max_tokens >= 1, max_tokens_key, max_tokens, "an integer of at least 1")
        if max_tokens > limits.max_tokens:
            raise bad_request(
                f"'{max_tokens_key}' is {_describe(max_tokens)}, above this server's limit of {limits.max_tokens} (--max-tokens-limit); "
                f"lower max_tokens to at most {limits.max_tokens}.", param=max_tokens_key,
            )
    temperature = body.get("temperature")
    if temperature is not None:
        _expect(_is_number(temperature) and 0 <= temperature <= 2, "temperature", temperature, "a number from 0 to 2")
    top_p = body.get("top_p")
    if top_p is not None:
        _expect(_is_number(top_p) and 0 < top_p <= 1, "top_p", top_p, "a number above 0 and at most 1")
    top_k = body.get("top_k")
    if top_k is not None:
        _expect(_is_int(top_k) and 0 <= top_k <= MAX_TOP_K, "top_k", top_k, f"an integer from 0 (off) to {MAX_TOP_K}")
    penalty = body.get("repetition_penalty")
    if penalty is not None:
        low, high = REPETITION_PENALTY_RANGE
        _expect(_is_number(penalty) and low <= penalty <= high, "repetition_penalty", penalty, f"a number from {low} to {high:g} (1: off)")
    seed = body.get("seed")
    if seed is not None:
        _expect(_is_int(seed) and SEED_RANGE[0] <= seed <= SEED_RANGE[1], "seed", seed, "a 64-bit integer (from -2**63 to 2**64 - 1)")
    n = body.get("n")
    if n is not None:
        most = min(limits.max_n, limits.max_choices)
        _expect(_is_int(n) and 1 <= n <= most, "n", n, f"an integer from 1 to {most} (this server's limit)")
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
            penalties[name] = float(value)
    logprobs = body.get("logprobs")
    if chat:
        if logprobs is not None:
            _expect(isinstance(logprobs, bool), "logprobs", logprobs, "true or false")
        top = body.get("top_logprobs")
        if top is not None:
            _expect(_is_int(top) and 0 <= top <= MAX_TOP_LOGPROBS, "top_logprobs", top, f"an integer from 0 to {MAX_TOP_LOGPROBS}")
            _expect(bool(logprobs) or top == 0, "top_logprobs", top, "left out unless 'logprobs' is true")
        extra.update(logprobs=bool(logprobs), top_logprobs=top or 0)
    elif logprobs is not None:
        _unsupported("logprobs", logprobs, "ask /v1/chat/completions for logprobs, or leave it out")
    if body.get("logit_bias"):
        _unsupported("logit_bias", body["logit_bias"], "leave it out")
    if body.get("user") is not None:
        _expect(isinstance(body["user"], str), "user", body["user"], "a string")
    values = dict(
        max_tokens=max_tokens if given else limits.default_max_tokens,
        temperature=1.0 if temperature is None else float(temperature),  # JSON 2 is an int; transformers takes only floats
        top_p=1.0 if top_p is None else float(top_p),
        top_k=top_k or 0,
        repetition_penalty=1.0 if penalty is None else float(penalty),
        stop=stop or (),
        seed=seed,
        n=n or 1,
        fit_context=not given,  # an unset max_tokens takes what the context leaves, up to the default
        **penalties,
        **extra,
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


def _content(index: int, content: Any) -> str | list[dict]:
    """A message's content: text, or OpenAI parts (checked by ``tuneforge.messages``; images by ``images.check_images``)."""
    name = f"messages[{index}].content"
    if content is None:
        return ""
    try:
        return check_content(content, f"'{name}'")
    except ContentError as exc:
        raise bad_request(str(exc), param=name) from None


def _message(i: int, message: Any) -> dict:
    """One message of a chat, checked: system/developer, user, assistant (with tool_calls and reasoning_content) or tool."""
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
    reasoning = message.get("reasoning_content")
    if reasoning is not None:
        # Reasoning sent back in the history: the chat template decides where it is rendered (Qwen3's keeps it after the latest query).
        _expect(role == "assistant", f"messages[{i}].reasoning_content", reasoning, "left out of a message whose role is not 'assistant'")
        _expect(isinstance(reasoning, str), f"messages[{i}].reasoning_content", reasoning, "a string")
        clean["reasoning_content"] = reasoning
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
    parallel = body.get("parallel_tool_calls")
    if parallel is not None:
        _expect(isinstance(parallel, bool), "parallel_tool_calls", parallel, "true or false")
    return tools or None if choice != "none" else None


def _structured(body: Mapping[str, Any], tools: list | None):
    """The constraint of ``response_format`` or of ``tool_choice`` (not both); None for a free answer."""
    response_format = body.get("response_format")
    constraint = None
    if response_format is not None:
        _expect(isinstance(response_format, dict), "response_format", response_format, "an object such as {\"type\": \"json_object\"}")
        try:
            constraint = from_response_format(response_format)
        except TuneforgeError as exc:
            raise bad_request(str(exc), param="response_format") from None
    choice = body.get("tool_choice")
    if choice == "none":
        return constraint
    try:
        forced = from_tool_choice(tools, choice, body.get("parallel_tool_calls") is not False)
    except TuneforgeError as exc:
        raise bad_request(str(exc), param="tool_choice") from None
    if forced is not None and constraint is not None:
        raise bad_request("'response_format' and a forced 'tool_choice' both constrain the answer; give one of them.", param="response_format")
    return forced or constraint


def parse_chat(body: Any, limits: RequestLimits) -> ParsedRequest:
    _expect(isinstance(body, dict), "body", body, "a JSON object with 'model' and 'messages'")
    _check_fields(body, CHAT_FIELDS)
    model = _model(body)
    messages = body.get("messages")
    _expect(isinstance(messages, list) and bool(messages), "messages", messages, "a non-empty list of {\"role\", \"content\"} objects")
    sizes = {"messages": _text_size(messages), "tools": _text_size(body.get("tools"))}
    _check_prompt_size(max(sizes, key=sizes.get), sum(sizes.values()), limits, "The messages and tools have")
    clean = [_message(i, message) for i, message in enumerate(messages)]
    tools = _tools(body)
    structured = _structured(body, tools)
    stream, include_usage = _stream_options(body)
    max_completion = body.get("max_completion_tokens")
    sampling = _sampling(body, limits, max_tokens_key="max_completion_tokens" if max_completion is not None else "max_tokens", chat=True, structured=structured)
    options = body.get("chat_template_kwargs")
    if options is not None:
        _expect(isinstance(options, dict), "chat_template_kwargs", options, "an object of chat template options, such as {\"enable_thinking\": false}")
    include_reasoning = body.get("include_reasoning")
    if include_reasoning is not None:
        _expect(isinstance(include_reasoning, bool), "include_reasoning", include_reasoning, "true (a thinking model's reasoning in 'reasoning_content') or false (left in 'content')")
    try:
        request = ChatRequest(messages=clean, tools=tools, sampling=sampling, template_options=options or None)
    except TuneforgeError as exc:
        raise bad_request(str(exc), param="messages") from None
    return ParsedRequest(model, [request], stream, include_usage, include_reasoning)


def parse_completion(body: Any, limits: RequestLimits) -> ParsedRequest:
    _expect(isinstance(body, dict), "body", body, "a JSON object with 'model' and 'prompt'")
    _check_fields(body, COMPLETION_FIELDS)
    model = _model(body)
    prompt = body.get("prompt")
    prompts = [prompt] if isinstance(prompt, str) else prompt
    most = limits.max_choices
    _expect(
        isinstance(prompts, list) and bool(prompts) and len(prompts) <= most and all(isinstance(p, str) and p for p in prompts),
        "prompt", prompt, f"a non-empty string or a list of at most {most} non-empty strings",
    )
    for p in prompts:
        _check_prompt_size("prompt", len(p), limits, "The prompt has")
    if body.get("echo"):
        _unsupported("echo", body["echo"], "leave it out")
    if body.get("suffix"):
        _unsupported("suffix", body["suffix"], "leave it out")
    if body.get("best_of") not in (None, 1):
        _unsupported("best_of", body["best_of"], "leave it out or set it to 1")
    stream, include_usage = _stream_options(body)
    if stream and len(prompts) > 1:
        _unsupported("prompt", prompt, "a streamed completion takes one prompt string")
    sampling = _sampling(body, limits)
    if len(prompts) * sampling.n > most:
        raise bad_request(
            f"{len(prompts)} prompts with n={sampling.n} ask for {len(prompts) * sampling.n} completions, "
            f"more than this server's limit of {most} (--max-choices); send fewer prompts or a smaller n.",
            param="n" if sampling.n > 1 else "prompt",
        )
    requests = [ChatRequest(prompt=p, sampling=sampling) for p in prompts]
    return ParsedRequest(model, requests, stream, include_usage)


def _check_prompt_size(field: str, chars: int, limits: RequestLimits, what: str) -> None:
    """Refuse a prompt too long for the context by its characters alone, before any tokenizing."""
    context = limits.context_length
    if context and chars > PROMPT_CHARS_PER_TOKEN * context:
        raise bad_request(
            f"{what} {chars} characters, more than {PROMPT_CHARS_PER_TOKEN} for each of the {context} tokens "
            f"of the model's context, so they cannot fit; shorten '{field}'.", param=field, code="context_length_exceeded",
        )


def _text_size(value: Any) -> int:
    """The characters of every string (keys included) in a JSON value."""
    total, pending = 0, [value]
    while pending:
        item = pending.pop()
        if isinstance(item, str):
            total += len(item)
        elif isinstance(item, dict):
            total += sum(len(k) for k in item)
            pending.extend(item.values())
        elif isinstance(item, list):
            pending.extend(item)
    return total


_SURROGATE = re.compile("[\ud800-\udfff]")


def load_json(raw: bytes) -> Any:
    """The request body as JSON, refused (400, naming where) when Python or a tokenizer could not handle it."""
    try:
        body = json.loads(raw.decode("utf-8"))  # strictly: json.loads(bytes) would let UTF-16 and encoded surrogates through
    except RecursionError:
        raise bad_request(f"The request body nests deeper than {MAX_DEPTH} levels; send flatter JSON.", param="body") from None
    except (ValueError, UnicodeDecodeError) as exc:  # JSONDecodeError, and integers of more than 4300 digits
        if "integer string conversion" in str(exc):
            raise bad_request("The request body holds an integer of more than 4300 digits; send numbers of a usual size.", param="body") from None
        raise bad_request(f"The request body is not valid JSON ({_short(exc)}); send a JSON object with Content-Type: application/json.", param="body") from None
    # A lone surrogate can now only come from an escape such as \ud800: look for one only then.
    _check_values(body, strings=_SURROGATE_ESCAPE.search(raw) is not None)
    return body


_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89abcdefABCDEF]")


def _bad_string(text: str) -> bool:
    return _SURROGATE.search(text) is not None


def _check_values(body: Any, strings: bool = True) -> None:
    """Refuse JSON nested deeper than ``MAX_DEPTH`` and (with ``strings``) strings or keys with lone surrogates.

    One pass, level by level and without paths (a 4 MiB body holds a million
    values); the path is only worked out for the value refused.
    """
    level, depth = [body], 0
    while level:
        deeper: list = []
        for value in level:
            kind = type(value)
            if kind is dict or kind is list:
                if depth >= MAX_DEPTH:
                    path = _locate(body, lambda item, at: at >= MAX_DEPTH and isinstance(item, (dict, list)))
                    raise bad_request(f"The request body nests deeper than {MAX_DEPTH} levels (at '{_path_text(path)}'); send flatter JSON.", param=_path_text(path[:1]) or "body")
                if kind is dict:
                    if strings and any(_bad_string(key) for key in value):
                        path = _locate(body, lambda item, at: isinstance(item, dict) and any(_bad_string(k) for k in item))
                        key = next(k for k in _at(body, path) if _bad_string(k))
                        where = _path_text(path + (key,))
                        raise bad_request(f"The key '{where}' holds a lone UTF-16 surrogate (such as \\ud800), which is not text; send valid Unicode.", param=where)
                    deeper.extend(value.values())
                else:
                    deeper.extend(value)
            elif strings and kind is str and _bad_string(value):
                where = _path_text(_locate(body, lambda item, at: isinstance(item, str) and _bad_string(item)))
                raise bad_request(f"'{where}' holds a lone UTF-16 surrogate (such as \\ud800), which is not text; send valid Unicode.", param=where)
        level, depth = deeper, depth + 1


def _locate(body: Any, test) -> tuple:
    """The path to the first value (depth first) for which ``test(value, depth)`` holds."""
    pending = [(body, ())]
    while pending:
        value, path = pending.pop()
        if test(value, len(path)):
            return path
        if isinstance(value, dict):
            pending.extend((item, path + (key,)) for key, item in reversed(list(value.items())))
        elif isinstance(value, list):
            pending.extend((item, path + (i,)) for i, item in reversed(list(enumerate(value))))
    return ()


def _at(body: Any, path: tuple) -> Any:
    for part in path:
        body = body[part]
    return body


def _path_text(path: tuple) -> str:
    """``messages[0].content`` for ("messages", 0, "content"); odd characters escaped, long paths cut."""
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else part)
    text = text.encode("ascii", "backslashreplace").decode("ascii")
    return text if len(text) <= 80 else text[:77] + "..."


def _short(exc: BaseException) -> str:
    text = str(exc)
    return text if len(text) <= 120 else text[:117] + "..."
