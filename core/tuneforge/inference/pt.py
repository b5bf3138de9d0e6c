"""The plain PyTorch engine: transformers ``generate()`` on left-padded batches, fed by a worker.

``generate`` and ``stream`` may be called from any number of threads. Each
request becomes a ticket for one worker thread (``scheduler.DynamicBatcher``),
which runs whatever is waiting together: requests that share their sampling
settings share a batch (shortest prompts together within one call), at most
``batch_size`` sequences at a time, and requests arriving while a batch runs join
the next one. ``max_tokens``, stop strings and cancellation are checked per row,
so requests with different limits still share a batch and a closed stream stops
its row at the next step. A request with a ``seed`` runs on its own, so its
answers do not depend on which other requests came with it.

Prompts with extras (the pixel values of image parts) share batches with the
others: the extras of the rows that have some are batched by the template's
``collate_extras`` and passed to ``generate`` beside the padded ids.

LoRA adapters load beside the base model (``load_adapter``); requests for one
adapter share a batch, and the worker switches adapters between batches.

``compile=True`` (for CUDA) generates batches of up to ``COMPILE_MAX_ROWS`` rows
with a static KV cache, which lets transformers compile the decoding step
(``torch.compile``, CUDA graphs).
"""

from __future__ import annotations

import contextlib
import itertools
import os
import queue
import threading
from typing import Any, Iterator, Mapping, Sequence

from ..errors import TuneforgeError
from . import ChatRequest, Completion, Prompt, SamplingParams, fitted_max_tokens, with_logprobs
from .adapters import Adapters
from .structured import Grammars, GuidedRows, require
from .text import AnswerStream, finish_completion, first_stop, kept_special_tokens, prompt_extras, prompt_ids, strip_special_tokens
from .scheduler import DynamicBatcher, Ticket

# With compile=True the static cache is sized up to a multiple of this, so that
# requests of similar lengths reuse one compiled graph.
CACHE_BUCKET = 256
# ... and only batches of at most this many rows use it: on an H100 (7B shape,
# docs/serving.md) the compiled step was 2.5x faster at 1 row and 1.9x at 32, but
# slower than the dynamic cache at 128, where attention over the whole padded
# static cache costs more than the launches it saves.
COMPILE_MAX_ROWS = 64


def create_pt_engine(
    model: Any,
    *,
    batch_size: int = 8,
    compile: bool = False,
    device: str | None = None,
    torch_dtype: str | None = None,
    attn_implementation: str | None = None,
) -> "PTEngine":
    """A ``PTEngine`` for a ``ModelBundle`` or model spec (loaded here with the load options) or a ``Loaded``."""
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise TuneforgeError(f"Engine option 'batch_size' is {batch_size!r}; it must be an integer of at least 1.")
    if not isinstance(compile, bool):
        raise TuneforgeError(f"Engine option 'compile' is {compile!r}; it must be true or false.")
    load_options = {
        "device": device,
        "torch_dtype": torch_dtype,
        "attn_implementation": attn_implementation,
    }
    given = {k: v for k, v in load_options.items() if v is not None}
    from ..modeling import ModelBundle, load_for_inference

    if isinstance(model, (str, os.PathLike, ModelBundle)):
        given.setdefault("torch_dtype", "auto")
        loaded = load_for_inference(model if isinstance(model, ModelBundle) else str(model), **given)
    else:
        if given:
            raise TuneforgeError(
                f"Engine option '{next(iter(given))}' only applies when the engine loads the model itself; "
                f"pass a model spec instead of a loaded model, or give that option to load_for_inference."
            )
        loaded = model
    return PTEngine(loaded, batch_size=batch_size, compile=compile)


