"""The engine protocol: what every inference engine (pt, vllm, ...) serves.

An engine turns chat requests into completions. ``create_engine(name, model,
**options)`` finds the ``InferenceEngine`` record of that name and calls its
factory with a ``tuneforge.modeling.ModelBundle`` (``model``, a model spec string,
resolved once by the core with the ``BUNDLE_OPTIONS`` among the options; or a
bundle, or what the engine itself accepts, such as pt's ``Loaded``) and the other
options, after checking that the factory takes each of them::

    from tuneforge.inference import ChatRequest, SamplingParams, create_engine

    engine = create_engine("pt", "smollm2-135m-instruct", batch_size=4)
    [[answer]] = engine.generate([ChatRequest(
        messages=[{"role": "user", "content": "What is the capital of France?"}],
        sampling=SamplingParams(max_tokens=32),
    )])
    print(answer.text, answer.finish_reason, answer.completion_tokens)
    engine.close()
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Iterator, Literal, Mapping, Protocol, Sequence, runtime_checkable

from ..errors import TuneforgeError
from ..messages import check_content
from ..records import COMMON_ENGINE_OPTIONS  # the command options an engine may take

FinishReason = Literal["stop", "length", "tool_calls"]


GREEDY_BELOW = 1e-5  # a smaller temperature overflows the logits (inf, then NaN probabilities): it is greedy
REPETITION_PENALTY_RANGE = (0.01, 100.0)  # beyond it the penalised logits overflow as well
MAX_TOP_LOGPROBS = 20  # OpenAI's limit


@dataclass(frozen=True)
class SamplingParams:
    """How to pick tokens for one request.

    ``temperature == 0`` is greedy decoding (``top_p``, ``top_k`` and ``seed`` then
    do not matter). ``stop`` strings end the answer; the text is cut before the
    first one. ``seed`` makes sampling repeatable; ``n`` asks for that many
    completions of the same request. ``presence_penalty`` and
    ``frequency_penalty`` follow OpenAI: each token's logit is lowered by the
    presence penalty once it has been generated, and by the frequency penalty
    times the number of times it has been generated. ``fit_context``: when the
    prompt leaves fewer than ``max_tokens`` tokens of the model's context,
    generate only as many as fit instead of refusing the request.
    ``logprobs``: the completion carries the log-probability of each token it
    generated (``Completion.logprobs``), under the model's distribution before any
    sampling setting or constraint, and ``top_logprobs`` (up to
    ``MAX_TOP_LOGPROBS``) the most likely tokens at each position beside it.
    ``structured``: a ``structured.StructuredOutput`` the answer is held to (a JSON
    schema), enforced by the engine's guided decoding; an engine that cannot
    enforce it (or return logprobs) refuses the request (``structured.check_features``).
    """

    max_tokens: int = 512
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    repetition_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    stop: Sequence[str] = ()
    seed: int | None = None
    n: int = 1
    fit_context: bool = False
    logprobs: bool = False
    top_logprobs: int = 0
    structured: Any = None  # a structured.StructuredOutput

    def __post_init__(self) -> None:
        stop = [self.stop] if isinstance(self.stop, str) else list(self.stop or ())
        object.__setattr__(self, "stop", tuple(stop))
        _check(_integer(self.max_tokens) and self.max_tokens >= 1, "max_tokens", self.max_tokens, "an integer of at least 1")
        _check(_number(self.temperature) and self.temperature >= 0, "temperature", self.temperature, "a number of at least 0 (0: greedy)")
        if self.temperature < GREEDY_BELOW:
            object.__setattr__(self, "temperature", 0.0)  # as good as greedy, and dividing by it would overflow
        _check(_number(self.top_p) and 0 < self.top_p <= 1, "top_p", self.top_p, "a number in (0, 1]")
        _check(_integer(self.top_k) and self.top_k >= 0, "top_k", self.top_k, "an integer of at least 0 (0: off)")
        low, high = REPETITION_PENALTY_RANGE
        _check(_number(self.repetition_penalty) and low <= self.repetition_penalty <= high, "repetition_penalty", self.repetition_penalty, f"a number from {low} to {high:g} (1: off)")
        for name in ("presence_penalty", "frequency_penalty"):
            value = getattr(self, name)
            _check(_number(value) and -2 <= value <= 2, name, value, "a number from -2 to 2 (0: off)")
        _check(all(isinstance(s, str) and s for s in self.stop), "stop", list(self.stop), "a list of non-empty strings")
        _check(self.seed is None or _integer(self.seed), "seed", self.seed, "an integer or null")
        _check(_integer(self.n) and self.n >= 1, "n", self.n, "an integer of at least 1")
        _check(isinstance(self.fit_context, bool), "fit_context", self.fit_context, "true or false")
        _check(isinstance(self.logprobs, bool), "logprobs", self.logprobs, "true or false")
        _check(_integer(self.top_logprobs) and 0 <= self.top_logprobs <= MAX_TOP_LOGPROBS, "top_logprobs", self.top_logprobs, f"an integer from 0 to {MAX_TOP_LOGPROBS}")
        _check(self.logprobs or not self.top_logprobs, "top_logprobs", self.top_logprobs, "0 unless logprobs is true")
        from .structured import StructuredOutput

        _check(self.structured is None or isinstance(self.structured, StructuredOutput), "structured", self.structured, "a StructuredOutput or None")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    @classmethod
    def from_options(cls, options: Any, **overrides: Any) -> "SamplingParams":
        """Build from a config carrying ``tuneforge.config.GenerationOptions`` fields."""
        values = dict(
            max_tokens=options.max_new_tokens,
            temperature=options.temperature,
            top_p=options.top_p,
            top_k=options.top_k,
            repetition_penalty=options.repetition_penalty,
            seed=options.seed,
        )
        values.update(overrides)
        try:
            return cls(**values)
        except SamplingError as exc:  # name the option the way the user gave it
            option = _OPTION_NAMES.get(exc.name, exc.name)
            raise TuneforgeError(f"--{option.replace('_', '-')} is {exc.value!r}; it must be {exc.expected}.") from None


# SamplingParams fields whose command-line option has another name.
_OPTION_NAMES = {"max_tokens": "max_new_tokens"}


class SamplingError(TuneforgeError):
    """A sampling option out of its range."""

    def __init__(self, name: str, value: Any, expected: str) -> None:
        super().__init__(f"Sampling option '{name}' is {value!r}; it must be {expected}.")
        self.name, self.value, self.expected = name, value, expected


def _integer(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _check(ok: bool, name: str, value: Any, expected: str) -> None:
    if not ok:
        raise SamplingError(name, value, expected)


class ContextLengthError(TuneforgeError):
    """A request that does not fit the model's context: the prompt alone, or with ``max_tokens``."""

    def __init__(self, prompt_tokens: int, context_length: int, max_tokens: int | None = None, *, index: int | None = None) -> None:
        if max_tokens is None:
            message = (
                f"The prompt has {prompt_tokens} tokens, but the model's context is {context_length}; "
                f"shorten the prompt."
            )
        else:
            room = context_length - prompt_tokens
            message = (
                f"max_tokens is {max_tokens}, but the prompt of {prompt_tokens} tokens leaves room for {room} "
                f"in the model's context of {context_length}; lower max_tokens to at most {room}."
            )
        if index is not None:  # which request of several
            message = f"Request {index}: {message[0].lower()}{message[1:]}"
        super().__init__(message)
        self.prompt_tokens, self.context_length, self.max_tokens = prompt_tokens, context_length, max_tokens


