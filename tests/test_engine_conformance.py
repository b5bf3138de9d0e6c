"""The engine conformance kit, run against the pt engine; the pt engine's batching worker."""

import threading
import time

import pytest

from tuneforge.errors import TuneforgeError
from tuneforge.inference import ChatRequest, SamplingParams, create_engine
from tuneforge.inference.scheduler import DynamicBatcher, Ticket
from tuneforge.testing import engine_conformance
from tuneforge.testing.engine_conformance import EngineConformance, greedy, user


pytestmark = pytest.mark.usefixtures("one_torch_thread")


class TestPTConformance(EngineConformance):
    engine_name = "pt"
    engine_options = {"batch_size": 3}

    @pytest.fixture(scope="class")
    @classmethod
    def model(cls, varied_tiny_dir):
        return varied_tiny_dir


# -- the kit catches what it should ----------------------------------------------------------


class _Wrong:
    """An engine wrapper that breaks one rule of the protocol."""

    def __init__(self, engine, break_rule):
        self.engine, self.break_rule = engine, break_rule

    def generate(self, requests):
        return self.break_rule(self.engine.generate(requests), requests)

    def stream(self, request):
        return self.engine.stream(request)

    def close(self):
        pass


@pytest.fixture(scope="module")
def tiny(varied_tiny_dir):
    engine = create_engine("pt", varied_tiny_dir, batch_size=4)
    yield engine
    engine.close()


def _reversed_batch(results, requests):
    return results[::-1] if len(results) > 1 else results


def _one_answer_for_n(results, requests):
    return [answers[:1] for answers in results]


def _no_length(results, requests):
    import dataclasses

    return [[dataclasses.replace(a, finish_reason="stop") for a in answers] for answers in results]


def _stream_differs(engine):
    class Streaming(_Wrong):
        def stream(self, request):
            yield from self.engine.stream(request)
            yield "!"

    return Streaming(engine, lambda results, requests: results)


@pytest.mark.parametrize(
    "check, make_wrong, message",
    [
        ("batched_equals_one_at_a_time", lambda e: _Wrong(e, _reversed_batch), "alone gives"),
        ("n_gives_n", lambda e: _Wrong(e, _one_answer_for_n), "n=3 gave 1 completions"),
        ("max_tokens_gives_length", lambda e: _Wrong(e, _no_length), "finish_reason 'length'"),
        ("stream_equals_generate", _stream_differs, "Streamed"),
    ],
)
def test_the_kit_fails_a_wrong_engine(tiny, check, make_wrong, message):
    with pytest.raises(AssertionError, match=message):
        engine_conformance.CHECKS[check](make_wrong(tiny))


class _IgnoresCancel(_Wrong):
    """Takes the cancel switch, and never looks at it."""

    def generate(self, requests, cancel=None):
        return self.engine.generate(requests)


def test_the_kit_fails_an_engine_that_ignores_cancel_and_skips_one_without_it(tiny):
    with pytest.raises(AssertionError, match="answered a request whose cancel switch was set"):
        engine_conformance.check_cancel_stops_the_work(_IgnoresCancel(tiny, None))
    with pytest.raises(pytest.skip.Exception, match="_Wrong.generate\\(\\) takes no 'cancel' switch"):
        engine_conformance.check_cancel_stops_the_work(_Wrong(tiny, None))


def test_run_conformance_runs_every_check(tiny, varied_tiny_dir):
    passed = engine_conformance.run_conformance(tiny, engine_name="pt", model=varied_tiny_dir)
    assert passed == [*engine_conformance.CHECKS, "unknown_option_is_named"]
    assert "concurrent_equals_sequential" in passed and "stop_strings_cut_the_text" in passed


# -- the batching worker -----------------------------------------------------------------------


def test_requests_that_arrive_while_a_batch_runs_join_the_next_one(tiny):
    requests = [ChatRequest(user(p), sampling=greedy(max_tokens=6 + i)) for i, p in enumerate(engine_conformance.PROMPTS[:5])]
    alone = [tiny.generate([r])[0] for r in requests]
    scheduler = tiny.scheduler
    sizes, gate, run_batch = [], threading.Event(), scheduler.run_batch

    def held_first(batch):
        sizes.append(len(batch))
        if len(sizes) == 1:
            gate.wait(60)  # the first batch runs until the others are queued
        return run_batch(batch)

    scheduler.run_batch = held_first
    try:
        answers = {}
        threads = [threading.Thread(target=lambda i=i: answers.update({i: tiny.generate([requests[i]])[0]})) for i in range(5)]
        threads[0].start()
        while not sizes:
            time.sleep(0.01)
        for thread in threads[1:]:
            thread.start()
        while len(scheduler._pending) < 4:
            time.sleep(0.01)
        gate.set()
        for thread in threads:
            thread.join(120)
    finally:
        scheduler.run_batch = run_batch
        gate.set()
    assert sizes == [1, 4]  # batch_size 4: the four waiting requests ran together
    assert [answers[i] for i in range(5)] == alone