class PTEngine:
    """Serves the engine protocol with transformers ``generate()``; thread-safe.

    ``tokens_generated`` counts the tokens generated for requests so far (rows
    stopped early, by a stop or a cancel, count only what they generated).
    ``features``: it returns logprobs and enforces structured output (with
    outlines-core, see ``structured``; a constrained row shares its batch with free ones).
    """

    features = frozenset({"logprobs", "structured_output"})

    def __init__(self, loaded: Any, *, batch_size: int = 8, compile: bool = False) -> None:
        self.loaded = loaded
        self.model = loaded.model
        self.tokenizer = loaded.tokenizer
        self.template = loaded.template
        self.device = loaded.device
        self.batch_size = batch_size
        self.compile = compile
        eos = self.tokenizer.eos_token_id
        self.stop_token_ids = list(getattr(self.template, "stop_token_ids", None) or ([eos] if eos is not None else []))
        # A special token never shows in text decoded without special tokens: its id stops instead.
        special = set(getattr(self.tokenizer, "all_special_tokens", None) or ())
        self.stop_strings = tuple(s for s in getattr(self.template, "stop_strings", None) or () if s not in special)
        pad = self.tokenizer.pad_token_id
        self.pad_token_id = pad if pad is not None else (self.stop_token_ids[0] if self.stop_token_ids else 0)
        self.context_length = getattr(getattr(self.model, "config", None), "max_position_embeddings", None)
        self.tokens_generated = 0
        # Rust tokenizers refuse to be used from two threads at once ("Already borrowed"):
        # decoding (the worker's, the streams') shares one behind a lock, prompts get copies.
        self._text = _SerialTokenizer(self.tokenizer, self.template)
        self._prompts = _PromptTokenizers(self.tokenizer, self.template, self._text.lock)
        self._adapters = Adapters(self.model, self.device)
        self._grammars = Grammars(self.tokenizer, self.stop_token_ids)
        self._model_lock = threading.Lock()  # a generation, or an adapter loading, at a time
        self.scheduler = DynamicBatcher(self._generate_batch, capacity=batch_size, name="tuneforge-pt-worker")

    # -- the protocol -----------------------------------------------------

    def generate(self, requests: Sequence[ChatRequest], cancel: threading.Event | None = None) -> list[list[Completion]]:
        """Answer ``requests``; setting ``cancel`` (from any thread) stops their rows at the next step, and then raises here."""
        several = len(requests) > 1
        jobs = [self._job(i if several else None, request) for i, request in enumerate(requests)]
        if cancel is not None:
            for job in jobs:  # the caller's switch is each ticket's: the worker and the row stops watch it
                job.cancel = cancel
        self.scheduler.submit(jobs)
        try:
            results = [job.wait() for job in jobs]
        finally:
            for job in jobs:  # an interrupted caller frees the rows of its requests
                if not job.done:
                    job.cancel.set()
        if cancel is not None and cancel.is_set():
            raise TuneforgeError("The request was cancelled before its answer was complete.")
        return results

    def stream(self, request: ChatRequest) -> Iterator[str]:
        """Yield text deltas; the generator returns the final ``Completion``."""
        if request.sampling.n != 1:
            raise TuneforgeError(
                f"Streaming gives one completion, but the request asks for n={request.sampling.n}; set n=1 or use generate()."
            )
        job = self._job(None, request, tokens=queue.Queue())
        answer = AnswerStream(self.template, request, self.stop_strings + tuple(request.sampling.stop))
        text = _GrowingText(self._text, self.stop_token_ids, answer)
        self.scheduler.submit([job])
        pending: list = []  # logprob entries of tokens whose text has not been shown yet
        try:
            while True:
                item = job.tokens.get()
                if item is _END:
                    break
                tokens, entries = item
                if entries and not text.finished:
                    pending += [e for token, e in zip(tokens, entries) if token not in text.stop_ids]
                # Nothing new while a token adds no text yet: an empty delta, where the consumer may stop.
                for delta in text.push(tokens) or [""]:
                    if delta and pending:
                        delta, pending = with_logprobs(delta, pending), []
                    yield delta
            [completion] = job.wait()
        finally:
            job.cancel.set()  # a consumer that stops early frees its row at the next step
        yield from answer.finish(completion)
        return completion

    def stats(self) -> dict:
        """Counters for monitoring: batches run, the largest batch (rows), tokens generated."""
        return {
            "batches": self.scheduler.batches_run,
            "largest_batch": self.scheduler.largest_batch,
            "tokens_generated": self.tokens_generated,
        }

    @property
    def adapters(self) -> list[str]:
        """The names of the LoRA adapters loaded beside the base model."""
        return list(self._adapters.paths)

    def load_adapter(self, name: str, path: str) -> None:
        """Load the LoRA adapter at ``path`` as ``name``; waits for the batch that is running."""
        with self._model_lock:
            self._adapters.load(name, path)

    def close(self) -> None:
        import gc

        self.scheduler.close()
        device = getattr(self.loaded, "device_record", None)
        self.model = self.loaded = self._adapters.model = None
        gc.collect()
        if device is not None:
            device.empty_cache()

    # -- batching -----------------------------------------------------------

    def _job(self, index: int | None, request: ChatRequest, tokens: queue.Queue | None = None) -> "_Job":
        """A ticket for ``request``, refused here (before it queues) if it cannot run; ``index`` names it in errors."""
        if self.model is None:
            raise TuneforgeError("This engine was closed; create a new one to generate again.")
        self._adapters.check(request.adapter)
        if request.sampling.structured is not None:
            require()  # refused here, before the prompt, when outlines-core is missing
            self._grammars.guide(request.sampling.structured)  # a bad schema is refused now; its index is cached for the batch
        prompt = self._prompt_with_extras(request)
        max_tokens = request.sampling.max_tokens
        ids = prompt.ids
        if self.context_length:
            max_tokens = fitted_max_tokens(len(ids), self.context_length, request.sampling, index=index)
        return _Job(request, ids, max_tokens, tokens, extras=prompt.extras)

    def _prompt(self, request: ChatRequest) -> list[int]:
        return self._prompt_with_extras(request).ids

    def _prompt_with_extras(self, request: ChatRequest) -> Prompt:
        """The request's ids and, where it has parts, the extras the template makes of them (pixel values, ...)."""
        with self._prompts.take(long=_text_size(request) > LONG_PROMPT_CHARS) as (template, tokenizer):
            return Prompt(prompt_ids(template, tokenizer, request, takes_extras=True), prompt_extras(template, request))

    def _generate_batch(self, batch: list["_Job"]) -> list[list[Completion]]:
        """Run one batch (on the worker thread); each streaming job gets its tokens as they come."""
        try:
            return self._run(batch)
        finally:
            for job in batch:
                if job.tokens is not None:
                    job.tokens.put(_END)

    def _run(self, batch: list["_Job"]) -> list[list[Completion]]:
        with self._model_lock:
            self._adapters.activate(batch[0].request.adapter)  # the batch shares it (see _group_key)
            with _mixed_precision(self.model, self.device):
                return self._generate(batch)

    def _generate(self, batch: list["_Job"]) -> list[list[Completion]]:
        import torch
        from transformers import GenerationConfig, LogitsProcessorList, StoppingCriteriaList

        sampling = batch[0].request.sampling  # what the batch shares (see _group_key)
        # Greedy answers are all the same: generate one and copy it n times.
        n = 1 if sampling.greedy else sampling.n
        width = max(len(job.prompt) for job in batch)
        input_ids = torch.tensor(
            [[self.pad_token_id] * (width - len(job.prompt)) + job.prompt for job in batch], dtype=torch.long
        )
        attention_mask = torch.tensor([[0] * (width - len(job.prompt)) + [1] * len(job.prompt) for job in batch], dtype=torch.long)
        rows = [job for job in batch for _ in range(n)]  # generate() repeats each prompt n times in a row
        limits = [job.max_tokens for job in rows]
        stops = [self.stop_strings + tuple(job.request.sampling.stop) for job in rows]
        row_stops = _RowStops(self._text, width, limits, stops, set(self.stop_token_ids), [job.cancel for job in rows])
        streamer = _RowStreamer(rows, row_stops, self._logprob_entry) if any(job.tokens is not None for job in rows) else None
        options: dict[str, Any] = {}
        if self.compile and len(rows) <= COMPILE_MAX_ROWS:
            # A static cache lets transformers compile the decoding step; sized in buckets
            # so that similar requests reuse one compiled graph.
            needed = width + max(limits)
            options.update(cache_implementation="static", max_cache_len=-(-needed // CACHE_BUCKET) * CACHE_BUCKET)
        wants_logprobs = any(job.request.sampling.logprobs for job in rows)
        if wants_logprobs:  # the raw logits of each step, before any processor (penalties, constraints)
            options.update(return_dict_in_generate=True, output_logits=True)
        # first: the model's own scores are checked before any processor masks tokens with -inf
        processors = [_finite_scores(width, row_stops, [len(job.prompt) for job in rows], self.model), *_penalties(sampling, width)]
        if any(job.request.sampling.structured is not None for job in rows):
            structured = [job.request.sampling.structured for job in rows]
            guides = [None if each is None else self._grammars.guide(each) for each in structured]
            keys = [None if each is None else each.key for each in structured]
            processors.append(GuidedRows(guides, width, self.stop_token_ids, self._grammars.end_ids, keys, self._grammars.masks))
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
            **options,
        )
        extras = self._batch_extras(batch)
        # A stream with logprobs gets each token's entry as it comes: from the raw logits of its step.
        hook = None
        if streamer is not None and streamer.wants_logprobs:  # on the transformers model generate() steps (under a peft wrapper too)
            stepped = self.model.get_base_model() if hasattr(self.model, "get_base_model") else self.model
            hook = stepped.register_forward_hook(streamer.see_logits)
        with _seeded(None if sampling.greedy else sampling.seed, self.device), torch.inference_mode(), _removed(hook):
            output = self.model.generate(
                **extras,
                input_ids=input_ids.to(self.device),
                attention_mask=attention_mask.to(self.device),
                generation_config=config,
                stopping_criteria=StoppingCriteriaList([row_stops]),
                logits_processor=LogitsProcessorList(processors),
                streamer=streamer,
            )
        logits = output.logits if wants_logprobs else None
        if wants_logprobs:
            output = output.sequences
        generated = output[:, width:].tolist()
        logprobs = [
            _row_logprobs(logits, row, tokens, job.request.sampling.top_logprobs) if job.request.sampling.logprobs else None
            for row, (tokens, job) in enumerate(zip(generated, rows))
        ]
        del logits
        del output, input_ids, attention_mask
        self.tokens_generated += sum(row_stops.finished.get(row, len(tokens)) for row, tokens in enumerate(generated))
        completions = [
            self._finish(tokens, prompt_tokens=len(job.prompt), limit=limit, stop_at=row_stops.hits.get(row), stops=row_stop, request=job.request, logprobs=logprobs[row])
            for row, (tokens, job, limit, row_stop) in enumerate(zip(generated, rows, limits, stops))
        ]
        copies = sampling.n // n
        return [completions[i * n : (i + 1) * n] * copies for i in range(len(batch))]

    def _batch_extras(self, batch: list["_Job"]) -> dict[str, Any]:
        """The extras of the batch's prompts that have some (pixel values, ...), batched by the template, on the device.

        Only those rows contribute, in row order: the model matches each image to the
        image tokens of the ids in that order, and a text-only row adds nothing.
        """
        extras = [job.extras for job in batch if job.extras]
        if not extras:
            return {}
        collate = getattr(self.template, "collate_extras", None)
        if collate is None:
            from ..templates import concat_extras as collate
        batched = {key: value.to(self.device) if hasattr(value, "to") else value for key, value in collate(extras).items()}
        for key in ("pixel_values", "pixel_values_videos"):
            pixels = batched.get(key)
            if pixels is not None and hasattr(pixels, "is_floating_point") and pixels.is_floating_point():
                batched[key] = pixels.to(self.model.dtype)
        return batched

    def _finish(self, tokens: list[int], *, prompt_tokens: int, limit: int, stop_at: int | None, stops: tuple[str, ...], request: ChatRequest, logprobs=None) -> Completion:
        tokens = tokens[: stop_at if stop_at is not None else limit]
        text_tokens = tokens
        reason = None
        stop_ids = set(self.stop_token_ids)
        for i, token in enumerate(tokens):
            if token in stop_ids:
                tokens, text_tokens, reason = tokens[: i + 1], tokens[:i], "stop"
                break
        text = self._text.decode(text_tokens, skip_special_tokens=True)
        cut = first_stop(text, stops)
        if cut is not None:
            text, reason = text[:cut], "stop"
        if reason is None:
            reason = "length" if len(tokens) >= limit else "stop"
        entries = None if logprobs is None else self._logprob_entries(text_tokens, logprobs)
        return finish_completion(Completion(text, list(tokens), reason, prompt_tokens, len(tokens), logprobs=entries), self.template, request)

    def _logprob_entry(self, token_id: int, logits, top_k: int) -> dict:
        """One token's logprob entry from the raw logits of its step (one row's), as ``_logprob_entries`` makes them."""
        steps = logits.float().log_softmax(-1)
        chosen = steps[token_id].item()
        top = list(zip(*[t.tolist() for t in steps.topk(top_k)][::-1])) if top_k else []
        return self._logprob_entries([token_id], ([chosen], [top]))[0]

    def _logprob_entries(self, tokens: list[int], logprobs: tuple) -> list[dict]:
        """OpenAI's logprobs content for ``tokens``: each one's logprob and the top ones at its position."""
        chosen, top = logprobs

        def entry(token_id: int, logprob: float) -> dict:
            token = self._text.decode([token_id])
            return {"token": token, "logprob": logprob, "bytes": list(token.encode("utf-8"))}

        return [
            {**entry(token_id, chosen[i]),
             "top_logprobs": [entry(t, lp) for t, lp in top[i]]}
            for i, token_id in enumerate(tokens[: len(chosen)])
        ]


_seeded_jobs = itertools.count()


class _Job(Ticket):
    """A request for the worker: its prompt, its token limit, and a token queue when it streams."""

    def __init__(self, request: ChatRequest, prompt: list[int], max_tokens: int, tokens: queue.Queue | None = None, extras=None) -> None:
        sampling = request.sampling
        extras = dict(extras or {})
        # Prompts with extras (images) share batches with the others: the template batches their extras.
        super().__init__(_group_key(request), rows=1 if sampling.greedy else sampling.n, sort_key=len(prompt))
        self.request, self.prompt, self.max_tokens, self.tokens, self.extras = request, prompt, max_tokens, tokens, extras

    def set_error(self, error: BaseException) -> None:
        super().set_error(error)
        if self.tokens is not None:  # a stream still waiting for its batch (dropped, or the engine closed) wakes up
            self.tokens.put(_END)


def _group_key(request: ChatRequest) -> tuple:
    """Requests with the same key can share a generate() call."""
    s = request.sampling
    shared = (request.adapter, s.repetition_penalty, s.presence_penalty, s.frequency_penalty, s.n)
    if s.greedy:
        return ("greedy", *shared)
    if s.seed is not None:
        return ("seeded", next(_seeded_jobs))
    return ("sampled", s.temperature, s.top_p, s.top_k, *shared)


def _weights_dtype(model: Any):
    """The dtype most of ``model``'s floating weights hold (None without any)."""
    sizes: dict = {}
    for parameter in model.parameters():
        if parameter.is_floating_point():
            sizes[parameter.dtype] = sizes.get(parameter.dtype, 0) + parameter.numel()
    return max(sizes, key=sizes.get) if sizes else None


def _mixed_precision(model: Any, device: Any):
    """Autocast for a model set up to run under it, to the dtype most of its floating weights hold.

    Training under bf16 mixed precision tells the adapter layers not to cast their inputs to their
    float32 weights (``training.setup``): the trainer's autocast does that, but it belongs to the
    training thread and does not reach this engine's worker thread (a trainer that samples from its
    own model through an engine). Any other model runs as it is.
    """
    import torch

    if not any(getattr(module, "cast_input_dtype_enabled", True) is False for module in model.modules()):
        return contextlib.nullcontext()
    dtype = _weights_dtype(model)
    if dtype is None or dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type if device is not None else "cpu", dtype=dtype)