def fitted_max_tokens(prompt_tokens: int, context_length: int, sampling: "SamplingParams", *, index: int | None = None) -> int:
    """The tokens a request may generate after its prompt of ``prompt_tokens`` in a context of ``context_length``.

    ``sampling.max_tokens`` when it fits; the room left when it does not and
    ``sampling.fit_context`` allows that; otherwise ``ContextLengthError`` (also for a prompt
    that alone fills the context). Every engine refuses and fits alike through it.
    """
    room = context_length - prompt_tokens
    if room <= 0:
        raise ContextLengthError(prompt_tokens, context_length, index=index)
    if sampling.max_tokens <= room:
        return sampling.max_tokens
    if not sampling.fit_context:
        raise ContextLengthError(prompt_tokens, context_length, sampling.max_tokens, index=index)
    return room


@dataclass(frozen=True)
class ChatRequest:
    """What to continue, and how.

    Usually a conversation: ``messages`` (``{"role", "content"}`` dicts, the content
    text or a list of OpenAI parts, checked by ``tuneforge.messages.check_content``) and
    optional ``tools``, rendered by the model's chat template; a template that takes
    no parts of a kind refuses them with a sentence naming the model. With ``prompt``
    (and no messages) the text itself is continued, tokenized as it is, with no
    template (OpenAI's ``/v1/completions``). ``adapter`` names a LoRA adapter
    the engine loaded with ``load_adapter`` (None: the base model).
    ``template_options`` are keyword options of the chat template's ``prompt``
    (``enable_thinking`` for Qwen3, say); one the template does not take is an
    error naming it. ``separate_reasoning``: for a thinking model (a template
    that declares ``reasoning_markers`` and ``parse_reasoning``), the answer's
    reasoning comes apart from its text (``Completion.reasoning``, streamed as
    ``Reasoning`` deltas); False keeps the text as the model wrote it, think
    block included.
    """

    messages: Sequence[Mapping[str, Any]] = ()
    tools: Sequence[Mapping[str, Any]] | None = None
    sampling: SamplingParams = field(default_factory=SamplingParams)
    prompt: str | None = None
    adapter: str | None = None
    template_options: Mapping[str, Any] | None = None
    separate_reasoning: bool = True

    def __post_init__(self) -> None:
        if not isinstance(self.separate_reasoning, bool):
            raise TuneforgeError(f"A request's separate_reasoning must be true or false, not {self.separate_reasoning!r}.")
        if self.template_options is not None and not isinstance(self.template_options, Mapping):
            raise TuneforgeError(f"A request's template_options must be a mapping of option names to values, not {self.template_options!r}.")
        if self.adapter is not None and not (isinstance(self.adapter, str) and self.adapter):
            raise TuneforgeError(f"A request's adapter must be an adapter name or None, not {self.adapter!r}.")
        if self.prompt is not None:
            if not isinstance(self.prompt, str) or not self.prompt:
                raise TuneforgeError(f"A request's prompt must be a non-empty string, not {self.prompt!r}.")
            if self.messages or self.tools:
                raise TuneforgeError("A request has a prompt or messages (and tools), not both; give one of them.")
        elif not isinstance(self.messages, (list, tuple)) or not self.messages:
            raise TuneforgeError(
                f"A chat request needs a non-empty list of messages, not {self.messages!r}; "
                f"give at least one {{'role': 'user', 'content': '...'}}."
            )
        checked = []
        for n, message in enumerate(self.messages, start=1):
            if not isinstance(message, Mapping) or not isinstance(message.get("role"), str):
                raise TuneforgeError(
                    f"Message {message!r} has no 'role'; every message is a mapping with 'role' and 'content'."
                )
            content = message.get("content")
            checked.append(message if content is None else {**message, "content": check_content(content, f"Message {n}")})
        if self.messages:
            object.__setattr__(self, "messages", checked)
        if not isinstance(self.sampling, SamplingParams):
            raise TuneforgeError(
                f"A chat request's sampling must be a SamplingParams, not {type(self.sampling).__name__}."
            )


