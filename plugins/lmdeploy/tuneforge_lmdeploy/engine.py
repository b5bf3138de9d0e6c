"""The ``lmdeploy`` engine: tuneforge's engine protocol served by LMDeploy's ``AsyncEngine``.

LMDeploy runs its own scheduler (continuous batching, a paged KV cache) in its
PyTorch engine (Triton kernels; it needs no compiled part of LMDeploy) or in
TurboMind (its CUDA engine, where the wheel's binaries are installed). This module
only translates. LMDeploy's pipeline owns one background thread running an asyncio
loop; ``generate`` and ``stream`` (from any thread) hand it coroutines and wait for
their results, so every request that arrives joins the running batch at the next step.

Prompts are built by tuneforge's own chat template for the model (the one the
``pt`` engine and training use) and given to LMDeploy as token ids, so both engines
answer the same conversation from the same tokens; LMDeploy's own chat templates
are never used. Stop tokens come from the template; stop strings are watched here
(LMDeploy stops only on tokens) and end a request by cancelling it. The text of an
answer is decoded here from its token ids, as the ``pt`` engine decodes it.

What LMDeploy lacks is done here or refused, in one sentence, before the request
queues: ``n`` > 1 sampled answers are ``n`` requests (seeds ``seed``, ``seed+1``…);
presence and frequency penalties are a logits processor (PyTorch engine only);
images and videos are refused (use the ``pt`` or ``vllm`` engine). LoRA adapters
are fixed when LMDeploy's engine starts: ``load_adapter`` restarts it with the new
set (give them all with ``--adapters`` to start once). A tuneforge LoRA output dir is
served as its base model with the run's adapter applied to every request that
names no other.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import queue
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

from tuneforge.api import (
    AnswerStream,
    ChatRequest,
    Completion,
    SamplingParams,
    TuneforgeError,
    check_adapter,
    finish_completion,
    fitted_max_tokens,
    first_stop,
    kept_special_tokens,
    read_adapter_config,
    strip_special_tokens,
)
from tuneforge.api import prompt_ids as build_prompt_ids
from .awq_layout import cached_copy, w4a16_groups

BACKENDS = ("pytorch", "turbomind")
DTYPES = ("auto", "bfloat16", "float16")
MODEL_FORMATS = ("hf", "awq", "gptq", "compressed-tensors", "fp8")
RUN_ADAPTER = "tuneforge-run"  # the LoRA of a tuneforge output dir, applied when a request names none
CANCEL_POLL_S = 0.05  # how often generate() looks at its cancel switch while LMDeploy works
INSTALL = "pip install 'tuneforge-lmdeploy[engine]'"

_END = object()


# -- before anything loads ---------------------------------------------------------------


def check_options(*, batch_size, backend, tp, session_len, cache_max_entry_count, dtype, model_format, max_prefill_token_num) -> None:
    """Refuse, naming it, an engine option LMDeploy would reject only after loading the model."""

    def integer(value) -> bool:
        return isinstance(value, int) and not isinstance(value, bool)

    checks = [
        ("batch_size", batch_size, batch_size is None or integer(batch_size) and batch_size >= 1, "an integer of at least 1"),
        ("backend", backend, backend in BACKENDS, " or ".join(BACKENDS)),
        ("tp", tp, integer(tp) and tp >= 1, "an integer of at least 1"),
        ("session_len", session_len, session_len is None or integer(session_len) and session_len >= 16, "an integer of at least 16"),
        ("cache_max_entry_count", cache_max_entry_count,
         isinstance(cache_max_entry_count, (int, float)) and not isinstance(cache_max_entry_count, bool) and 0 < cache_max_entry_count < 1,
         "a number above 0 and below 1"),
        ("dtype", dtype, dtype in DTYPES, ", ".join(DTYPES) + " (LMDeploy serves no float32)"),
        ("model_format", model_format, model_format is None or model_format in MODEL_FORMATS, ", ".join(MODEL_FORMATS)),
        ("max_prefill_token_num", max_prefill_token_num, integer(max_prefill_token_num) and max_prefill_token_num >= 16, "an integer of at least 16"),
    ]
    for name, value, ok, expected in checks:
        if not ok:
            raise TuneforgeError(f"Engine option '{name}' is {value!r}; it must be {expected}.")


def why_not_runnable(device: str | None = None, backend: str = "pytorch") -> str | None:
    """The sentence saying why LMDeploy cannot run here (no CUDA device, no ``lmdeploy`` package,
    TurboMind asked without its binaries); None where it can. Cheap: it loads no model."""
    if device is not None and not str(device).startswith("cuda"):
        return f"The lmdeploy engine runs only on CUDA GPUs, not on --device '{device}'; leave --device out or give cuda."
    import torch

    if not torch.cuda.is_available():
        return (
            "The lmdeploy engine needs a CUDA GPU, and torch sees none here (LMDeploy has no CPU backend); "
            "run it on a machine with an NVIDIA GPU and a CUDA build of torch, or use --engine pt."
        )
    try:
        import lmdeploy  # noqa: F401
    except ImportError as exc:
        return f"The lmdeploy engine needs the lmdeploy package, which does not import here ({exc}); install it with {INSTALL}."
    if backend == "turbomind":
        from lmdeploy import turbomind

        if not turbomind.is_available():
            return (
                "backend=turbomind needs LMDeploy's TurboMind binaries, which are not installed here (a wheel without them "
                "runs the PyTorch engine only); leave the option out for backend=pytorch, or install the full lmdeploy wheel."
            )
    return None


def check_runnable(*, device: str | None = None, backend: str = "pytorch") -> None:
    """Refuse, in one sentence, where LMDeploy cannot run (see ``why_not_runnable``)."""
    reason = why_not_runnable(device, backend)
    if reason:
        raise TuneforgeError(reason)


def adapter_problem(config: dict) -> str | None:
    """Why LMDeploy's PyTorch engine would serve the peft adapter ``config`` wrongly (None: it serves it as peft does)."""
    if config.get("peft_type", "LORA") != "LORA":
        return f"it is a {config.get('peft_type')} adapter, and LMDeploy serves LoRA adapters only"
    if config.get("use_dora"):
        return "it is a DoRA adapter, which LMDeploy does not serve"
    if config.get("use_rslora"):
        return "it uses rank-stabilized scaling (use_rslora), which LMDeploy does not apply"
    if config.get("rank_pattern") or config.get("alpha_pattern"):
        return "it gives some layers their own rank or alpha (rank_pattern/alpha_pattern), which LMDeploy does not read"
    if config.get("modules_to_save"):
        return f"it also trains whole modules ({', '.join(config['modules_to_save'])}), which LMDeploy does not load"
    if not isinstance(config.get("target_modules"), (list, tuple)):
        return f"its target_modules is {config.get('target_modules')!r}, and LMDeploy needs the list of module names"
    return None