def _finite_scores(width: int, row_stops: "_RowStops", prompt_lengths: list[int], model: Any):
    """A logits processor that refuses a step whose scores hold NaN or +infinity in a row still answering.

    Sampling from such scores stops the process with a bare "probability tensor contains
    either inf, nan" (on CUDA a device-side assertion, after which the GPU takes no more
    work), and greedy decoding picks an arbitrary token. A row that has finished is fed
    padding and its token is thrown away: its scores, if spoilt, are made even instead.
    """
    import torch
    from transformers import LogitsProcessor

    class FiniteScores(LogitsProcessor):
        def __call__(self, input_ids, scores):
            bad = torch.isnan(scores).any(dim=-1) | torch.isposinf(scores).any(dim=-1)
            if not bool(bad.any()):
                return scores
            flagged = bad.nonzero().flatten().tolist()
            rows = [row for row in flagged if row not in row_stops.finished]
            if not rows:  # a finished row's token is replaced by padding, but it is still drawn: from even odds
                scores = scores.clone()
                scores[flagged] = 0.0
                return scores
            step = input_ids.shape[1] - width + 1
            lengths = sorted({prompt_lengths[row] for row in rows})
            dtype = str(_weights_dtype(model)).removeprefix("torch.")
            raise TuneforgeError(
                f"The model's scores for answer token {step} hold NaN or infinity in {len(rows)} of the batch's "
                f"{len(prompt_lengths)} rows (rows {rows[:8]}, prompts of {lengths[:8]} tokens, weights in {dtype}), "
                f"so no token can be chosen from them; load the model in float32 (--torch-dtype float32), or check "
                f"its weights for NaN."
            )

    return FiniteScores()


