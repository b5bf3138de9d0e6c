"""A conformance kit for inference engines: the checks every engine plugin runs against itself.

Each ``check_*`` function takes an engine (anything serving the engine protocol of
``tuneforge.inference``) and raises ``AssertionError`` with a sentence saying what
the engine did wrong. Two ways to run them:

- in a pytest module, subclass ``EngineConformance`` and give it the engine's
  name and a ``model`` fixture (a model spec, which the kit resolves into the
  ``ModelBundle`` every engine's factory receives, as the core does); every check
  becomes a test::

      from tuneforge.testing.engine_conformance import EngineConformance

      class TestMyEngine(EngineConformance):
          engine_name = "my-engine"
          engine_options = {"batch_size": 4}

          @pytest.fixture(scope="class")
          @classmethod
          def model(cls, varied_tiny_dir):
              return varied_tiny_dir

- anywhere else, ``run_conformance(engine)`` runs them all and returns the names
  of the checks that passed (it raises on the first failure).

The checks assume a model whose greedy answers depend on the prompt and run for
a few dozen tokens (``varied_tiny_dir`` of ``tuneforge.testing.pytest_plugin`` is
one); they use short answers so they stay fast on a CPU. A check of an optional
part of the protocol the engine lacks (its ``context_length``, ``generate``'s
``cancel`` switch) is skipped, saying why.
"""

from __future__ import annotations

import inspect
import threading
import time
from typing import Any, Callable

import pytest

from ..errors import TuneforgeError
from ..inference import ChatRequest, Completion, ContextLengthError, Engine, Reasoning, SamplingParams, create_engine

PROMPTS = (
    "hi",
    "Write a long and detailed story about a cat who learns to play the piano in Vienna.",
    "x",
    "What is two plus two? Answer briefly, please.",
    "Name three colours.",
    "Tell me about the history of the bicycle.",
)