@dataclass(frozen=True)
class Prompt:
    """What a model continues: token ids and the extras its forward takes beside them (pixel values, ...).

    An engine that cannot pass extras to its model refuses a prompt that has them.
    """

    ids: list[int]
    extras: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Completion:
    """One answer.

    ``token_ids`` are the tokens the model generated, a final stop token included;
    ``text`` is their decoding without special tokens, cut before the first stop
    string. ``finish_reason`` is ``"stop"`` (a stop token or string),
    ``"length"`` (``max_tokens`` reached) or ``"tool_calls"``: the request had
    ``tools``, the model called some, and ``tool_calls`` holds them in OpenAI's
    shape (``{"id", "type": "function", "function": {"name", "arguments"}}``,
    parsed by the chat template's ``parse_tool_calls``) while ``text`` is the
    answer without the call markup. ``reasoning``: a thinking model's reasoning
    (the think block, without its markers), when the request separates it and the
    model wrote one; ``text`` is then the answer after it (empty when ``max_tokens``
    cut the reasoning), and tool calls are parsed from that answer only.
    ``completion_tokens == len(token_ids)`` (the reasoning's tokens included).
    ``logprobs`` (when the request asked for them): one entry per generated token
    (a final stop token left out), in OpenAI's shape: ``{"token", "logprob",
    "bytes", "top_logprobs": [{"token", "logprob", "bytes"}, ...]}``, the top ones
    most likely first.
    """

    text: str
    token_ids: list[int]
    finish_reason: FinishReason
    prompt_tokens: int
    completion_tokens: int
    tool_calls: list[dict] | None = None
    reasoning: str | None = None
    logprobs: list[dict] | None = None

    @property
    def usage(self) -> dict:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
        }