def _penalties(sampling: SamplingParams, width: int) -> list:
    """OpenAI's presence and frequency penalties, as a logits processor (none when both are 0)."""
    if not (sampling.presence_penalty or sampling.frequency_penalty):
        return []
    import torch
    from transformers import LogitsProcessor

    class Penalties(LogitsProcessor):
        def __call__(self, input_ids, scores):
            generated = input_ids[:, width:]
            if generated.shape[1] == 0:
                return scores
            counts = torch.zeros_like(scores).scatter_add_(1, generated, torch.ones_like(generated, dtype=scores.dtype))
            return scores - sampling.frequency_penalty * counts - sampling.presence_penalty * (counts > 0).to(scores.dtype)

    return [Penalties()]


def _row_logprobs(logits: tuple, row: int, tokens: list[int], top_k: int) -> tuple[list[float], list[list[tuple[int, float]]]]:
    """From ``generate()``'s raw ``logits`` (a tensor a step), one row's log-softmax at each step:
    the logprob of the token it generated there, and its ``top_k`` most likely (token, logprob) pairs."""
    import torch

    steps = torch.stack([step[row] for step in logits[: len(tokens)]]).float().log_softmax(-1)
    chosen = steps.gather(1, torch.tensor(tokens[: steps.shape[0]], device=steps.device).unsqueeze(1)).squeeze(1).tolist()
    if not top_k:
        return chosen, [[] for _ in chosen]
    values, ids = steps.topk(top_k, dim=-1)
    return chosen, [list(zip(i, v)) for i, v in zip(ids.tolist(), values.tolist())]