def user(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


def greedy(max_tokens: int = 12, **options: Any) -> SamplingParams:
    return SamplingParams(max_tokens=max_tokens, **options)


def consume(stream) -> tuple[list[str], Completion | None]:
    """The deltas of a stream and the value its generator returned (None if it returned none)."""
    deltas = []
    while True:
        try:
            deltas.append(next(stream))
        except StopIteration as end:
            return deltas, end.value


def joined(deltas, reasoning: bool = False) -> str:
    """The text (or, with ``reasoning``, the reasoning) a stream's deltas add up to."""
    return "".join(d for d in deltas if isinstance(d, Reasoning) == reasoning)


# -- the checks ---------------------------------------------------------------------


def check_serves_the_protocol(engine) -> None:
    assert isinstance(engine, Engine), f"{type(engine).__name__} lacks generate, stream or close."


def check_greedy_is_deterministic(engine) -> None:
    requests = [ChatRequest(user(p), sampling=greedy()) for p in PROMPTS]
    first, second = engine.generate(requests), engine.generate(requests)
    assert len(first) == len(requests), f"generate() gave {len(first)} answer lists for {len(requests)} requests."
    assert all(len(answers) == 1 for answers in first), "generate() must give one completion per request when n=1."
    for prompt, [a], [b] in zip(PROMPTS, first, second):
        assert (a.text, a.token_ids) == (b.text, b.token_ids), f"Greedy answers to {prompt!r} differ: {a.text!r} then {b.text!r}."
    assert len({answers[0].text for answers in first}) > 1, "Every prompt got the same answer: are the prompts used?"


def check_batched_equals_one_at_a_time(engine) -> None:
    requests = [ChatRequest(user(p), sampling=greedy(max_tokens=6 + i)) for i, p in enumerate(PROMPTS)]
    together = engine.generate(requests)
    for request, answers in zip(requests, together):
        alone = engine.generate([request])[0]
        assert answers == alone, f"{request.messages[0]['content']!r} alone gives {alone[0].text!r}, in a batch {answers[0].text!r}."


def check_max_tokens_gives_length(engine) -> None:
    answers = [a for [a] in engine.generate([ChatRequest(user(p), sampling=greedy(max_tokens=5)) for p in PROMPTS])]
    for answer in answers:
        assert answer.completion_tokens <= 5, f"max_tokens=5 gave {answer.completion_tokens} tokens."
        assert answer.finish_reason in ("stop", "length"), f"finish_reason is {answer.finish_reason!r}."
        if answer.finish_reason == "length":
            assert answer.completion_tokens == 5, f"finish_reason 'length' after {answer.completion_tokens} of 5 tokens."
    assert any(a.finish_reason == "length" for a in answers), "No answer of 5 tokens ended with finish_reason 'length'."


def check_usage_counts(engine) -> None:
    short, long = engine.generate([
        ChatRequest(user("x"), sampling=greedy(max_tokens=4)),
        ChatRequest(user(PROMPTS[1]), sampling=greedy(max_tokens=4)),
    ])
    for [answer] in (short, long):
        usage = answer.usage
        assert usage == {
            "prompt_tokens": answer.prompt_tokens,
            "completion_tokens": answer.completion_tokens,
            "total_tokens": answer.prompt_tokens + answer.completion_tokens,
        }, f"usage {usage} does not add up."
        assert answer.prompt_tokens > 0, "prompt_tokens must count the prompt."
        assert answer.completion_tokens == len(answer.token_ids), (
            f"completion_tokens is {answer.completion_tokens} but {len(answer.token_ids)} token ids came back."
        )
    assert long[0].prompt_tokens > short[0].prompt_tokens, "A longer prompt must count more prompt tokens."


def check_stop_strings_cut_the_text(engine) -> None:
    for prompt in PROMPTS:
        [[full]] = engine.generate([ChatRequest(user(prompt), sampling=greedy(max_tokens=24))])
        stop = full.text[len(full.text) // 2 :][:4]
        if len(full.text) >= 8 and stop.strip():
            break
    else:
        pytest.skip("No greedy answer was long enough to pick a stop string from.")
    expected = full.text[: full.text.find(stop)]
    request = ChatRequest(user(prompt), sampling=greedy(max_tokens=24, stop=["never-appears", stop]))
    [[stopped]] = engine.generate([request])
    assert stopped.text == expected, f"With stop {stop!r} the text is {stopped.text!r}, not {expected!r}."
    assert stopped.finish_reason == "stop", f"A stop string gave finish_reason {stopped.finish_reason!r}."
    assert stopped.completion_tokens < full.completion_tokens, "A stop string must end the generation early."
    assert joined(engine.stream(request)) == expected, "Streaming with a stop string gives other text."


def check_stream_equals_generate(engine) -> None:
    for prompt in PROMPTS[:3]:
        request = ChatRequest(user(prompt), sampling=greedy(max_tokens=16))
        [[answer]] = engine.generate([request])
        deltas, final = consume(engine.stream(request))
        assert joined(deltas) == answer.text, f"Streamed {joined(deltas)!r}, generated {answer.text!r}."
        assert joined(deltas, reasoning=True) == (answer.reasoning or ""), (
            f"Streamed the reasoning {joined(deltas, reasoning=True)!r}, generated {answer.reasoning!r}."
        )
        if final is not None:
            assert (final.text, final.finish_reason, final.usage) == (answer.text, answer.finish_reason, answer.usage), (
                f"The stream returned {final}, generate() gave {answer}."
            )


def check_n_gives_n(engine) -> None:
    [answers] = engine.generate([ChatRequest(user("hi"), sampling=greedy(max_tokens=4, n=3))])
    assert len(answers) == 3, f"n=3 gave {len(answers)} completions."
    assert answers[0] == answers[1] == answers[2], "Greedy completions of one request must be equal."
    sampled = SamplingParams(max_tokens=6, temperature=1.0, seed=3, n=2)
    both = engine.generate([ChatRequest(user("hi"), sampling=sampled), ChatRequest(user("x"), sampling=greedy(max_tokens=3))])
    assert [len(answers) for answers in both] == [2, 1], f"n=2 and n=1 gave {[len(a) for a in both]} completions."


def check_concurrent_equals_sequential(engine) -> None:
    requests = [ChatRequest(user(p), sampling=greedy(max_tokens=8 + i)) for i, p in enumerate(PROMPTS)]
    sequential = [engine.generate([r])[0][0] for r in requests]
    streamed = {}
    results: dict[int, Completion] = {}
    errors: list[BaseException] = []

    def ask(i: int) -> None:
        try:
            if i % 3 == 2:
                streamed[i] = joined(engine.stream(requests[i]))
            else:
                [[results[i]]] = engine.generate([requests[i]])
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(requests))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=600)
    assert not errors, f"Concurrent requests failed: {errors[0]!r}"
    for i, expected in enumerate(sequential):
        got = streamed[i] if i in streamed else results[i].text
        assert got == expected.text, f"Request {i} answered {got!r} concurrently, {expected.text!r} alone."
        if i in results:
            assert results[i] == expected


