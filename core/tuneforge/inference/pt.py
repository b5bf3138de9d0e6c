"""The plain PyTorch engine: transformers ``generate()`` on left-padded batches.

Requests that share their sampling settings are generated together, shortest
prompts first, ``batch_size`` sequences at a time. ``max_tokens`` and stop
strings are checked per row, so requests with different limits still share a
batch. A request with a ``seed`` is generated on its own, so its answers do not
depend on which other requests came with it.
"""

from __future__ import annotations

import contextlib
import os
import queue
import threading
from typing import Any, Iterator, Sequence

from ..errors import TuneforgeError
from . import ChatRequest, Completion, SamplingParams


def create_pt_engine(
    model: Any,
    *,
    batch_size: int = 8,
    device: str | None = None,
    torch_dtype: str | None = None,
    template: str | None = None,
    attn_implementation: str | None = None,
    model_family: str | None = None,
) -> "PTEngine":
    """A ``PTEngine`` for a model spec (loaded here with the load options) or a ``Loaded``."""
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise TuneforgeError(f"Engine option 'batch_size' is {batch_size!r}; it must be an integer of at least 1.")
    load_options = {
        "device": device,
        "torch_dtype": torch_dtype,
        "template": template,
        "attn_implementation": attn_implementation,
        "model_family": model_family,
    }
    given = {k: v for k, v in load_options.items() if v is not None}
    if isinstance(model, (str, os.PathLike)):
        from ..modeling import load_for_inference

        given.setdefault("torch_dtype", "auto")
        loaded = load_for_inference(str(model), **given)
    else:
        if given:
            raise TuneforgeError(
                f"Engine option '{next(iter(given))}' only applies when the engine loads the model itself; "
                f"pass a model spec instead of a loaded model, or give that option to load_for_inference."
            )
        loaded = model
    return PTEngine(loaded, batch_size=batch_size)