# Prompts with more characters than this count as long: they never take the last free tokenizer copy.
LONG_PROMPT_CHARS = 16_384


def _text_size(request: ChatRequest) -> int:
    """The characters of a request's prompt, or of its messages and tools (every string in them)."""
    total, pending = 0, [request.prompt, list(request.messages), request.tools]
    while pending:
        item = pending.pop()
        if isinstance(item, str):
            total += len(item)
        elif isinstance(item, Mapping):
            pending.extend(item.keys())
            pending.extend(item.values())
        elif isinstance(item, (list, tuple)):
            pending.extend(item)
    return total


class _PromptTokenizers:
    """Copies of the tokenizer (each with its own copy of the template) for building prompts.

    Tokenizing a long prompt takes a while; with a copy of its own it holds no
    lock that decoding needs, so the batch running meanwhile, and the other
    requests, do not wait for it. Up to ``size`` copies are made as concurrent
    requests need them, from a spare copy nobody uses (made with the engine);
    more requests than that wait for a free one. Long prompts hold at most
    ``size - 1`` copies at once, so short ones never wait behind them. A
    template that cannot be copied falls back to the shared tokenizer under the
    decoding lock.
    """

    def __init__(self, tokenizer, template, lock, size: int = 4) -> None:
        import copy

        self.shared, self.lock, self.size = (template, tokenizer), lock, size
        self._long = threading.BoundedSemaphore(max(size - 1, 1))
        self._free: queue.LifoQueue = queue.LifoQueue()
        self._made = 0
        self._making = threading.Lock()
        try:
            self._source: tuple | None = copy.deepcopy(self.shared)  # one deepcopy keeps the template with its tokenizer
        except Exception:  # a template holding something that cannot be copied
            self._source = None

    @property
    def _copyable(self) -> bool:
        return self._source is not None

    def _copy(self) -> tuple | None:
        import copy

        return copy.deepcopy(self._source)

    @contextlib.contextmanager
    def take(self, long: bool = False):
        """A (template, tokenizer) pair for this thread alone while the block runs."""
        if long:
            with self._long:
                with self.take() as pair:
                    yield pair
            return
        pair = self._free_or_new()
        if pair is None:
            with self.lock:
                yield self.shared
            return
        try:
            yield pair
        finally:
            self._free.put(pair)

    def _free_or_new(self) -> tuple | None:
        try:
            return self._free.get_nowait()
        except queue.Empty:
            pass
        with self._making:
            if self._copyable and self._made < self.size:
                pair = self._copy()
                if pair is not None:
                    self._made += 1
                    return pair
        return self._free.get() if self._copyable else None