class Reasoning(str):
    """A streamed delta of the answer's reasoning (a plain ``str`` delta is of its text)."""

    __slots__ = ()


class TextDelta(str):
    """A streamed delta of the answer's text that carries ``logprobs``: the entries (as in
    ``Completion.logprobs``) of the tokens generated since the previous delta that carried some."""

    logprobs: list | None = None


class ReasoningDelta(Reasoning):
    """A ``Reasoning`` delta that carries ``logprobs`` (see ``TextDelta``)."""

    logprobs: list | None = None


def with_logprobs(delta: str, entries: list) -> str:
    """``delta`` carrying the logprob ``entries`` of the tokens it shows (a ``TextDelta`` or ``ReasoningDelta``)."""
    carried = (ReasoningDelta if isinstance(delta, Reasoning) else TextDelta)(delta)
    carried.logprobs = list(entries)
    return carried


@runtime_checkable
class Engine(Protocol):
    """What an inference engine serves.

    ``generate`` answers a list of requests, returning for each request a list of
    ``request.sampling.n`` completions, in request order. ``stream`` yields the text
    of one request's single completion as it grows (deltas whose concatenation is
    the completion's text; a delta may be empty, at most one a token, or two where a
    token ends the reasoning and begins the answer; the deltas of a separated
    reasoning are ``Reasoning`` strings, whose concatenation is the completion's
    ``reasoning``, and come first); engines should ``return`` the final ``Completion`` from
    the generator so a caller using ``yield from`` also gets the finish reason and
    usage. ``close`` frees what the engine holds (memory, worker processes).

    ``generate`` may also take a keyword ``cancel``, a ``threading.Event`` that a
    caller sets (from another thread) when it no longer wants the answers: the
    engine then stops their generation as soon as it can, and ``generate`` raises.
    The server passes it to an engine that takes it, to stop the work of a client
    that left or of a request cut by the shutdown.
    """

    def generate(self, requests: Sequence[ChatRequest]) -> list[list[Completion]]: ...

    def stream(self, request: ChatRequest) -> Iterator[str]: ...

    def close(self) -> None: ...


# Options that resolve the model spec into its bundle (for every engine), not options of an engine.
BUNDLE_OPTIONS = ("template", "model_family", "trust_remote_code", "allow_template_drift", "family_options")


def accepted_options(name: str) -> list[str]:
    """The keyword options the engine ``name`` takes: its record's ``common_options`` and ``options``."""
    import dataclasses

    from ..registry import get_registry

    record = get_registry().get("inference_engines", name)
    own = [f.name for f in dataclasses.fields(record.options)] if record.options is not None else []
    return [*record.common_options, *own]


def check_engine_options(name: str, options: Mapping[str, Any]) -> None:
    """Refuse, naming it, an option the engine ``name`` does not declare (before anything loads)."""
    known = accepted_options(name)
    for option in options:
        if option not in known and option not in BUNDLE_OPTIONS:
            raise TuneforgeError(
                f"Inference engine '{name}' does not take the option '{option}'; it takes: "
                f"{', '.join(known)}. Leave that option out or pick another engine."
            )


def create_engine(name: str, model: Any, **options: Any) -> Engine:
    """Create the engine ``name`` for ``model``: a model spec string (resolved here into a
    ``ModelBundle`` with the ``BUNDLE_OPTIONS`` given), a ``ModelBundle``, or what the
    engine itself accepts (pt: a ``Loaded``).

    The other ``options`` are keyword arguments of the engine's factory: the fields of
    the record's ``options`` dataclass and its ``common_options``; another name is
    refused, naming it, before anything loads.
    """
    import os

    from ..modeling import resolve_bundle
    from ..registry import get_registry

    record = get_registry().get("inference_engines", name)
    check_engine_options(name, options)
    resolving = {key: options.pop(key) for key in BUNDLE_OPTIONS if key in options}
    if isinstance(model, (str, os.PathLike)):
        model = resolve_bundle(str(model), **resolving)
    elif resolving:
        raise TuneforgeError(
            f"Option '{next(iter(resolving))}' resolves a model spec, and this model was given already resolved; "
            f"pass the model spec instead, or give that option to resolve_bundle."
        )
    return record.create(model, **options)


__all__ = [
    "ChatRequest",
    "Completion",
    "ContextLengthError",
    "Engine",
    "Reasoning",
    "SamplingError",
    "SamplingParams",
    "COMMON_ENGINE_OPTIONS",
    "accepted_options",
    "check_engine_options",
    "create_engine",
]
