"""The bridge between the event loop and the engine's blocking calls.

Engines are blocking and thread-safe (the engine protocol of
``tuneforge.inference``): each request's call runs on a thread of its own, so
requests that arrive together reach the engine together and it batches them,
while the event loop keeps answering (``/health`` included). A stream's thread
hands its deltas to the loop through a queue; when the client leaves, the thread
closes the engine's stream, which frees the request's place in the batch. A
plain request's ``Call`` passes the engine a ``cancel`` switch (when its
``generate`` takes one), set when the client leaves. Both can be stopped with an
error (``stop``), which their caller gets at once: the shutdown cuts what is still
open.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import logging
import threading
from typing import Any, Callable, Sequence

from ..errors import TuneforgeError
from ..inference import ChatRequest, ContextLengthError
from .errors import APIError, bad_request

log = logging.getLogger("tuneforge.server")


def api_error(exc: BaseException, request: ChatRequest | None = None) -> BaseException:
    """The engine's refusal as a 400 in OpenAI's shape (other errors pass through as they are)."""
    if isinstance(exc, ContextLengthError):
        param = "max_tokens" if exc.max_tokens is not None else ("prompt" if request is not None and request.prompt is not None else "messages")
        return bad_request(str(exc), param=param, code="context_length_exceeded")
    if isinstance(exc, TuneforgeError):
        return bad_request(str(exc))
    return exc


def in_thread(func: Callable[..., Any], *args: Any, requests: Sequence[ChatRequest] = ()) -> asyncio.Future:
    """Run ``func(*args)`` on a new thread; the future gets its result (or its error, as an API error).

    ``requests`` are those the call answers: an error names the field of theirs at fault.
    """
    loop = asyncio.get_running_loop()
    future = loop.create_future()

    def settle(value: Any, error: BaseException | None) -> None:
        if future.done():  # cancelled, or stopped with an error: the answer is not wanted
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(value)

    def work() -> None:
        try:
            value = func(*args)
        except BaseException as exc:
            _call_soon(loop, settle, None, api_error(exc, requests[0] if requests else None))
        else:
            _call_soon(loop, settle, value, None)

    threading.Thread(target=work, name="tuneforge-request", daemon=True).start()
    return future


def _call_soon(loop: asyncio.AbstractEventLoop, callback: Callable[..., Any], *args: Any) -> None:
    """``callback(*args)`` on the loop, unless the loop is gone (the server exited while the engine worked)."""
    with contextlib.suppress(RuntimeError):
        loop.call_soon_threadsafe(callback, *args)


def takes_cancel(generate: Callable[..., Any]) -> bool:
    """Whether an engine's ``generate`` takes the ``cancel`` switch of the engine protocol."""
    try:
        return "cancel" in inspect.signature(generate).parameters
    except (TypeError, ValueError):
        return False


class Call:
    """One ``engine.generate(requests)`` on a thread of its own; ``future`` gets its answers.

    ``stop`` sets the engine's ``cancel`` switch (when its ``generate`` takes one:
    ``cancellable``), so the engine stops generating what nobody will read, and
    hands ``error`` (if given) to whoever awaits ``future``.
    """

    def __init__(self, engine, requests: Sequence[ChatRequest]) -> None:
        self.cancel = threading.Event()
        self.cancellable = takes_cancel(engine.generate)
        generate = functools.partial(engine.generate, cancel=self.cancel) if self.cancellable else engine.generate
        self.future = in_thread(generate, list(requests), requests=requests)

    def stop(self, error: BaseException | None = None) -> None:
        self.cancel.set()
        if not self.future.done():
            if error is not None:
                self.future.set_exception(error)
            else:
                self.future.cancel()


class Stream:
    """One streamed request: ``events`` gets ("delta", text)..., then ("end", Completion) or ("error", exc)."""

    def __init__(self, engine, request: ChatRequest) -> None:
        self.request = request
        self.loop = asyncio.get_running_loop()
        self.events: asyncio.Queue = asyncio.Queue()
        self.cancelled = threading.Event()
        self._why = "A client left its stream; its generation was stopped."
        self._thread = threading.Thread(target=self._pump, args=(engine,), name="tuneforge-stream", daemon=True)
        self._thread.start()

    def stop(self, error: BaseException | None = None) -> None:
        """Stop the generation (at its next token); ``error`` (if given) is the last event the consumer reads.

        Called on the event loop.
        """
        if error is not None:
            self._why = "A stream was cut by the shutdown; its generation was stopped."
            self.events.put_nowait(("error", error))
        self.cancelled.set()

    def _emit(self, event: tuple) -> None:
        _call_soon(self.loop, self.events.put_nowait, event)

    def _pump(self, engine) -> None:
        try:
            deltas = engine.stream(self.request)
            # An engine yields a delta per token at most (empty ones included); the bound guards a broken one.
            for _ in range(16 * self.request.sampling.max_tokens + 64):
                if self.cancelled.is_set():
                    log.info(self._why)
                    deltas.close()  # the engine frees the request's row
                    return
                try:
                    delta = next(deltas)
                except StopIteration as end:
                    self._emit(("end", end.value))
                    return
                if delta:
                    self._emit(("delta", delta))
            deltas.close()
            self._emit(("error", RuntimeError("The engine streamed more deltas than max_tokens allows.")))
        except BaseException as exc:  # handed to the response, never lost on this thread
            self._emit(("error", api_error(exc, self.request)))


def check_adapter_name(name: str, served: list[str]) -> None:
    """Refuse an adapter name the API cannot serve."""
    if not name or not set(name) <= ADAPTER_NAME_CHARS:
        raise APIError(400, f"Adapter name '{name}' may use only letters, digits and - _ . : /; choose another name.", param="name")
    if name in served:
        raise APIError(400, f"The model name '{name}' is already served; choose another name for the adapter.", param="name")


ADAPTER_NAME_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.:/")