def check_quantization(spec: str, hf_config: Any, model_format: str | None) -> None:
    """Refuse a quantized checkpoint LMDeploy's PyTorch engine does not load, before its weights load."""
    quant = getattr(hf_config, "quantization_config", None)
    if quant is None:
        return
    quant = quant if isinstance(quant, dict) else quant.to_dict()
    method = quant.get("quant_method")
    if w4a16_groups(quant) is not None:  # served through its AutoAWQ-layout copy (awq_layout.py)
        return
    if method == "compressed-tensors":
        try:
            from lmdeploy.pytorch.config import _parse_compressed_tensors_config
        except ImportError:  # another LMDeploy: it decides when it loads
            return
        try:
            _parse_compressed_tensors_config(quant)
        except ValueError as exc:
            raise TuneforgeError(
                f"'{spec}' is a compressed-tensors checkpoint LMDeploy cannot load ({exc}); LMDeploy takes pack-quantized "
                f"W4A16 (4-bit, group size 32, symmetric) or AutoAWQ (quant_method awq) checkpoints: quantize it so, or use --engine pt."
            ) from None
    elif method not in ("awq", "gptq", "fp8", "smooth_quant", None):
        raise TuneforgeError(
            f"'{spec}' is quantized with {method}, which LMDeploy does not load; give an awq, gptq, fp8 or compressed-tensors "
            f"W4A16 checkpoint, or use --engine pt."
        )


# -- the engine ---------------------------------------------------------------------------


@dataclass
class _Prepared:
    request: ChatRequest
    prompt_ids: list[int]
    max_tokens: int
    gen_configs: list  # one lmdeploy GenerationConfig per request sent (n sampled answers: n of them)
    adapter: str | None
    stops: tuple[str, ...]