def test_a_closed_stream_frees_its_row(tiny):
    request = ChatRequest(user(engine_conformance.PROMPTS[1]), sampling=greedy(max_tokens=120))
    [[full]] = tiny.generate([request])
    assert full.finish_reason == "length"
    other = ChatRequest(user("x"), sampling=greedy(max_tokens=120))
    [[other_alone]] = tiny.generate([other])
    before = tiny.tokens_generated
    stream = tiny.stream(request)
    next(stream)
    stream.close()
    assert tiny.scheduler.wait_idle(timeout=60)
    assert tiny.tokens_generated - before < 60
    [[answer]] = tiny.generate([other])
    assert answer == other_alone


def test_closing_the_engine_fails_waiting_requests_and_refuses_new_ones(varied_tiny_dir):
    engine = create_engine("pt", varied_tiny_dir, batch_size=2)
    engine.close()
    assert not engine.scheduler._worker.is_alive()
    with pytest.raises(TuneforgeError, match="This engine was closed"):
        engine.generate([ChatRequest(user("hi"), sampling=greedy())])


def test_compile_option_gives_the_same_greedy_answers(tiny, varied_tiny_dir):
    """On a CPU transformers does not compile, but the static KV cache path is the same one."""
    static = create_engine("pt", varied_tiny_dir, batch_size=4, compile=True)
    try:
        requests = [ChatRequest(user(p), sampling=greedy(max_tokens=8)) for p in engine_conformance.PROMPTS[:4]]
        expected = tiny.generate(requests)
        got = static.generate(requests)
        assert [a[0].token_ids for a in got] == [a[0].token_ids for a in expected]
    finally:
        static.close()
    with pytest.raises(TuneforgeError, match="Engine option 'compile' is 'yes'"):
        create_engine("pt", varied_tiny_dir, compile="yes")


# -- the scheduler alone ------------------------------------------------------------------------


def test_batcher_groups_by_key_caps_rows_and_drops_cancelled_tickets():
    ran, gate = [], threading.Event()

    def run_batch(batch):
        ran.append([t.name for t in batch])
        if len(ran) == 1:
            gate.wait(10)
        return [t.name.upper() for t in batch]

    def ticket(name, key, rows=1, sort_key=0):
        t = Ticket(key, rows=rows, sort_key=sort_key)
        t.name = name
        return t

    batcher = DynamicBatcher(run_batch, capacity=4)
    try:
        first = ticket("first", "a")
        batcher.submit([first])
        while not ran:
            time.sleep(0.01)
        b1, b2, c1, gone, b3 = ticket("b1", "a", sort_key=5), ticket("b2", "a", sort_key=1), ticket("c1", "c"), ticket("gone", "a"), ticket("b3", "a", rows=3)
        batcher.submit([b1, b2, c1])
        batcher.submit([gone, b3])
        gone.cancel.set()
        gate.set()
        assert batcher.wait_idle(10)
        assert ran == [["first"], ["b2", "b1"], ["c1"], ["b3"]]
        assert b1.wait() == "B1" and c1.wait() == "C1" and b3.wait() == "B3"
        with pytest.raises(TuneforgeError, match="cancelled before it ran"):
            gone.wait()
    finally:
        batcher.close()


def test_batcher_hands_a_batch_error_to_each_of_its_callers():
    def run_batch(batch):
        raise ValueError("out of memory, say")

    batcher = DynamicBatcher(run_batch, capacity=2)
    tickets = [Ticket("k"), Ticket("k")]
    batcher.submit(tickets)
    for t in tickets:
        with pytest.raises(ValueError, match="out of memory"):
            t.wait(10)
    batcher.close()
    with pytest.raises(TuneforgeError, match="closed"):
        batcher.submit([Ticket("k")])