class _SerialTokenizer:
    """A tokenizer's ``decode`` behind a lock shared with prompt building.

    Without special tokens, it keeps those the template marks as text (``text_special_tokens``).
    """

    def __init__(self, tokenizer, template=None) -> None:
        self.tokenizer = tokenizer
        self.keep = kept_special_tokens(template)
        self.lock = threading.RLock()

    def decode(self, ids, skip_special_tokens: bool = False) -> str:
        with self.lock:
            if skip_special_tokens and self.keep:
                return strip_special_tokens(self.tokenizer.decode(ids, skip_special_tokens=False), self.tokenizer, self.keep)
            return self.tokenizer.decode(ids, skip_special_tokens=skip_special_tokens)


@contextlib.contextmanager
def _removed(hook):
    """Remove the forward ``hook`` (None: none) when the block ends."""
    try:
        yield
    finally:
        if hook is not None:
            hook.remove()


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
    """Per-row stopping: each row's ``max_tokens``, stop strings and cancel switch.

    Records, per row, how many tokens had been generated when a stop string first
    appeared (``hits``), so the answer's tokens end exactly there, and when the row
    finished (``finished``). Called by ``generate()`` after each step with the ids
    so far; returns which rows are done.
    """

    def __init__(self, tokenizer, width: int, limits: list[int], stops: list[tuple[str, ...]], stop_ids: set[int], cancels: list[threading.Event]) -> None:
        self.tokenizer, self.width, self.limits, self.stops, self.stop_ids = tokenizer, width, limits, stops, stop_ids
        self.cancels = cancels
        self.hits: dict[int, int] = {}
        self.finished: dict[int, int] = {}

    def __call__(self, input_ids, scores=None, **kwargs):
        import torch

        length = input_ids.shape[1] - self.width
        done = torch.zeros(input_ids.shape[0], dtype=torch.bool)
        last = input_ids[:, -1].tolist()
        for row in range(input_ids.shape[0]):
            if row not in self.finished and self._done(row, length, last[row], input_ids):
                self.finished[row] = length
            done[row] = row in self.finished
        return done.to(input_ids.device)

    def _done(self, row: int, length: int, last: int, input_ids) -> bool:
        if self.cancels[row].is_set() or length >= self.limits[row] or last in self.stop_ids:
            return True
        if self.stops[row]:
            text = self.tokenizer.decode(input_ids[row, self.width :].tolist(), skip_special_tokens=True)
            if first_stop(text, self.stops[row]) is not None:
                self.hits[row] = length
                return True
        return False


