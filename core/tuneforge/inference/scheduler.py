"""Dynamic batching: one worker thread runs whatever requests are waiting, together.

Callers (any number of threads) ``submit`` tickets and wait on them; the worker
takes the oldest waiting ticket, adds the waiting tickets that may share its batch
(same ``key``) up to ``capacity`` rows, runs them in one call and hands each
ticket its result. Requests that arrive while a batch runs join the next one. A
ticket cancelled before its batch starts is dropped without running.

The module knows nothing of models: the engine gives the function that runs a
batch and decides, through each ticket's ``key``, ``rows`` and ``sort_key``, what
may share a batch and in which order.
"""

from __future__ import annotations

import itertools
import threading
from typing import Any, Callable, Hashable, Sequence

from ..errors import TuneforgeError


class Ticket:
    """One request waiting for (or in) a batch.

    ``key``: tickets with equal keys may share a batch. ``rows``: how many of the
    batch's ``capacity`` rows it takes. ``sort_key``: the order within one
    submission (shortest prompts together, say). ``cancel`` is set by the caller
    that no longer wants the answer; the batch function should stop its rows.
    """

    def __init__(self, key: Hashable, rows: int = 1, sort_key: Any = 0) -> None:
        self.key, self.rows, self.sort_key = key, rows, sort_key
        self.order: tuple = ()
        self.cancel = threading.Event()
        self._done = threading.Event()
        self._closed_while_running = False
        self._result: Any = None
        self._error: BaseException | None = None

    def set_result(self, result: Any) -> None:
        self._result = result
        self._done.set()

    def set_error(self, error: BaseException) -> None:
        self._error = error
        self._done.set()

    @property
    def done(self) -> bool:
        return self._done.is_set()

    def wait(self, timeout: float | None = None) -> Any:
        """The result (re-raising the batch's error); cancels the ticket if the wait is interrupted."""
        try:
            if not self._done.wait(timeout):
                raise TimeoutError(f"No answer after {timeout} s.")
        except BaseException:
            self.cancel.set()
            raise
        if self._error is not None:
            raise self._error
        return self._result


class DynamicBatcher:
    """A worker thread that runs waiting tickets in batches of at most ``capacity`` rows."""

    def __init__(self, run_batch: Callable[[list], Sequence[Any]], *, capacity: int, name: str = "tuneforge-batcher") -> None:
        self.run_batch, self.capacity = run_batch, capacity
        self._pending: list[Ticket] = []
        self._running: list[Ticket] = []
        self._closed = False
        self._submissions = itertools.count()
        self._cond = threading.Condition()
        self.batches_run = 0
        self.largest_batch = 0  # the most rows one batch has had
        self._worker = threading.Thread(target=self._loop, name=name, daemon=True)
        self._worker.start()

    # -- callers ----------------------------------------------------------------

    def submit(self, tickets: Sequence[Ticket]) -> None:
        """Queue the tickets of one call; they keep their ``sort_key`` order among themselves."""
        with self._cond:
            if self._closed:
                raise TuneforgeError("This engine was closed; create a new one to generate again.")
            submission = next(self._submissions)
            for position, ticket in enumerate(tickets):
                ticket.order = (submission, ticket.sort_key, position)
                self._pending.append(ticket)
            self._cond.notify_all()

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Wait until nothing is queued or running (True), or ``timeout`` passes (False)."""
        with self._cond:
            return self._cond.wait_for(lambda: not self._pending and not self._running, timeout)

    def close(self) -> None:
        """Refuse new tickets, fail the waiting ones, stop the running batch at its next step, stop the worker.

        The running tickets are cancelled (a batch function stops their rows) and fail
        with an error rather than hand out answers cut short.
        """
        with self._cond:
            self._closed = True
            waiting, self._pending = self._pending, []
            for ticket in self._running:
                ticket._closed_while_running = True
                ticket.cancel.set()
            self._cond.notify_all()
        for ticket in waiting:
            ticket.set_error(TuneforgeError("This engine was closed before the request ran; create a new one to generate again."))
        if self._worker is not threading.current_thread():
            self._worker.join()

    # -- the worker ---------------------------------------------------------------

    def _next_batch(self) -> list[Ticket] | None:
        """The next batch to run (None: closed). Called with the lock held."""
        while True:
            for ticket in [t for t in self._pending if t.cancel.is_set()]:
                self._pending.remove(ticket)
                ticket.set_error(TuneforgeError("The request was cancelled before it ran."))
            if self._pending:
                break
            self._cond.notify_all()  # wake wait_idle
            if self._closed:
                return None
            self._cond.wait()
        key = min(self._pending, key=lambda t: t.order[0]).key
        candidates = sorted((t for t in self._pending if t.key == key), key=lambda t: t.order)
        batch, rows = [], 0
        for ticket in candidates:
            if batch and rows + ticket.rows > self.capacity:
                break
            batch.append(ticket)
            rows += ticket.rows
        for ticket in batch:
            self._pending.remove(ticket)
        self._running = batch
        self.largest_batch = max(self.largest_batch, rows)
        return batch

    def _loop(self) -> None:
        while True:
            with self._cond:
                batch = self._next_batch()
            if batch is None:
                return
            try:
                results = self.run_batch(batch)
            except BaseException as exc:  # every caller of this batch gets the error
                for ticket in batch:
                    ticket.set_error(exc)
            else:
                for ticket, result in zip(batch, results):
                    if ticket._closed_while_running:
                        ticket.set_error(TuneforgeError("This engine was closed while the request ran; create a new one to generate again."))
                    else:
                        ticket.set_result(result)
            finally:
                del batch  # the batch's tensors go with it
                with self._cond:
                    self._running = []
                    self.batches_run += 1
                    self._cond.notify_all()