def _repeats(engine, **penalty: float) -> int:
    requests = [ChatRequest(user(p), sampling=greedy(max_tokens=24, **penalty)) for p in PROMPTS]
    return sum(len(a.token_ids) - len(set(a.token_ids)) for [a] in engine.generate(requests))


def check_penalties_change_repeats(engine) -> None:
    for name in ("presence_penalty", "frequency_penalty"):
        encouraged, plain, discouraged = (_repeats(engine, **{name: value}) for value in (-2.0, 0.0, 2.0))
        assert discouraged <= plain <= encouraged and discouraged < encouraged, (
            f"{name} -2, 0, +2 gave {encouraged}, {plain}, {discouraged} repeated tokens: a higher penalty must repeat less."
        )


def check_raw_prompt_is_continued(engine) -> None:
    text = "The capital of France is"
    [[raw]] = engine.generate([ChatRequest(prompt=text, sampling=greedy(max_tokens=8))])
    [[chat]] = engine.generate([ChatRequest(user(text), sampling=greedy(max_tokens=8))])
    assert raw.completion_tokens > 0, "A raw prompt got no completion."
    assert raw.prompt_tokens < chat.prompt_tokens, (
        f"A raw prompt counts {raw.prompt_tokens} tokens, as many as the chat of the same text ({chat.prompt_tokens}): is the template applied to it?"
    )
    deltas, _ = consume(engine.stream(ChatRequest(prompt=text, sampling=greedy(max_tokens=8))))
    assert joined(deltas) == raw.text, "Streaming a raw prompt gives other text than generating it."


def check_context_length_is_enforced(engine) -> None:
    [[probe]] = engine.generate([ChatRequest(user("hi"), sampling=greedy(max_tokens=1))])
    context = getattr(engine, "context_length", None)
    if not context:
        pytest.skip("The engine does not say its context length.")
    with pytest.raises(ContextLengthError):
        engine.generate([ChatRequest(user("hi"), sampling=greedy(max_tokens=context))])
    with pytest.raises(ContextLengthError):
        engine.generate([ChatRequest(user("hello " * context), sampling=greedy(max_tokens=1))])
    room = context - probe.prompt_tokens
    fitted = SamplingParams(max_tokens=room + 5, fit_context=True)
    [[answer]] = engine.generate([ChatRequest(user("hi"), sampling=fitted)])
    assert answer.completion_tokens <= room, f"fit_context let {answer.completion_tokens} tokens through where {room} fit."


def check_unknown_adapter_is_named(engine) -> None:
    with pytest.raises(TuneforgeError, match="conformance-no-such-adapter"):
        engine.generate([ChatRequest(user("hi"), sampling=greedy(max_tokens=2), adapter="conformance-no-such-adapter")])


CANCEL_PROBE_TOKENS = 32
CANCEL_LONG_S = 6.0  # about how long the request to cancel would run to its end
CANCEL_AFTER = 0.1  # the switch is set this share of the full run's time after the call starts...
CANCEL_WITHIN = 0.5  # ...and the call must have raised by this share of it


def _raises_cancelled(engine, request: ChatRequest, cancel: threading.Event) -> float:
    """Seconds ``generate([request], cancel=cancel)`` took to raise ``TuneforgeError``; fails if it answered or raised another error."""
    start = time.perf_counter()
    try:
        engine.generate([request], cancel=cancel)
    except TuneforgeError:
        return time.perf_counter() - start
    except Exception as exc:
        raise AssertionError(f"A cancelled generate() raised {type(exc).__name__} ({exc}); it must raise TuneforgeError.") from exc
    raise AssertionError("generate() answered a request whose cancel switch was set; it must raise TuneforgeError instead.")