class _RowStreamer:
    """A transformers streamer that hands each streaming row its new tokens (the prompt is skipped).

    Each item is (tokens, entries): with the request's ``logprobs``, ``entries`` holds each
    token's logprob entry, made by ``entry(token, logits, top_k)`` from the raw logits of its
    step (``see_logits``, a forward hook on the model, keeps the last step's); else None.
    A row that has finished gets nothing more (generate() pads it until the batch ends).
    """

    def __init__(self, rows: list["_Job"], row_stops: _RowStops, entry=None) -> None:
        self.queues = [job.tokens for job in rows]
        self.top_k = [job.request.sampling.top_logprobs if job.tokens is not None and job.request.sampling.logprobs else None for job in rows]
        self.wants_logprobs = entry is not None and any(k is not None for k in self.top_k)
        self.row_stops = row_stops
        self.entry = entry
        self.logits = None  # the raw logits of the last step, a row each
        self.prompt_seen = False

    def see_logits(self, module, args, output) -> None:
        logits = output.logits if hasattr(output, "logits") else output[0]
        self.logits = logits[:, -1, :]

    def put(self, value) -> None:
        if not self.prompt_seen:
            self.prompt_seen = True
            return
        tokens = value.reshape(-1).tolist()
        for row, (tokens_queue, token) in enumerate(zip(self.queues, tokens)):
            if tokens_queue is not None and row not in self.row_stops.finished:
                top_k = self.top_k[row]
                entries = None if top_k is None or self.logits is None else [self.entry(token, self.logits[row], top_k)]
                tokens_queue.put(([token], entries))

    def end(self) -> None:
        pass


class _GrowingText:
    """The tokens of a growing answer, until a stop token or a stop string; its ``answer`` (an
    ``AnswerStream``) makes the deltas of their text."""

    def __init__(self, tokenizer, stop_ids: Sequence[int], answer: AnswerStream) -> None:
        self.tokenizer, self.stop_ids, self.answer = tokenizer, set(stop_ids), answer
        self.tokens: list[int] = []
        self.finished = False

    def push(self, new_tokens: list[int]) -> list[str]:
        if self.finished:
            return []
        for token in new_tokens:
            if token in self.stop_ids:
                self.finished = True
                break
            self.tokens.append(token)
        deltas = self.answer.push(self.tokenizer.decode(self.tokens, skip_special_tokens=True))
        self.finished = self.finished or self.answer.stopped
        return deltas


_END = object()