class PTEngine:
    """Serves the engine protocol with transformers ``generate()``.

    Not thread-safe: one ``generate`` or ``stream`` at a time.
    """

    def __init__(self, loaded: Any, *, batch_size: int = 8) -> None:
        self.loaded = loaded
        self.model = loaded.model
        self.tokenizer = loaded.tokenizer
        self.template = loaded.template
        self.device = loaded.device
        self.batch_size = batch_size
        eos = self.tokenizer.eos_token_id
        self.stop_token_ids = list(getattr(self.template, "stop_token_ids", None) or ([eos] if eos is not None else []))
        # A special token never shows in text decoded without special tokens: its id stops instead.
        special = set(getattr(self.tokenizer, "all_special_tokens", None) or ())
        self.stop_strings = tuple(s for s in getattr(self.template, "stop_strings", None) or () if s not in special)
        pad = self.tokenizer.pad_token_id
        self.pad_token_id = pad if pad is not None else (self.stop_token_ids[0] if self.stop_token_ids else 0)
        self.context_length = getattr(getattr(self.model, "config", None), "max_position_embeddings", None)

    # -- the protocol -----------------------------------------------------

    def generate(self, requests: Sequence[ChatRequest]) -> list[list[Completion]]:
        jobs = [_Job(i, request, self._prompt(i, request)) for i, request in enumerate(requests)]
        results: list[list[Completion] | None] = [None] * len(jobs)
        for batch in self._batches(jobs):
            for job, completions in zip(batch, self._generate_batch(batch)):
                results[job.index] = completions
        return results  # type: ignore[return-value]

    def stream(self, request: ChatRequest) -> Iterator[str]:
        """Yield text deltas; the generator returns the final ``Completion``."""
        if request.sampling.n != 1:
            raise TuneforgeError(
                f"Streaming gives one completion, but the request asks for n={request.sampling.n}; set n=1 or use generate()."
            )
        job = _Job(0, request, self._prompt(0, request))
        tokens: queue.Queue = queue.Queue()
        cancel = threading.Event()
        result: dict[str, Any] = {}

        def work() -> None:
            try:
                result["completions"] = self._generate_batch([job], streamer=_QueueStreamer(tokens), cancel=cancel)
            except BaseException as exc:  # handed to the consumer, which re-raises it
                tokens.put(_Failure(exc))
            finally:
                tokens.put(_END)

        text = _GrowingText(self.tokenizer, self.stop_token_ids, self.stop_strings + tuple(request.sampling.stop))
        worker = threading.Thread(target=work, name="tuneforge-pt-stream", daemon=True)
        worker.start()
        try:
            while (item := tokens.get()) is not _END:
                if isinstance(item, _Failure):
                    raise item.error
                delta = text.push(item)
                if delta:
                    yield delta
        finally:
            cancel.set()  # a consumer that stops early stops the generation too
            worker.join()
        [completion] = result["completions"][0]
        if completion.text.startswith(text.emitted) and len(completion.text) > len(text.emitted):
            yield completion.text[len(text.emitted):]
        return completion

    def close(self) -> None:
        import gc

        import torch

        self.model = self.loaded = None
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    # -- batching -----------------------------------------------------------

    def _prompt(self, index: int, request: ChatRequest) -> list[int]:
        if self.model is None:
            raise TuneforgeError("This engine was closed; create a new one to generate again.")
        ids = list(self.template.prompt(list(request.messages), tools=request.tools))
        if self.context_length and len(ids) >= self.context_length:
            raise TuneforgeError(
                f"Request {index} has a prompt of {len(ids)} tokens, but the model's context is {self.context_length}; "
                f"shorten the conversation."
            )
        return ids

    def _batches(self, jobs: list["_Job"]) -> Iterator[list["_Job"]]:
        groups: dict[tuple, list[_Job]] = {}
        for job in jobs:
            groups.setdefault(_group_key(job), []).append(job)
        for group in groups.values():
            group.sort(key=lambda job: len(job.prompt))
            sampling = group[0].request.sampling
            per_batch = max(1, self.batch_size // (1 if sampling.greedy else sampling.n))
            for start in range(0, len(group), per_batch):
                yield group[start : start + per_batch]

    def _generate_batch(self, batch: list["_Job"], streamer=None, cancel: threading.Event | None = None) -> list[list[Completion]]:
        import torch
        from transformers import GenerationConfig, StoppingCriteriaList

        sampling = batch[0].request.sampling  # what the batch shares (see _group_key)
        # Greedy answers are all the same: generate one and copy it n times.
        n = 1 if sampling.greedy else sampling.n
        width = max(len(job.prompt) for job in batch)
        input_ids = torch.tensor(
            [[self.pad_token_id] * (width - len(job.prompt)) + job.prompt for job in batch], dtype=torch.long
        )
        attention_mask = torch.tensor([[0] * (width - len(job.prompt)) + [1] * len(job.prompt) for job in batch], dtype=torch.long)
        rows = [job for job in batch for _ in range(n)]  # generate() repeats each prompt n times in a row
        limits = [job.request.sampling.max_tokens for job in rows]
        stops = [self.stop_strings + tuple(job.request.sampling.stop) for job in rows]
        row_stops = _RowStops(self.tokenizer, width, limits, stops, set(self.stop_token_ids), cancel)
        config = GenerationConfig(
            max_new_tokens=max(limits),
            do_sample=not sampling.greedy,
            # Greedy: neutral values, so a model's own sampling defaults do not leak in.
            temperature=1.0 if sampling.greedy else sampling.temperature,
            top_p=1.0 if sampling.greedy else sampling.top_p,
            top_k=None if sampling.greedy else sampling.top_k,
            repetition_penalty=sampling.repetition_penalty,
            num_return_sequences=n,
            eos_token_id=self.stop_token_ids or None,
            pad_token_id=self.pad_token_id,
        )
        with _seeded(None if sampling.greedy else sampling.seed, self.device), torch.inference_mode():
            output = self.model.generate(
                input_ids=input_ids.to(self.device),
                attention_mask=attention_mask.to(self.device),
                generation_config=config,
                stopping_criteria=StoppingCriteriaList([row_stops]),
                streamer=streamer,
            )
        generated = output[:, width:].tolist()
        completions = [
            self._finish(tokens, prompt_tokens=len(job.prompt), limit=limit, stop_at=row_stops.hits.get(row), stops=row_stop)
            for row, (tokens, job, limit, row_stop) in enumerate(zip(generated, rows, limits, stops))
        ]
        copies = sampling.n // n
        return [completions[i * n : (i + 1) * n] * copies for i in range(len(batch))]

    def _finish(self, tokens: list[int], *, prompt_tokens: int, limit: int, stop_at: int | None, stops: tuple[str, ...]) -> Completion:
        tokens = tokens[: stop_at if stop_at is not None else limit]
        text_tokens = tokens
        reason = None
        stop_ids = set(self.stop_token_ids)
        for i, token in enumerate(tokens):
            if token in stop_ids:
                tokens, text_tokens, reason = tokens[: i + 1], tokens[:i], "stop"
                break
        text = self.tokenizer.decode(text_tokens, skip_special_tokens=True)
        cut = first_stop(text, stops)
        if cut is not None:
            text, reason = text[:cut], "stop"
        if reason is None:
            reason = "length" if len(tokens) >= limit else "stop"
        return Completion(text, list(tokens), reason, prompt_tokens, len(tokens))


class _Job:
    __slots__ = ("index", "request", "prompt")

    def __init__(self, index: int, request: ChatRequest, prompt: list[int]) -> None:
        self.index, self.request, self.prompt = index, request, prompt


def _group_key(job: _Job) -> tuple:
    """Requests with the same key can share a generate() call."""
    s: SamplingParams = job.request.sampling
    if s.greedy:
        return ("greedy", s.repetition_penalty, s.n)
    if s.seed is not None:
        return ("seeded", job.index)
    return ("sampled", s.temperature, s.top_p, s.top_k, s.repetition_penalty, s.n)


def first_stop(text: str, stops: Sequence[str]) -> int | None:
    """Where the first stop string starts in ``text`` (None: none occurs)."""
    found = [i for i in (text.find(s) for s in stops) if i >= 0]
    return min(found) if found else None


def _held_back(text: str, stops: Sequence[str]) -> int:
    """How many trailing characters could still become a stop string."""
    longest = 0
    for stop in stops:
        for k in range(min(len(stop) - 1, len(text)), longest, -1):
            if text.endswith(stop[:k]):
                longest = k
                break
    return longest


@contextlib.contextmanager
def _seeded(seed: int | None, device):
    """Seed the RNG for one generation and restore it afterwards."""
    if seed is None:
        yield
        return
    import torch

    devices = [] if device.type == "cpu" else [device]
    with torch.random.fork_rng(devices=devices, device_type=device.type):
        torch.manual_seed(seed)
        yield


class _RowStops:
    """Per-row stopping: each row's ``max_tokens`` and stop strings, and a cancel switch.

    Records, per row, how many tokens had been generated when a stop string first
    appeared, so the answer's tokens end exactly there. Called by ``generate()``
    after each step with the ids so far; returns which rows are done.
    """

    def __init__(self, tokenizer, width: int, limits: list[int], stops: list[tuple[str, ...]], stop_ids: set[int], cancel) -> None:
        self.tokenizer, self.width, self.limits, self.stops, self.stop_ids = tokenizer, width, limits, stops, stop_ids
        self.cancel = cancel
        self.hits: dict[int, int] = {}
        self.ended: set[int] = set()

    def __call__(self, input_ids, scores=None, **kwargs):
        import torch

        length = input_ids.shape[1] - self.width
        done = torch.zeros(input_ids.shape[0], dtype=torch.bool)
        if self.cancel is not None and self.cancel.is_set():
            done[:] = True
            return done.to(input_ids.device)
        last = input_ids[:, -1].tolist()
        for row in range(input_ids.shape[0]):
            if row in self.ended or row in self.hits:
                done[row] = True
                continue
            if length >= self.limits[row]:
                done[row] = True
                continue
            if last[row] in self.stop_ids:
                self.ended.add(row)  # later tokens of this row are padding
                done[row] = True
                continue
            if self.stops[row]:
                text = self.tokenizer.decode(input_ids[row, self.width :].tolist(), skip_special_tokens=True)
                if first_stop(text, self.stops[row]) is not None:
                    self.hits[row] = length
                    done[row] = True
        return done.to(input_ids.device)


class _QueueStreamer:
    """A transformers streamer that hands each new token to a queue (the prompt is skipped)."""

    def __init__(self, tokens: queue.Queue) -> None:
        self.tokens = tokens
        self.prompt_seen = False

    def put(self, value) -> None:
        if not self.prompt_seen:
            self.prompt_seen = True
            return
        self.tokens.put(value.reshape(-1).tolist())

    def end(self) -> None:
        pass


class _GrowingText:
    """The text of a growing answer, emitted only where it can no longer change.

    Holds back an unfinished UTF-8 character and any tail that could still become a
    stop string; stops at a stop token or stop string.
    """

    def __init__(self, tokenizer, stop_ids: Sequence[int], stops: Sequence[str]) -> None:
        self.tokenizer, self.stop_ids, self.stops = tokenizer, set(stop_ids), tuple(stops)
        self.tokens: list[int] = []
        self.emitted = ""
        self.finished = False

    def push(self, new_tokens: list[int]) -> str:
        if self.finished:
            return ""
        for token in new_tokens:
            if token in self.stop_ids:
                self.finished = True
                break
            self.tokens.append(token)
        text = self.tokenizer.decode(self.tokens, skip_special_tokens=True)
        cut = first_stop(text, self.stops)
        if cut is not None:
            text, safe, self.finished = text[:cut], cut, True
        else:
            safe = len(text) - _held_back(text, self.stops)
            while safe > 0 and text[safe - 1] == "\ufffd":
                safe -= 1
        if safe <= len(self.emitted) or not text.startswith(self.emitted):
            return ""
        delta = text[len(self.emitted) : safe]
        self.emitted += delta
        return delta


class _Failure:
    def __init__(self, error: BaseException) -> None:
        self.error = error


_END = object()