def check_cancel_stops_the_work(engine) -> None:
    """A ``generate`` that takes ``cancel`` stops a long request soon after it is set, and raises."""
    try:
        parameters = inspect.signature(engine.generate).parameters
    except (TypeError, ValueError):
        parameters = {}
    if "cancel" not in parameters:
        pytest.skip(f"{type(engine).__name__}.generate() takes no 'cancel' switch (optional in the protocol), so a request cannot be stopped.")
    for prompt in PROMPTS:  # a greedy answer that runs to its max_tokens (a random model's answers loop)
        probe_request = ChatRequest(user(prompt), sampling=greedy(max_tokens=CANCEL_PROBE_TOKENS))
        start = time.perf_counter()
        [[probe]] = engine.generate([probe_request])
        probe_s = time.perf_counter() - start
        if probe.finish_reason == "length":
            break
    else:
        pytest.skip(f"No greedy answer ran to {CANCEL_PROBE_TOKENS} tokens, so none is long enough to cancel.")
    room = (getattr(engine, "context_length", None) or 2048) - probe.prompt_tokens
    budget = min(room, max(4 * CANCEL_PROBE_TOKENS, int(CANCEL_LONG_S * CANCEL_PROBE_TOKENS / probe_s)))
    long = ChatRequest(user(prompt), sampling=greedy(max_tokens=budget))
    start = time.perf_counter()
    [[full]] = engine.generate([long])
    full_s = time.perf_counter() - start
    assert full.completion_tokens > CANCEL_PROBE_TOKENS, f"The answer of {budget} tokens stopped after {full.completion_tokens}."

    cancel = threading.Event()
    timer = threading.Timer(CANCEL_AFTER * full_s, cancel.set)
    timer.start()
    try:
        took = _raises_cancelled(engine, long, cancel)
    finally:
        timer.cancel()
    assert took < CANCEL_WITHIN * full_s, (
        f"A request of {full.completion_tokens} tokens ({full_s:.2f} s) cancelled after {CANCEL_AFTER * full_s:.2f} s "
        f"still took {took:.2f} s: generate() must stop soon after its cancel switch is set."
    )
    already = threading.Event()
    already.set()
    took = _raises_cancelled(engine, long, already)
    assert took < CANCEL_WITHIN * full_s, f"A request whose switch was set before the call took {took:.2f} s of {full_s:.2f} s to raise."
    [[again]] = engine.generate([probe_request])
    assert again == probe, f"After a cancel the engine answers {again.text!r}, not {probe.text!r} as before."


def check_unknown_option_is_named(engine_name: str, model: Any) -> None:
    with pytest.raises(TuneforgeError, match="conformance_no_such_option"):
        engine = create_engine(engine_name, model, conformance_no_such_option=1)
        engine.close()


CHECKS: dict[str, Callable] = {
    name[len("check_"):]: check for name, check in globals().items() if name.startswith("check_") and name != "check_unknown_option_is_named"
}


def run_conformance(engine, *, engine_name: str | None = None, model: Any = None) -> list[str]:
    """Run every check on ``engine`` (and the option check when ``engine_name`` is given); the names that passed."""
    passed = []
    for name, check in CHECKS.items():
        check(engine)
        passed.append(name)
    if engine_name is not None:
        check_unknown_option_is_named(engine_name, model)
        passed.append("unknown_option_is_named")
    return passed


class EngineConformance:
    """Subclass as ``Test...`` with ``engine_name``, ``engine_options`` and a class-scoped ``model`` fixture."""

    engine_name: str = ""
    engine_options: dict = {}

    @pytest.fixture(scope="class")
    @classmethod
    def engine(cls, model):
        import os

        from ..modeling import resolve_bundle

        # The factory gets the bundle the core resolves from a spec (a model already loaded goes as it is).
        bundle = resolve_bundle(str(model)) if isinstance(model, (str, os.PathLike)) else model
        engine = create_engine(cls.engine_name, bundle, **cls.engine_options)
        yield engine
        engine.close()

    def test_serves_the_protocol(self, engine):
        check_serves_the_protocol(engine)

    def test_greedy_is_deterministic(self, engine):
        check_greedy_is_deterministic(engine)

    def test_batched_equals_one_at_a_time(self, engine):
        check_batched_equals_one_at_a_time(engine)

    def test_max_tokens_gives_length(self, engine):
        check_max_tokens_gives_length(engine)

    def test_usage_counts(self, engine):
        check_usage_counts(engine)

    def test_stop_strings_cut_the_text(self, engine):
        check_stop_strings_cut_the_text(engine)

    def test_stream_equals_generate(self, engine):
        check_stream_equals_generate(engine)

    def test_n_gives_n(self, engine):
        check_n_gives_n(engine)

    def test_concurrent_equals_sequential(self, engine):
        check_concurrent_equals_sequential(engine)

    def test_penalties_change_repeats(self, engine):
        check_penalties_change_repeats(engine)

    def test_raw_prompt_is_continued(self, engine):
        check_raw_prompt_is_continued(engine)

    def test_context_length_is_enforced(self, engine):
        check_context_length_is_enforced(engine)

    def test_unknown_adapter_is_named(self, engine):
        check_unknown_adapter_is_named(engine)

    def test_cancel_stops_the_work(self, engine):
        check_cancel_stops_the_work(engine)

    def test_unknown_option_is_named(self, model):
        check_unknown_option_is_named(self.engine_name, model)
