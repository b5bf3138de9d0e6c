"""One thread owns the engine: requests queue up and run one batch at a time.

The engine is blocking and not thread-safe, so every call to it (generate,
stream, loading an adapter) happens on this thread; the event loop only waits
on futures and queues, so it keeps answering (``/health`` included) while the
model generates. Plain generation requests that wait together for the same
model are answered in one ``generate`` call.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import logging
import threading
from dataclasses import dataclass, field
from typing import Any, Callable

from ..errors import TuneforgeError
from ..inference import ChatRequest
from .adapters import Adapters
from .errors import APIError, bad_request

log = logging.getLogger("tuneforge.server")


@dataclass
class _Job:
    kind: str  # "generate", "stream" or "call"
    loop: asyncio.AbstractEventLoop
    adapter: str | None = None
    raw: bool = False
    fit_max_tokens: bool = False  # max_tokens was not given: shrink it to what the context leaves
    requests: list[ChatRequest] = field(default_factory=list)
    call: Callable[[], Any] | None = None
    future: asyncio.Future | None = None
    events: asyncio.Queue | None = None
    cancelled: threading.Event = field(default_factory=threading.Event)

    def resolve(self, value: Any = None, error: BaseException | None = None) -> None:
        def settle() -> None:
            if self.future is not None and not self.future.done():
                if error is not None:
                    self.future.set_exception(error)
                else:
                    self.future.set_result(value)

        self.loop.call_soon_threadsafe(settle)

    def emit(self, event: tuple) -> None:
        self.loop.call_soon_threadsafe(self.events.put_nowait, event)


class _RawPrompt:
    """Stands in for the chat template: the prompt is the text itself, tokenized."""

    def __init__(self, template, tokenizer) -> None:
        self.template, self.tokenizer = template, tokenizer

    def prompt(self, messages, tools=None) -> list[int]:
        return list(self.tokenizer.encode(messages[-1]["content"]))


class EngineWorker:
    """Runs engine work on its own thread, in the order it was submitted."""

    def __init__(self, engine, *, batch_size: int = 8) -> None:
        self.engine = engine
        self.batch_size = batch_size
        self.adapters = Adapters(engine)
        self.context_length = getattr(engine, "context_length", None)
        self._jobs: collections.deque[_Job] = collections.deque()
        self._ready = threading.Condition()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="tuneforge-engine", daemon=True)
        self._thread.start()

    # -- the event loop's side --------------------------------------------

    async def generate(self, requests: list[ChatRequest], *, adapter: str | None, raw: bool = False, fit_max_tokens: bool = False):
        job = _Job("generate", asyncio.get_running_loop(), adapter, raw, fit_max_tokens, list(requests))
        job.future = job.loop.create_future()
        self._submit(job)
        try:
            return await job.future
        except asyncio.CancelledError:
            job.cancelled.set()  # the caller left: skip the job if it has not started
            raise

    def stream(self, request: ChatRequest, *, adapter: str | None, raw: bool = False, fit_max_tokens: bool = False) -> _Job:
        """Start streaming; read ``job.events``: ("delta", text), then ("end", Completion) or ("error", exc)."""
        job = _Job("stream", asyncio.get_running_loop(), adapter, raw, fit_max_tokens, [request])
        job.events = asyncio.Queue()
        self._submit(job)
        return job

    async def call(self, func: Callable[[], Any]):
        """Run ``func`` on the engine thread, between generations."""
        job = _Job("call", asyncio.get_running_loop(), call=func)
        job.future = job.loop.create_future()
        self._submit(job)
        return await job.future

    def supports_raw_prompts(self) -> bool:
        return hasattr(self.engine, "template") and hasattr(self.engine, "tokenizer")

    def _submit(self, job: _Job) -> None:
        with self._ready:
            if self._stopping:
                raise APIError(503, "The server is shutting down; retry on another instance or after it restarts.", type="service_unavailable")
            self._jobs.append(job)
            self._ready.notify()

    def stop(self, timeout: float = 30.0) -> None:
        with self._ready:
            self._stopping = True
            self._ready.notify()
        self._thread.join(timeout)

    # -- the engine thread --------------------------------------------------

    def _next_batch(self) -> list[_Job] | None:
        with self._ready:
            while not self._jobs:
                if self._stopping:
                    return None
                self._ready.wait(timeout=0.5)
            job = self._jobs.popleft()
            batch = [job]
            if job.kind == "generate":
                count = len(job.requests)
                for other in list(self._jobs):
                    if count >= self.batch_size:
                        break
                    if other.kind == "generate" and (other.adapter, other.raw) == (job.adapter, job.raw):
                        self._jobs.remove(other)
                        batch.append(other)
                        count += len(other.requests)
            return batch

    def _run(self) -> None:
        while (batch := self._next_batch()) is not None:
            batch = [job for job in batch if not job.cancelled.is_set()]
            if not batch:
                continue
            try:
                if batch[0].kind == "call":
                    self._run_call(batch[0])
                elif batch[0].kind == "stream":
                    self._run_stream(batch[0])
                else:
                    self._run_generate(batch)
            except BaseException as exc:  # never let one request take the worker down
                for job in batch:
                    if job.events is not None:
                        job.emit(("error", exc))
                    else:
                        job.resolve(error=exc)

    def _prepare(self, job: _Job) -> None:
        self.adapters.activate(job.adapter)
        job.requests = [self._fit_context(request, job.raw, job.fit_max_tokens) for request in job.requests]

    def _fit_context(self, request: ChatRequest, raw: bool, fit_max_tokens: bool) -> ChatRequest:
        """The request, refused if its prompt does not fit the context, or with max_tokens shrunk to fit."""
        template = getattr(self.engine, "template", None)
        if not self.context_length or template is None:
            return request  # the engine checks for itself
        tokens = len(self._template(raw).prompt(list(request.messages), tools=request.tools))
        room = self.context_length - tokens
        if room <= 0:
            raise bad_request(
                f"The prompt has {tokens} tokens, but the model's context is {self.context_length}; shorten the prompt.",
                param="prompt" if raw else "messages", code="context_length_exceeded",
            )
        if request.sampling.max_tokens > room:
            if fit_max_tokens:
                return dataclasses.replace(request, sampling=dataclasses.replace(request.sampling, max_tokens=room))
            raise bad_request(
                f"max_tokens is {request.sampling.max_tokens}, but the prompt of {tokens} tokens leaves room for {room} "
                f"in the model's context of {self.context_length}; lower max_tokens to at most {room}.",
                param="max_tokens", code="context_length_exceeded",
            )
        return request

    def _template(self, raw: bool):
        template = self.engine.template
        if raw and not isinstance(template, _RawPrompt):
            return _RawPrompt(template, self.engine.tokenizer)
        return template

    def _with_prompt_kind(self, raw: bool, work: Callable[[], Any]) -> Any:
        if not raw:
            return work()
        chat_template = self.engine.template
        self.engine.template = _RawPrompt(chat_template, self.engine.tokenizer)
        try:
            return work()
        finally:
            self.engine.template = chat_template

    def _run_call(self, job: _Job) -> None:
        try:
            job.resolve(job.call())
        except TuneforgeError as exc:
            job.resolve(error=bad_request(str(exc)))

    def _run_generate(self, batch: list[_Job]) -> None:
        ready = []
        for job in batch:
            try:
                self._prepare(job)
                ready.append(job)
            except APIError as exc:
                job.resolve(error=exc)
        if not ready:
            return
        requests = [request for job in ready for request in job.requests]
        try:
            results = self._with_prompt_kind(ready[0].raw, lambda: self.engine.generate(requests))
        except TuneforgeError as exc:
            for job in ready:
                job.resolve(error=bad_request(str(exc)))
            return
        start = 0
        for job in ready:
            job.resolve(results[start : start + len(job.requests)])
            start += len(job.requests)

    def _run_stream(self, job: _Job) -> None:
        try:
            self._prepare(job)
        except APIError as exc:
            job.emit(("error", exc))
            return
        self._with_prompt_kind(job.raw, lambda: self._pump(job))

    def _pump(self, job: _Job) -> None:
        deltas = self.engine.stream(job.requests[0])
        try:
            # Each delta carries at least one token, or is the final one; the bound only guards a broken engine.
            for _ in range(16 * job.requests[0].sampling.max_tokens + 64):
                if job.cancelled.is_set():
                    log.info("A client left its stream; its generation was stopped.")
                    return
                try:
                    delta = next(deltas)
                except StopIteration as end:
                    job.emit(("end", end.value))
                    return
                except TuneforgeError as exc:
                    job.emit(("error", bad_request(str(exc))))
                    return
                job.emit(("delta", delta))
            job.emit(("error", RuntimeError("The engine streamed more deltas than max_tokens allows.")))
        finally:
            deltas.close()  # stops the generation when the client left early