class LMDeployEngine:
    """Serves the engine protocol with LMDeploy; thread-safe, continuously batched."""

    def __init__(
        self,
        bundle: Any,
        *,
        batch_size: int | None = None,
        backend: str = "pytorch",
        tp: int = 1,
        session_len: int | None = None,
        cache_max_entry_count: float = 0.8,
        dtype: str = "auto",
        model_format: str | None = None,
        eager_mode: bool = False,
        max_prefill_token_num: int = 8192,
        enable_prefix_caching: bool = False,
    ) -> None:
        from tuneforge.api import ModelBundle

        if not isinstance(bundle, ModelBundle):
            raise TuneforgeError(
                f"The lmdeploy engine loads the model itself from a resolved model bundle, not a {type(bundle).__name__}; "
                f"create it with create_engine('lmdeploy', MODEL_SPEC)."
            )
        model = bundle.spec
        resolved = bundle.resolved
        self.backend = backend
        self.tokenizer = bundle.tokenizer
        self.template_name = bundle.template_name
        self.template = bundle.template
        if set(getattr(self.template, "modalities", None) or ("text",)) - {"text"}:
            raise TuneforgeError(
                f"'{model}' takes images, and the lmdeploy engine serves text models only; serve it with --engine pt or --engine vllm."
            )
        run_adapter = bool(bundle.adapters) and resolved.run_dir
        if run_adapter and bundle.base_adapters:
            raise TuneforgeError(
                f"'{model}' is an adapter trained on top of another adapter run, and LMDeploy applies one adapter at a time; "
                f"merge it first (tuneforge export --model {model} --format merged --output-dir DIR) and serve DIR."
            )
        if run_adapter:
            self._check_adapter_config(model, resolved.run_dir)
        if run_adapter and backend == "turbomind":
            raise TuneforgeError(f"'{model}' is a LoRA run, and TurboMind serves no adapters; leave backend out (pytorch) or merge it first.")
        check_quantization(model, bundle.hf_config, model_format)

        eos = self.tokenizer.eos_token_id
        self.stop_token_ids = list(getattr(self.template, "stop_token_ids", None) or ([eos] if eos is not None else []))
        self.kept_special_tokens = kept_special_tokens(self.template)
        special = set(getattr(self.tokenizer, "all_special_tokens", None) or ())
        self.stop_strings = tuple(s for s in getattr(self.template, "stop_strings", None) or () if s not in special)
        self._tokenizer_lock = threading.RLock()  # a fast tokenizer is not safe to use from two threads at once

        self._model_path = resolved.base_path
        quantization = getattr(bundle.hf_config, "quantization_config", None)
        quantization = quantization if isinstance(quantization, dict) or quantization is None else quantization.to_dict()
        if w4a16_groups(quantization) is not None:
            # LMDeploy 0.18 fails to build a model from compressed-tensors W4A16; the same numbers in AutoAWQ's layout load.
            self._model_path = str(cached_copy(resolved.base_path))
            model_format = "awq"
        self._trust_remote_code = bundle.trust_remote_code
        self._engine_options = dict(
            tp=tp, session_len=session_len, cache_max_entry_count=cache_max_entry_count, dtype=dtype,
            max_batch_size=batch_size, model_format=model_format, eager_mode=eager_mode,
            max_prefill_token_num=max_prefill_token_num, enable_prefix_caching=enable_prefix_caching,
        )
        self._adapters: dict[str, str] = {}  # name -> path, served by the running LMDeploy engine
        self._default_adapter = RUN_ADAPTER if run_adapter else None
        if run_adapter:
            self._adapters[RUN_ADAPTER] = str(Path(resolved.run_dir).resolve())
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)  # a restart waits until no request is in flight
        self._in_flight = 0
        self._restarting = False
        self.requests_served = 0
        self.tokens_generated = 0
        self._pipe = None
        self._start()

    # -- LMDeploy's pipeline ------------------------------------------------------------

    def _start(self) -> None:
        from lmdeploy import PytorchEngineConfig, TurbomindEngineConfig, pipeline

        options = {k: v for k, v in self._engine_options.items() if v is not None}
        if self.backend == "turbomind":
            options.pop("eager_mode", None)
            config = TurbomindEngineConfig(**options)
        else:
            config = PytorchEngineConfig(**options, adapters=dict(self._adapters) or None)
        # LMDeploy reads the config, tokenizer and weights again itself (the template stays tuneforge's).
        self._pipe = pipeline(self._model_path, backend_config=config, trust_remote_code=self._trust_remote_code, log_level="ERROR")
        self.context_length = int(self._pipe.async_engine.session_len)

    def _submit(self, coroutine) -> concurrent.futures.Future:
        return asyncio.run_coroutine_threadsafe(coroutine, self._pipe.internal_thread.loop)

    # -- the protocol ---------------------------------------------------------------------

    def generate(self, requests: Sequence[ChatRequest], cancel: threading.Event | None = None) -> list[list[Completion]]:
        """Answer ``requests``; setting ``cancel`` (from any thread) cancels their LMDeploy requests, and then raises here."""
        several = len(requests) > 1
        prepared = [self._prepare(i if several else None, r) for i, r in enumerate(requests)]
        with self._request():
            futures = [[self._submit(self._run(p, config)) for config in p.gen_configs] for p in prepared]
            flat = [f for group in futures for f in group]
            try:
                if cancel is not None:
                    _wait_unless(flat, cancel)
                results = [] if cancel is not None and cancel.is_set() else [[f.result() for f in group] for group in futures]
            finally:
                for future in flat:  # an interrupted or cancelled caller cancels its requests in LMDeploy
                    future.cancel()
        if cancel is not None and cancel.is_set():
            raise TuneforgeError("The request was cancelled before its answer was complete.")
        answers = []
        for p, group in zip(prepared, results):
            completions = [self._completion(p, tokens, reason) for tokens, reason in group]
            answers.append(completions * (p.request.sampling.n // len(completions)))  # greedy: all n are the one answer
        return answers

    def stream(self, request: ChatRequest) -> Iterator[str]:
        """Yield text deltas; the generator returns the final ``Completion``."""
        if request.sampling.n != 1:
            raise TuneforgeError(
                f"Streaming gives one completion, but the request asks for n={request.sampling.n}; set n=1 or use generate()."
            )
        prepared = self._prepare(None, request)
        steps: queue.Queue = queue.Queue()
        answer = AnswerStream(self.template, request, prepared.stops)
        tokens: list[int] = []
        with self._request():
            future = self._submit(self._run(prepared, prepared.gen_configs[0], steps))
            try:
                while (item := steps.get()) is not _END:
                    if isinstance(item, BaseException):
                        raise item
                    tokens, _ = item
                    yield from answer.push(self._decode(tokens)) or [""]  # empty while nothing new can be shown
                    if answer.stopped:
                        break
                tokens, reason = future.result() if not answer.stopped else (tokens, "stop")
            finally:
                future.cancel()  # a consumer that stops early (or a stop string) cancels the request in LMDeploy
        completion = self._completion(prepared, tokens, reason)
        yield from answer.finish(completion)
        return completion

    def close(self) -> None:
        pipe, self._pipe = self._pipe, None
        if pipe is not None:
            pipe.close()
            del pipe
            import gc

            import torch

            gc.collect()  # the weights and KV cache go before a restart takes the memory again
            torch.cuda.empty_cache()

    # -- adapters and monitoring ----------------------------------------------------------

    @property
    def adapters(self) -> list[str]:
        return [name for name in self._adapters if name != RUN_ADAPTER]

    def load_adapter(self, name: str, path: str) -> None:
        """Serve the LoRA adapter at ``path`` as ``name``: LMDeploy's engine restarts with it (its adapters are fixed at start)."""
        if self.backend == "turbomind":
            raise TuneforgeError(f"TurboMind serves no LoRA adapters, so '{name}' cannot be served; start the engine with backend=pytorch.")
        check_adapter(name, path)  # its config and weights, before LMDeploy sees them
        self._check_adapter_config(name, path)
        with self._idle:
            if name in self._adapters:
                raise TuneforgeError(f"An adapter named '{name}' is already loaded; choose another name.")
            self._restarting = True
            while self._in_flight:  # requests in flight finish first; new ones wait for the restart
                self._idle.wait()
        try:
            previous = dict(self._adapters)
            self._adapters[name] = str(Path(path).expanduser().resolve())
            self.close()
            try:
                self._start()
            except Exception as exc:
                self._adapters = previous
                self._start()
                raise TuneforgeError(
                    f"Adapter '{name}' at '{path}' does not fit the served model ({str(exc).splitlines()[0][:200]}); "
                    f"give an adapter trained on the same base model."
                ) from None
        finally:
            with self._idle:
                self._restarting = False
                self._idle.notify_all()

    def stats(self) -> dict:
        return {"requests": self.requests_served, "tokens_generated": self.tokens_generated}

    # -- translation ------------------------------------------------------------------------

    def _check_adapter_config(self, name: str, path: str) -> None:
        problem = adapter_problem(read_adapter_config(name, path))
        if problem:
            raise TuneforgeError(
                f"Adapter '{name}' cannot be served by LMDeploy: {problem}; merge it into its base "
                f"(tuneforge export --format merged) and serve that, or use --engine pt."
            )

    def _request(self):
        engine = self

        class _InFlight:
            def __enter__(self):
                with engine._idle:
                    while engine._restarting:
                        engine._idle.wait()
                    if engine._pipe is None:
                        raise TuneforgeError("This engine was closed; create a new one to generate again.")
                    engine._in_flight += 1

            def __exit__(self, *exc):
                with engine._idle:
                    engine._in_flight -= 1
                    engine._idle.notify_all()

        return _InFlight()

    def _decode(self, tokens: list[int]) -> str:
        """The text of answer tokens, without special tokens but those the template keeps."""
        with self._tokenizer_lock:
            if self.kept_special_tokens:
                return strip_special_tokens(self.tokenizer.decode(tokens, skip_special_tokens=False), self.tokenizer, self.kept_special_tokens)
            return self.tokenizer.decode(tokens, skip_special_tokens=True)

    def _prepare(self, index: int | None, request: ChatRequest) -> _Prepared:
        """The LMDeploy requests for ``request``, refused here (before they queue) if they cannot run."""
        if self._pipe is None and not self._restarting:
            raise TuneforgeError("This engine was closed; create a new one to generate again.")
        adapter = self._default_adapter
        if request.adapter is not None:
            if request.adapter not in self.adapters:
                known = ", ".join(self.adapters) or "none"
                raise TuneforgeError(f"No adapter named '{request.adapter}' is loaded (loaded: {known}); load it first or leave 'adapter' out for the base model.")
            adapter = request.adapter
        if request.prompt is None and any(
            isinstance(m.get("content"), list) and any(p.get("type") in ("image_url", "video_url", "input_audio") for p in m["content"])
            for m in request.messages
        ):
            raise TuneforgeError(
                "This request has an image, video or audio part, and the lmdeploy engine serves text only; send text, "
                "or use the pt engine."
            )
        with self._tokenizer_lock:
            prompt = build_prompt_ids(self.template, self.tokenizer, request)
        s = request.sampling
        max_tokens = fitted_max_tokens(len(prompt), self.context_length, s, index=index)
        if not s.greedy and s.temperature > 2:
            raise TuneforgeError(f"temperature is {s.temperature:g}, and LMDeploy samples with a temperature of at most 2; lower it.")
        if (s.presence_penalty or s.frequency_penalty) and self.backend == "turbomind":
            raise TuneforgeError(
                "presence_penalty and frequency_penalty are applied by a logits processor, which TurboMind does not run; "
                "leave them at 0 or start the engine with backend=pytorch."
            )
        from lmdeploy import GenerationConfig

        copies = 1 if s.greedy else s.n
        configs = []
        for i in range(copies):
            seed = s.seed + i if s.seed is not None and not s.greedy else None  # None: LMDeploy draws one
            penalties = _Penalties(s.presence_penalty, s.frequency_penalty) if (s.presence_penalty or s.frequency_penalty) else None
            configs.append(GenerationConfig(
                n=1,
                max_new_tokens=max_tokens,
                do_sample=not s.greedy,
                temperature=s.temperature if not s.greedy else 1.0,
                top_p=s.top_p,
                top_k=s.top_k,  # 0: off, as in tuneforge
                repetition_penalty=s.repetition_penalty,
                random_seed=seed,
                stop_token_ids=list(self.stop_token_ids) or None,
                skip_special_tokens=not self.kept_special_tokens,
                include_stop_str_in_output=True,  # the stop token comes back, and is counted, as with the pt engine
                logits_processors=[penalties] if penalties else None,
            ))
        return _Prepared(request, prompt, max_tokens, configs, adapter, tuple(self.stop_strings) + tuple(s.stop))

    async def _run(self, prepared: _Prepared, gen_config, steps: queue.Queue | None = None) -> tuple[list[int], str]:
        """One LMDeploy request: its tokens and finish reason; ``steps`` gets (tokens so far, None) after each step and _END."""
        engine = self._pipe.async_engine
        session = engine.session_mgr.get()
        tokens: list[int] = []
        reason = None
        try:
            request = await engine.preprocess(
                None, session, gen_config=gen_config, input_ids=list(prepared.prompt_ids), adapter_name=prepared.adapter, do_preprocess=False,
            )
            outputs = engine.generate(request, stream_response=True)
            try:
                async for out in outputs:
                    tokens.extend(out.token_ids or ())
                    if out.finish_reason is not None:
                        reason = out.finish_reason
                    if steps is not None:
                        steps.put((list(tokens), None))
                    elif prepared.stops and first_stop(self._decode(tokens), prepared.stops) is not None:
                        reason = "stop"
                        break  # a stop string ended it: the rest is cancelled in LMDeploy
            finally:
                await outputs.aclose()
        except BaseException as exc:
            if steps is not None:  # handed to the consumer (a cancel is the consumer leaving)
                steps.put(exc if isinstance(exc, Exception) else TuneforgeError("The request was cancelled."))
            if isinstance(exc, Exception) and not isinstance(exc, TuneforgeError):
                raise TuneforgeError(f"LMDeploy failed the request: {_message(exc)}.") from exc
            raise
        finally:
            if steps is not None:
                steps.put(_END)
        if reason in ("error", "abort"):
            raise TuneforgeError(f"LMDeploy ended the request with finish reason '{reason}' after {len(tokens)} tokens.")
        return tokens, reason

    def _completion(self, prepared: _Prepared, tokens: list[int], reason: str | None) -> Completion:
        tokens = list(tokens[: prepared.max_tokens])
        text_tokens = tokens
        stop_ids = set(self.stop_token_ids)
        if tokens and tokens[-1] in stop_ids:
            text_tokens, reason = tokens[:-1], "stop"
        text = self._decode(text_tokens)
        cut = first_stop(text, prepared.stops)
        if cut is not None:
            text, reason = text[:cut], "stop"
        if reason not in ("stop", "length"):
            reason = "length" if len(tokens) >= prepared.max_tokens else "stop"
        with self._lock:
            self.requests_served += 1
            self.tokens_generated += len(tokens)
        completion = Completion(text, tokens, reason, len(prepared.prompt_ids), len(tokens))
        return finish_completion(completion, self.template, prepared.request)


class _Penalties:
    """OpenAI's presence and frequency penalties as an LMDeploy logits processor (it has neither).

    LMDeploy calls it once per decoding step of its sequence with the ids so far
    (left-padded); the tokens generated are the last ``step`` of them.
    """

    def __init__(self, presence: float, frequency: float) -> None:
        self.presence, self.frequency, self.step = presence, frequency, 0

    def __call__(self, ids, scores):
        import torch

        generated = ids[ids.numel() - self.step:] if self.step else ids[:0]
        self.step += 1
        if generated.numel():
            counts = torch.bincount(generated.to(scores.device).long(), minlength=scores.shape[-1])[: scores.shape[-1]].to(scores.dtype)
            scores = scores - self.frequency * counts - self.presence * (counts > 0).to(scores.dtype)
        return scores


def _message(exc: BaseException) -> str:
    text = str(getattr(exc, "message", None) or exc or type(exc).__name__).splitlines()
    return (text[0] if text else type(exc).__name__)[:200].rstrip(".")


def _wait_unless(futures: list[concurrent.futures.Future], cancel: threading.Event) -> None:
    """Wait for ``futures`` until all are done or ``cancel`` is set (seen within ``CANCEL_POLL_S``); raise the first failure."""
    pending = futures
    while pending and not cancel.is_set():
        done, pending = concurrent.futures.wait(pending, timeout=CANCEL_POLL_S, return_when=concurrent.futures.FIRST_EXCEPTION)
        for future in done:
            if not future.cancelled() and future.exception() is not None:
                future.result()
