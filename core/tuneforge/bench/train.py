"""Training speed and memory: ``tuneforge bench train``.

Builds a random-weight model of a named shape (weights do not change speed),
feeds it synthetic chat-length samples and trains it for a few steps through the
very path ``tuneforge sft`` takes (the same collator, packing, tuner, trainer,
loss and attention options), then, with ``--compare``, through plain
transformers + peft in the same process, or through ms-swift in a child process:

- ``hf``: padded batches, sdpa, a plain loop (forward, ``loss.backward()``, AdamW);
- ``hf-packed``: the same loop on padding-free batches (samples back to back,
  restarting ``position_ids``, transformers' own packed-sequence masking);
- ``ms-swift``: ms-swift's ``swift sft`` pipeline on the same token ids, in order,
  with its own pinned transformers/peft/trl/datasets (``--ms-swift-path``; see
  ``bench/ms_swift.py``).

The length mix: sample lengths are drawn, with ``--seed``, from a log-normal
distribution with a median of 800 tokens and sigma 0.7, clipped to [32, 4096]
(mean about 1,000 tokens); the first 30% of each sample is its prompt (not
learned), the rest its answer. ``--sample-length N`` makes every sample N tokens
instead. Token ids are uniform over the vocabulary.

Reported, after ``--warmup-steps`` untimed steps: real (non-padding) tokens a
second, model TFLOP/s (the FLOPs the training needs, not counting recomputation)
and MFU against the device's peak, peak memory, the loss of every step and the
settings used; a table on standard output and every number in ``--output`` (JSON).

Several processes: ``--nproc-per-node 1,2,4`` starts one torchrun job per count
through ``--parallel-backend``'s launcher (the command again, under it, with
``TUNEFORGE_BENCH_PART`` set); every job trains the same samples with the same
global batch (``--samples-per-step`` split over the data-parallel processes), its
ranks sum their tokens and take the largest time and peak memory (``over_ranks``),
and its rank 0 alone writes its run to a file of the parent's. The parent adds each
run's speedup and scaling efficiency against the fewest processes, writes the
report and draws the loss curves into ``NAME-loss.png`` (Pillow, when installed).
"""

from __future__ import annotations

import dataclasses
import gc
import json
import math
import os
import platform
import random
import subprocess
import sys
import shutil
import tempfile
import time
import types
from dataclasses import dataclass
from typing import Any, Literal, Optional

from ..builtin.tuners import LoraOptions
from ..config import DataOptions, ModelOptions, TrainingOptions, TunerOptions
from ..errors import TuneforgeError
from ..options import option
from ..records import FastPathOptions
from ..training import sequence_parallel
from .decode import SHAPES as QWEN2_SHAPES

# name -> (transformers config class, its fields). The Qwen2 shapes are the decode benchmark's.
SHAPES: dict[str, tuple[str, dict[str, Any]]] = {
    **{name: ("Qwen2Config", fields) for name, fields in QWEN2_SHAPES.items()},
    "qwen3-8b": (
        "Qwen3Config",
        dict(
            vocab_size=151936,
            hidden_size=4096,
            intermediate_size=12288,
            num_hidden_layers=36,
            num_attention_heads=32,
            num_key_value_heads=8,
            head_dim=128,
            max_position_embeddings=40960,
            rms_norm_eps=1e-6,
            tie_word_embeddings=False,
        ),
    ),
    "llama3-8b": (
        "LlamaConfig",
        dict(
            vocab_size=128256,
            hidden_size=4096,
            intermediate_size=14336,
            num_hidden_layers=32,
            num_attention_heads=32,
            num_key_value_heads=8,
            max_position_embeddings=131072,
            rms_norm_eps=1e-5,
            rope_theta=500000.0,
            tie_word_embeddings=False,
        ),
    ),
}

# Dense bf16 peak of the device's datasheet, TFLOP/s, by a word of its name.
PEAK_TFLOPS = {"H100": 989.4, "H200": 989.4, "H800": 989.4, "A100": 312.0, "L40S": 362.0, "A10": 125.0}

LENGTH_MEDIAN, LENGTH_SIGMA, LENGTH_MIN, LENGTH_MAX, PROMPT_SHARE = 800, 0.7, 32, 4096, 0.3
COMPARISONS = ("hf", "hf-packed", "ms-swift")


def _reuse(cls, name: str, **changes):
    """A field declared once in ``cls``, reused here (optionally with another default)."""
    (field,) = [f for f in dataclasses.fields(cls) if f.name == name]
    default = changes.get("default", field.default)
    return option(default, changes.get("help", field.metadata["help"]), group=field.metadata["group"])


@dataclass
class BenchTrainConfig(TunerOptions):
    # --parallel-backend selects a backend, which adds its own options (deepspeed's --zero-stage, ...)
    __tuneforge_selects__ = {"parallel_backend": "parallel_backends"}

    shape: str = option("tiny", "Model shape (random weights): " + ", ".join(SHAPES) + ".", choices=list(SHAPES), group="bench")
    samples_per_step: int = option(16, "Samples in each optimizer step (one packed row, or padded micro-batches).", group="bench")
    sample_length: Optional[int] = option(None, "Make every sample this many tokens instead of the chat-length mix.", group="bench")
    steps: int = option(6, "Timed optimizer steps.", group="bench")
    warmup_steps: int = option(2, "Untimed steps before them.", group="bench")
    compare: list[str] = option([], "Also run the same work through plain transformers + peft: hf (padded), hf-packed (padding-free); or through ms-swift's sft: ms-swift.", group="bench")
    compare_micro_batch: Optional[int] = option(None, "Samples a forward pass of the comparison (gradients accumulate over a step); default: all of the step's.", group="bench")
    ms_swift_path: Optional[str] = option(None, "A `pip install --target` folder holding ms-swift and the versions it pins, put first on the ms-swift process's PYTHONPATH; default: ms-swift importable as installed.", group="bench")
    ms_swift_liger: bool = option(False, "Run ms-swift with --use_liger_kernel (needs liger-kernel beside it and a CUDA device).", group="bench")
    peak_tflops: Optional[float] = option(None, "The device's peak TFLOP/s for MFU; default: the datasheet's dense bf16 figure where the device is known.", group="bench")
    nproc_per_node: list[str] = option(["1"], "Processes (devices) to train on, one torchrun job for each count, on the same samples with the same global batch: 1,2,4 or the option repeated; a count above 1 needs a --parallel-backend that spreads over processes.", group="bench")
    parallel_backend: str = option("single", "single, ddp, fsdp, or one a plugin adds (deepspeed); its own options are listed once it is selected.", group="bench")
    sequence_parallel_size: int = _reuse(TrainingOptions, "sequence_parallel_size")
    output: str = option("bench-train.json", "Where the JSON report goes; the loss curves' plot goes beside it (NAME-loss.png).", group="bench")
    seed: int = option(0, "Seed of the weights, the length mix and the token ids.", group="bench")
    device_settings: bool = option(True, "Apply the device's settings for training (its prepare_training: the built-in cuda device turns cuDNN's attention off); --no-device-settings measures what they cost.", group="bench")
    lora_rank: int = _reuse(LoraOptions, "lora_rank", default=16)
    lora_alpha: int = _reuse(LoraOptions, "lora_alpha", default=32)
    lora_dropout: float = _reuse(LoraOptions, "lora_dropout", default=0.0)
    target_modules: list[str] = option(["all-linear"], "Modules LoRA adapts.", group="tuner")
    torch_dtype: Literal["auto", "float32", "bfloat16", "float16"] = _reuse(ModelOptions, "torch_dtype")
    attn_implementation: Optional[str] = _reuse(ModelOptions, "attn_implementation")
    device: Optional[str] = _reuse(ModelOptions, "device")
    packing: Optional[bool] = _reuse(DataOptions, "packing")
    gradient_checkpointing: Optional[bool] = _reuse(TrainingOptions, "gradient_checkpointing")
    checkpointing_policy: Literal["full", "selective"] = _reuse(TrainingOptions, "checkpointing_policy")
    chunked_loss: Optional[bool] = _reuse(FastPathOptions, "chunked_loss")
    fused_norm: Optional[bool] = _reuse(FastPathOptions, "fused_norm")
    fused_swiglu: Optional[bool] = _reuse(FastPathOptions, "fused_swiglu")
    fused_rope: Optional[bool] = _reuse(FastPathOptions, "fused_rope")
    loss_chunk_size: int = _reuse(FastPathOptions, "loss_chunk_size")
    learning_rate: float = _reuse(TrainingOptions, "learning_rate")
    pure_bf16: bool = _reuse(TrainingOptions, "pure_bf16")


def log(message: str) -> None:
    if int(os.environ.get("RANK", "0")) == 0:  # in a run of several processes, the first one speaks
        print(f"[bench] {message}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- the work


def sample_lengths(count: int, seed: int, fixed: int | None = None) -> list[int]:
    """The seeded chat-length mix (see the module's docstring), or ``count`` times ``fixed``."""
    if fixed is not None:
        return [fixed] * count
    rng = random.Random(seed)
    return [
        min(LENGTH_MAX, max(LENGTH_MIN, round(rng.lognormvariate(math.log(LENGTH_MEDIAN), LENGTH_SIGMA))))
        for _ in range(count)
    ]


def synthetic_samples(lengths: list[int], vocab_size: int, seed: int) -> list[dict]:
    """``{"input_ids", "labels"}`` samples: random ids, the prompt share not learned."""
    rng = random.Random(seed + 1)
    samples = []
    for length in lengths:
        ids = [rng.randrange(1, vocab_size) for _ in range(length)]
        prompt = max(1, int(length * PROMPT_SHARE))
        samples.append({"input_ids": ids, "labels": [-100] * prompt + ids[prompt:]})
    return samples


def model_config(shape: str):
    import transformers

    if shape not in SHAPES:
        raise TuneforgeError(f"--shape '{shape}' is unknown; choose one of {', '.join(SHAPES)}.")
    class_name, fields = SHAPES[shape]
    return getattr(transformers, class_name)(**fields, bos_token_id=None, eos_token_id=None, pad_token_id=0)


def build_model(shape: str, dtype, device: str, attn_implementation: str, seed: int, quantization_config=None):
    """A random-weight causal LM of ``shape``, built directly on ``device``.

    With ``quantization_config`` (a bitsandbytes 4-bit one) the decoder's linear layers are
    4-bit, each layer quantized as soon as it is built (``build_layer_by_layer``): the
    bf16 model is never whole, so a 72B shape's 4-bit base fits where its 145 GB would not.
    """
    import torch
    from transformers import AutoModelForCausalLM

    config = model_config(shape)
    torch.manual_seed(seed)
    if quantization_config is not None:
        model = build_layer_by_layer(config, dtype, device, attn_implementation,
                                     lambda layer: quantize_4bit(layer, quantization_config, device))
        model.is_loaded_in_4bit = True  # peft's k-bit preparation looks for it
    else:
        with torch.device(device):
            model = AutoModelForCausalLM.from_config(
                config, dtype=dtype, attn_implementation=attn_implementation, trust_remote_code=False
            )
    model.config.use_cache = False
    return model


def build_layer_by_layer(config, dtype, device: str, attn_implementation: str, finish_layer=None):
    """A random-weight Llama-layout causal LM built on ``device`` one decoder layer at a time.

    The model is laid out on the meta device; then each decoder layer is built on
    ``device``, initialised as ``from_config`` initialises it and handed to
    ``finish_layer`` (which may replace its modules: quantize them) before the next is
    built; the embeddings, final norm, rotary embedding and output layer last.
    """
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype, attn_implementation=attn_implementation, trust_remote_code=False)
    config = model.config
    decoder = model.get_decoder()

    def initialised(module):
        for child in module.modules():
            model._init_weights(child)
        return module

    for index, meta_layer in enumerate(decoder.layers):
        with torch.device(device):
            layer = initialised(type(meta_layer)(config, index).to(dtype))
        decoder.layers[index] = finish_layer(layer) if finish_layer is not None else layer
    with torch.device(device):
        decoder.embed_tokens = initialised(torch.nn.Embedding(config.vocab_size, config.hidden_size, decoder.padding_idx, dtype=dtype))
        decoder.norm = initialised(type(decoder.norm)(config.hidden_size, eps=config.rms_norm_eps).to(dtype))
        decoder.rotary_emb = type(decoder.rotary_emb)(config=config)
        model.lm_head = initialised(torch.nn.Linear(config.hidden_size, config.vocab_size, bias=False, dtype=dtype))
    if config.tie_word_embeddings:
        model.lm_head.weight = decoder.embed_tokens.weight
    left = [name for name, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if left:
        raise RuntimeError(f"building {config.model_type} layer by layer left {left[:3]} on the meta device")
    return model


def quantize_4bit(model, quantization_config, device: str):
    """Swap every linear layer but the output layer for a bitsandbytes 4-bit one holding the same weights."""
    import bitsandbytes as bnb
    import torch

    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is not torch.nn.Linear or child is head:
                continue
            layer = bnb.nn.Linear4bit(
                child.in_features, child.out_features, bias=child.bias is not None,
                compute_dtype=quantization_config.bnb_4bit_compute_dtype,
                compress_statistics=quantization_config.bnb_4bit_use_double_quant,
                quant_type=quantization_config.bnb_4bit_quant_type, device="meta",
            )
            layer.weight = bnb.nn.Params4bit(
                child.weight.data, requires_grad=False, compress_statistics=quantization_config.bnb_4bit_use_double_quant,
                quant_type=quantization_config.bnb_4bit_quant_type,
            ).to(device)
            if child.bias is not None:
                layer.bias = torch.nn.Parameter(child.bias.data, requires_grad=False)
            setattr(parent, name, layer)
            del child
    model.is_loaded_in_4bit = True  # peft's k-bit preparation looks for it
    return model


# ---------------------------------------------------------------- FLOPs


def flops_per_step(config, lengths: list[int], *, trainable: int, base_trains: bool, recompute: bool) -> tuple[float, float]:
    """(model FLOPs, hardware FLOPs) of one step over samples of ``lengths``.

    Matrix products: 2 FLOPs a weight a token forward, 2 for the input gradient and
    2 for the weight gradient where the weight trains; adapters count 6.
    Attention: each sample's causal triangle, the backward pass twice the forward.
    Hardware FLOPs add the forward pass again where checkpointing recomputes it.
    """
    hidden, layers, inter = config.hidden_size, config.num_hidden_layers, config.intermediate_size
    heads, kv_heads = config.num_attention_heads, config.num_key_value_heads
    head_dim = getattr(config, "head_dim", None) or hidden // heads
    per_layer = hidden * head_dim * (2 * heads + 2 * kv_heads) + 3 * hidden * inter
    layer_weights = layers * per_layer
    head_weights = config.vocab_size * hidden
    tokens = sum(lengths)
    base = layer_weights + head_weights
    matmul = tokens * (6 if base_trains else 4) * base + tokens * 6 * trainable
    attention_forward = sum(layers * 4 * heads * head_dim * n * (n + 1) / 2 for n in lengths)
    model = matmul + 3 * attention_forward
    hardware = model + ((2 * tokens * layer_weights + attention_forward) if recompute else 0)
    return model, hardware


# ---------------------------------------------------------------- measuring


class Meter:
    """Counts real tokens per forward pass and times optimizer steps after the warm-up.

    ``add(name, n)`` counts anything else a subclass's ``hook`` sees (images, ...): the
    timed steps' totals appear in ``result()`` under ``name``.
    """

    def __init__(self, device: str, warmup: int) -> None:
        self.device = device
        self.warmup = warmup
        self.steps_done = 0
        self.pending_tokens = 0
        self.pending_lengths: list[int] = []
        self.lengths: list[int] = []
        self.step_tokens: list[int] = []
        self.step_seconds: list[float] = []
        self.pending_counts: dict[str, int] = {}
        self.counts: dict[str, int] = {}
        self._last = None

    def sync(self) -> float:
        """The time once the device's work is done, and, in a run of several processes, every process's."""
        if self.device.startswith("cuda"):
            import torch

            torch.cuda.synchronize()
        if _world_size() > 1:
            import torch.distributed as dist

            dist.barrier()
        return time.perf_counter()

    def count(self, input_ids, attention_mask=None, position_ids=None) -> None:
        """Record a forward pass's samples: rows of a padding mask, or the pieces of a packed row."""
        if attention_mask is not None:
            lengths = attention_mask.sum(-1).tolist()
        elif position_ids is not None and position_ids.shape[0] == 1:
            from ..training.attention import boundaries_from_positions

            bounds = boundaries_from_positions(position_ids).tolist()
            lengths = [b - a for a, b in zip(bounds[:-1], bounds[1:])]
        else:
            lengths = [input_ids.shape[-1]] * input_ids.shape[0]
        self.pending_lengths += lengths
        self.pending_tokens += sum(lengths)

    def add(self, name: str, n: int) -> None:
        """Count ``n`` more of ``name`` in the current step."""
        self.pending_counts[name] = self.pending_counts.get(name, 0) + int(n)

    def hook(self, module, args, kwargs):
        input_ids = kwargs.get("input_ids", args[0] if args else None)
        if input_ids is None:
            return
        bounds = kwargs.get("cu_seq_lens_q")
        if bounds is not None and int(bounds[-1]) > input_ids.shape[-1]:
            # This process's slice of a row cut across a sequence group: its tokens here, the
            # row's samples once (on the group's first rank), so the sums over ranks are the row's.
            group = sequence_parallel._ACTIVE[-1] if sequence_parallel._ACTIVE else None
            self.pending_tokens += int(input_ids.shape[-1])
            if group is None or group.rank == 0:
                edges = bounds.tolist()
                self.pending_lengths += [b - a for a, b in zip(edges[:-1], edges[1:])]
            return
        self.count(input_ids, kwargs.get("attention_mask"), kwargs.get("position_ids"))

    def step_end(self) -> None:
        now = self.sync()
        self.steps_done += 1
        if self.steps_done > self.warmup and self._last is not None:
            self.step_seconds.append(now - self._last)
            self.step_tokens.append(self.pending_tokens)
            self.lengths += self.pending_lengths
            for name, n in self.pending_counts.items():
                self.counts[name] = self.counts.get(name, 0) + n
        self.pending_tokens = 0
        self.pending_lengths = []
        self.pending_counts = {}
        self._last = now

    def result(self) -> dict:
        seconds, tokens = sum(self.step_seconds), sum(self.step_tokens)
        return {
            "timed_steps": len(self.step_seconds),
            "seconds": seconds,
            "tokens": tokens,
            "tokens_per_s": tokens / seconds if seconds else None,
            "step_seconds": self.step_seconds,
            "sample_lengths": self.lengths,
            **self.counts,
        }


def _world_size() -> int:
    """The processes of the run this one belongs to (1 outside torch.distributed)."""
    import torch.distributed as dist

    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def _rank() -> int:
    return int(os.environ.get("RANK", "0"))


def over_ranks(result: dict) -> dict:
    """One process's measurement made the run's: tokens (and counts) summed over the processes,
    time and peak memory their maximum, the samples' lengths of all; unchanged in one process."""
    if _world_size() == 1:
        return result
    import torch.distributed as dist

    parts: list = [None] * dist.get_world_size()
    dist.all_gather_object(parts, result)
    combined = dict(result)
    for key, value in result.items():
        values = [part[key] for part in parts]
        if key == "sample_lengths":
            combined[key] = [n for part in values for n in part]
        elif key == "step_tokens":
            combined[key] = [sum(step) for step in zip(*values)]
        elif key == "step_seconds":
            combined[key] = [max(step) for step in zip(*values)]
        elif key in ("seconds",) or key.startswith("peak_"):
            known = [v for v in values if v is not None]
            combined[key] = max(known) if known else None
        elif key == "tokens" or (key not in ("timed_steps", "tokens_per_s") and isinstance(value, int) and not isinstance(value, bool)):
            combined[key] = sum(values)
    combined["tokens_per_rank"] = [part["tokens"] for part in parts]
    seconds = combined["seconds"]
    combined["tokens_per_s"] = combined["tokens"] / seconds if seconds else None
    return combined


def _memory_reset(device: str) -> None:
    gc.collect()
    if device.startswith("cuda"):
        import torch

        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def _memory_peak(device: str) -> dict:
    if device.startswith("cuda"):
        import torch

        return {
            "peak_allocated_gib": torch.cuda.max_memory_allocated() / 2**30,
            "peak_reserved_gib": torch.cuda.max_memory_reserved() / 2**30,
        }
    return {"peak_allocated_gib": None, "peak_reserved_gib": None}


def use_local_device(device) -> None:
    """Under a launcher, make this process's device (torchrun's LOCAL_RANK) the current one of its
    type, before anything touches one: a model built on "the" device, a name or memory query."""
    if "LOCAL_RANK" in os.environ and device.torch_device != "cpu":
        import torch

        getattr(torch, device.torch_device).set_device(int(os.environ["LOCAL_RANK"]))


def sft_config(options: dict, device, tuner, backend):
    """The ``sft`` configuration of a benchmark's options on ``device``: the selected tuner's and
    backend's options included, no checkpoint saved, the loss logged at every step."""
    from ..config import SFTConfig
    from ..options import build
    from ..selection import compose_for

    # The SFT options with those of the selected tuner, device and backend (a CPU run has no CUDA switches).
    selection = {"train_type": tuner.name, "device": device.name, "parallel_backend": backend.name}
    known = {f.name for f in dataclasses.fields(compose_for(SFTConfig, selection))}
    workdir = tempfile.mkdtemp(prefix="tuneforge-bench-")
    values = {name: value for name, value in options.items() if name in known}
    values.update(output_dir=workdir, save_steps=10**9, logging_steps=1, report_to="none")
    values.setdefault("lr_scheduler", "constant")
    values.setdefault("model", "(random weights)")
    return build(SFTConfig, values, selection)


def sft_benchmark_run(options: dict, samples: list, build_model, meter: "Meter", *, device=None, dtype=None, bundle=None,
                      device_settings: bool = True) -> dict:
    """Train ``samples`` through the ``sft`` path, measured by ``meter``: what a benchmark of the training path runs.

    ``options``: ``sft`` option values (``train_type`` and its options, ``packing``,
    ``gradient_checkpointing``, ``per_device_batch_size``, ``max_steps``,
    ``parallel_backend`` and its options, ``sequence_parallel_size``, ...); the rest
    resolve as ``sft`` resolves them on the device (its fast path), and no checkpoint is
    saved. ``build_model(setup)`` returns the random-weight model, built on
    ``setup.device.torch_device`` (this process's device of that type) in ``setup.dtype``
    with ``setup.config.attn_implementation``. ``bundle``: a resolved model bundle
    (``resolve_bundle``) whose family (its parts, its LoRA modules), template (its
    collated extras) and tokenizer the run uses; None for weights of no family.
    ``device``/``dtype``: default, as ``sft`` picks them. ``device_settings=False``: the
    device's ``prepare_training`` is left out, to measure what it costs.

    Under a launcher (torchrun) every process calls this with the same samples: each
    step's samples are split over the data-parallel processes as ``sft`` splits them
    (``per_device_batch_size`` each), and the measurement is the run's (``over_ranks``).

    Returns the settings the run resolved to, the trainable and total parameters, the
    meter's result, the loss of every step (warm-up included) and the device's peak
    memory (reset before the model is built; the largest of the processes').
    """
    from transformers import TrainerCallback

    from .. import modeling, parts
    from ..registry import get_registry
    from ..training.setup import Setup, prepare_device, register_attention, resolve_fast_path, vision_attention, wrap_for_training
    from ..training.sft import build_trainer

    registry = get_registry()
    family = getattr(bundle, "family", None)
    device = device or modeling.pick_device(options.get("device"))
    prepare_device(device, runtime_settings=device_settings)
    dtype = dtype or modeling.resolve_dtype(options.get("torch_dtype", "auto"), device, family)
    tuner = registry.get("tuners", options.get("train_type", "lora"))
    backend = registry.get("parallel_backends", options.get("parallel_backend", "single"))
    method = registry.get("training_methods", "sft")
    processes = int(os.environ.get("WORLD_SIZE", "1"))
    use_local_device(device)
    config = sft_config(options, device, tuner, backend)
    if tuner.check is not None:
        tuner.check(config, device)
    if backend.check is not None:
        backend.check(config, device)
    if family is not None:
        parts.check(config, family)
    config = resolve_fast_path(config, device, family, backend, method, getattr(bundle, "template", None))
    sequence_parallel.check(config, method, backend, family, getattr(bundle, "hf_config", None), processes=processes)
    if family is not None and hasattr(config, "target_modules") and not [m for m in config.target_modules if ":" not in m]:
        config = dataclasses.replace(config, target_modules=[*family.lora_target_modules, *config.target_modules])
    setup = Setup(
        config=config, method="sft", bundle=bundle, device=device, dtype=dtype, tuner=tuner, backend=backend,
        output_dir=__import__("pathlib").Path(config.output_dir), resume_from=None,
    )
    register_attention(config, device)
    _memory_reset(device.torch_device)
    model = build_model(setup)
    model = wrap_for_training(setup, model)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    model.register_forward_pre_hook(meter.hook, with_kwargs=True)
    losses: dict[int, float] = {}

    class Timing(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            meter.step_end()

        def on_train_begin(self, args, state, control, **kwargs):
            meter.sync()

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:  # the mean over every process: the loss of the whole step
                losses[state.global_step] = float(logs["loss"])

    data_parallel = max(processes // max(int(config.sequence_parallel_size), 1), 1)
    trainer = build_trainer(setup, model, samples[: config.max_steps * config.per_device_batch_size * data_parallel], callbacks=[Timing()])
    trainer.parallel_backend = backend.name
    # No checkpoint: the Trainer saves at the last step of a run saving by steps, and a full
    # fine-tuning checkpoint of a 7B model (float32 weights and moments) is 90 GB of disk.
    from transformers.trainer_utils import SaveStrategy

    trainer.args.save_strategy = SaveStrategy.NO
    meter._last = meter.sync()
    trainer.train()
    settings = {
        "train_type": tuner.name, "fused_lora": bool(getattr(config, "fused_lora", None)), "fused_norm": bool(getattr(config, "fused_norm", None)),
        "fused_swiglu": bool(getattr(config, "fused_swiglu", None)), "fused_rope": bool(getattr(config, "fused_rope", None)), "lora_rank": getattr(config, "lora_rank", None), "lora_alpha": getattr(config, "lora_alpha", None),
        "lora_dropout": getattr(config, "lora_dropout", None), "target_modules": list(getattr(config, "target_modules", [])),
        "packing": bool(config.packing), "attn_implementation": config.attn_implementation or "sdpa", "chunked_loss": bool(getattr(config, "chunked_loss", None)),
        "loss_chunk_size": getattr(config, "loss_chunk_size", None), "gradient_checkpointing": bool(config.gradient_checkpointing),
        "checkpointing_policy": config.checkpointing_policy if config.gradient_checkpointing else "off",
        "samples_per_step": config.per_device_batch_size * data_parallel, "per_device_batch_size": config.per_device_batch_size,
        "parallel_backend": backend.name, "processes": processes, "sequence_parallel_size": int(config.sequence_parallel_size),
        "dtype": str(dtype).removeprefix("torch."),
        "pure_bf16": bool(getattr(config, "pure_bf16", False)), "device_settings": device_settings,
    }
    if backend.options is not None:
        settings["backend_options"] = {f.name: getattr(config, f.name) for f in dataclasses.fields(backend.options)}
    vision = vision_attention(model)
    if vision is not None:
        settings["vision_attn_implementation"] = vision
    for part in parts.PARTS:
        if getattr(config, f"freeze_{part}", None) is not None:
            settings[f"freeze_{part}"] = getattr(config, f"freeze_{part}")
    measured = over_ranks({**meter.result(), **_memory_peak(device.torch_device)})
    result = {
        "settings": settings, "trainable_parameters": trainable, "total_parameters": total,
        "base_trains": trainable == total, **measured, "losses": [losses[step] for step in sorted(losses)],
    }
    trainer.accelerator.free_memory()
    del trainer, model
    shutil.rmtree(setup.output_dir, ignore_errors=True)  # sft_config's work dir
    return result


def benchmark_options(bench: BenchTrainConfig, device, processes: int) -> dict:
    """The ``sft`` options of a run of ``bench`` on ``processes`` processes: each step's samples
    split over the data-parallel ones (the processes, or their sequence groups)."""
    own = {"device", "torch_dtype", "output", "seed", "steps", "warmup_steps", "nproc_per_node"}
    options = {f.name: getattr(bench, f.name) for f in dataclasses.fields(bench) if f.name not in own}
    data_parallel = max(processes // bench.sequence_parallel_size, 1)
    options.update(
        seed=bench.seed, max_steps=bench.warmup_steps + bench.steps, per_device_batch_size=bench.samples_per_step // data_parallel,
        device=device.name,
    )
    return options


def run_tuneforge(bench: BenchTrainConfig, samples: list[dict], device, dtype) -> dict:
    """Train through the ``sft`` path: resolved options, tuner, collator, trainer, loss, attention."""
    options = benchmark_options(bench, device, int(os.environ.get("WORLD_SIZE", "1")))

    def build(setup):
        extra = setup.tuner.load_kwargs(setup.config, setup.device) if setup.tuner.load_kwargs else {}
        unknown = set(extra) - {"quantization_config", "device_map"}
        if unknown:
            raise TuneforgeError(f"--train-type {bench.train_type} loads its weights with {sorted(unknown)}, which the benchmark cannot apply to random weights; use lora, dora, qlora, full or freeze.")
        model = build_model(bench.shape, setup.dtype, setup.device.torch_device, setup.config.attn_implementation or "sdpa", bench.seed,
                            quantization_config=extra.get("quantization_config"))
        if "quantization_config" in extra:
            _memory_reset(setup.device.torch_device)  # the training's peak, as after loading a 4-bit checkpoint
        return model

    result = sft_benchmark_run(options, samples, build, Meter(device.torch_device, bench.warmup_steps), device=device, dtype=dtype,
                               device_settings=bench.device_settings)
    result.pop("total_parameters")
    return {"runner": "tuneforge", **result}


def _pad(samples: list[dict], device: str):
    import torch

    width = max(len(s["input_ids"]) for s in samples)
    ids = torch.zeros((len(samples), width), dtype=torch.long)
    labels = torch.full((len(samples), width), -100, dtype=torch.long)
    mask = torch.zeros((len(samples), width), dtype=torch.long)
    for row, sample in enumerate(samples):
        n = len(sample["input_ids"])
        ids[row, :n] = torch.tensor(sample["input_ids"])
        labels[row, :n] = torch.tensor(sample["labels"])
        mask[row, :n] = 1
    return {"input_ids": ids.to(device), "attention_mask": mask.to(device), "labels": labels.to(device)}


def _flatten(samples: list[dict], device: str):
    import torch

    ids, labels, positions = [], [], []
    for sample in samples:
        ids += sample["input_ids"]
        labels += [-100] + sample["labels"][1:]
        positions += range(len(sample["input_ids"]))
    as_row = lambda values: torch.tensor([values], dtype=torch.long, device=device)  # noqa: E731
    return {"input_ids": as_row(ids), "labels": as_row(labels), "position_ids": as_row(positions)}


def run_plain(bench: BenchTrainConfig, samples: list[dict], device, dtype, *, packed: bool, gradient_checkpointing: bool) -> dict:
    """The same samples through plain transformers + peft: sdpa, a plain loop, AdamW."""
    import torch
    from peft import LoraConfig, get_peft_model

    torch_device = device.torch_device
    model = build_model(bench.shape, dtype, torch_device, "sdpa", bench.seed)
    targets = list(bench.target_modules)
    model = get_peft_model(model, LoraConfig(
        r=bench.lora_rank, lora_alpha=bench.lora_alpha, lora_dropout=bench.lora_dropout,
        target_modules="all-linear" if targets == ["all-linear"] else targets, task_type="CAUSAL_LM",
    ))
    if gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    model.train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=bench.learning_rate)
    micro = bench.compare_micro_batch or bench.samples_per_step
    meter = Meter(torch_device, bench.warmup_steps)
    meter._last = meter.sync()
    for step in range(bench.warmup_steps + bench.steps):
        batch_samples = samples[step * bench.samples_per_step : (step + 1) * bench.samples_per_step]
        items = sum(sum(label != -100 for label in s["labels"][1:]) for s in batch_samples)
        for start in range(0, len(batch_samples), micro):
            part = batch_samples[start : start + micro]
            batch = _flatten(part, torch_device) if packed else _pad(part, torch_device)
            meter.count(batch["input_ids"], batch.get("attention_mask"), batch.get("position_ids"))
            loss = model(**batch, use_cache=False, num_items_in_batch=items).loss
            loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        meter.step_end()
    result = {
        "runner": "hf-packed" if packed else "hf",
        "settings": {
            "train_type": "lora", "fused_lora": False, "lora_rank": bench.lora_rank, "lora_alpha": bench.lora_alpha,
            "lora_dropout": bench.lora_dropout, "target_modules": targets, "packing": packed,
            "attn_implementation": "sdpa", "chunked_loss": False, "gradient_checkpointing": gradient_checkpointing,
            "checkpointing_policy": "full" if gradient_checkpointing else "off", "samples_per_step": bench.samples_per_step,
            "micro_batch": micro, "dtype": str(dtype).removeprefix("torch."),
        },
        "trainable_parameters": sum(p.numel() for p in trainable),
        **meter.result(),
    }
    del model, optimizer
    return result


# ---------------------------------------------------------------- the report


def _device_name(device) -> str:
    if device.torch_device == "cuda":
        import torch

        return torch.cuda.get_device_name()
    return platform.processor() or platform.machine() or "cpu"


def _peak_for(name: str, given: float | None) -> float | None:
    if given is not None:
        return given
    for word, peak in PEAK_TFLOPS.items():
        if word in name:
            return peak
    return None


def compares_with(tuner) -> bool:
    """Whether the comparison runners (plain peft LoRA, ms-swift's LoRA) train what ``tuner`` trains.

    They implement plain LoRA themselves: an adapter (``saves_adapter``) on a base that
    loads unquantized (``quantizes_base`` off) whose product is the fusable LoRA product
    (``fuse``; a weight-decomposed adapter has none).
    """
    return tuner.saves_adapter and not tuner.quantizes_base and tuner.fuse is not None


def process_counts(bench: BenchTrainConfig) -> list[int]:
    """The counts of ``--nproc-per-node`` (``1,2,4`` or the option repeated), in the order given."""
    counts = []
    for text in bench.nproc_per_node:
        for item in str(text).split(","):
            try:
                count = int(item.strip())
            except ValueError:
                raise TuneforgeError(f"--nproc-per-node '{text}' is not a list of whole numbers; give counts such as 1,2,4.") from None
            if count < 1:
                raise TuneforgeError(f"--nproc-per-node has {count}; each count must be at least 1.")
            if count not in counts:
                counts.append(count)
    if not counts:
        raise TuneforgeError("--nproc-per-node is empty; give one count or more, such as 1,2,4.")
    return counts


def spreads(backend) -> bool:
    """Whether ``backend`` runs as torchrun jobs (its launcher), even of one process."""
    return backend.launch_command(1) is not None


def check(bench: BenchTrainConfig) -> list[int]:
    """Every mistake in the options, in one sentence, before any model is built; the process counts."""
    from ..registry import get_registry

    counts = process_counts(bench)
    registry = get_registry()
    backend = registry.get("parallel_backends", bench.parallel_backend)
    if bench.sequence_parallel_size < 1:
        raise TuneforgeError(f"--sequence-parallel-size is {bench.sequence_parallel_size}; it must be at least 1.")
    for key in ("samples_per_step", "steps", "loss_chunk_size"):
        if getattr(bench, key) < 1:
            raise TuneforgeError(f"--{key.replace('_', '-')} is {getattr(bench, key)}; it must be at least 1.")
    if bench.warmup_steps < 0:
        raise TuneforgeError(f"--warmup-steps is {bench.warmup_steps}; it must be 0 or more.")
    if bench.sample_length is not None and bench.sample_length < 2:
        raise TuneforgeError(f"--sample-length is {bench.sample_length}; give at least 2 tokens, or leave it out for the chat-length mix.")
    if bench.compare_micro_batch is not None and bench.compare_micro_batch < 1:
        raise TuneforgeError(f"--compare-micro-batch is {bench.compare_micro_batch}; it must be at least 1.")
    for name in bench.compare:
        if name not in COMPARISONS:
            raise TuneforgeError(f"--compare '{name}' is unknown; choose from {', '.join(COMPARISONS)}.")
    if bench.compare:
        from ..registry import get_registry

        if not compares_with(get_registry().get("tuners", bench.train_type)):
            raise TuneforgeError(f"--compare runs plain LoRA only, but --train-type is '{bench.train_type}'; use --train-type lora.")
    if "ms-swift" in bench.compare:
        micro = bench.compare_micro_batch or bench.samples_per_step
        if bench.samples_per_step % micro:
            raise TuneforgeError(
                f"--samples-per-step {bench.samples_per_step} is not a multiple of --compare-micro-batch {micro}, "
                "which ms-swift needs (it accumulates whole micro-batches); pick a divisor."
            )
        from .ms_swift import check_installed

        check_installed(bench.ms_swift_path, liger=bench.ms_swift_liger)
    if bench.compare and (counts != [1] or spreads(backend)):
        raise TuneforgeError(
            f"--compare runs its comparisons in one process, not with --nproc-per-node {','.join(map(str, counts))} "
            f"--parallel-backend {backend.name}; run the comparison as a command of its own, without them."
        )
    for count in counts:
        if count > 1 and backend.launch_command(count) is None:
            raise TuneforgeError(
                f"--parallel-backend {backend.name} runs one process, but --nproc-per-node asks for {count}; "
                f"pass --parallel-backend ddp or fsdp (or another that spreads over processes)."
            )
        if count < backend.min_processes:
            raise TuneforgeError(
                f"--parallel-backend {backend.name} needs at least {backend.min_processes} processes, but --nproc-per-node has {count}; "
                f"leave {count} out (the speedups are then against the smallest count), or measure it with --parallel-backend ddp."
            )
        if bench.sequence_parallel_size > 1:
            sequence_parallel.check(bench, registry.get("training_methods", "sft"), backend, hf_config=model_config(bench.shape), processes=count)
        data_parallel = count // bench.sequence_parallel_size
        if bench.samples_per_step % data_parallel:
            unit = "processes" if bench.sequence_parallel_size == 1 else f"sequence groups of {bench.sequence_parallel_size} processes"
            raise TuneforgeError(
                f"--samples-per-step {bench.samples_per_step} does not split evenly over the {data_parallel} {unit} of "
                f"--nproc-per-node {count} (every count trains the same global batch); give a multiple of {data_parallel}."
            )
    return counts


def _header(bench: BenchTrainConfig, device_name: str, peak: float | None) -> dict:
    """What a report says before its runs: the shape, the device, the samples, the options, the versions."""
    import torch

    lengths = sample_lengths((bench.warmup_steps + bench.steps) * bench.samples_per_step, bench.seed, bench.sample_length)
    timed_lengths = lengths[bench.warmup_steps * bench.samples_per_step :]
    return {
        "shape": bench.shape,
        "model_config": SHAPES[bench.shape][1],
        "device": device_name,
        "peak_tflops": peak,
        "length_mix": (
            f"every sample {bench.sample_length} tokens" if bench.sample_length else
            f"log-normal, median {LENGTH_MEDIAN}, sigma {LENGTH_SIGMA}, clipped to [{LENGTH_MIN}, {LENGTH_MAX}], seed {bench.seed}"
        ),
        "prompt_share": PROMPT_SHARE,
        "timed_samples": len(timed_lengths),
        "timed_sample_tokens": sum(timed_lengths),
        "mean_tokens_per_step": sum(timed_lengths) / max(bench.steps, 1),
        "options": dataclasses.asdict(bench),
        "torch": torch.__version__,
        "transformers": __import__("transformers").__version__,
        "peft": __import__("peft").__version__,
    }


def benchmark(bench: BenchTrainConfig) -> dict:
    """Every runner of ``bench`` in this process (under a launcher: this process's part of one run)."""
    import torch

    from .. import modeling

    from ..training.setup import prepare_device

    check(bench)
    torch.manual_seed(bench.seed)
    device = modeling.pick_device(bench.device)
    if "ms-swift" in bench.compare and bench.ms_swift_liger and device.torch_device != "cuda":
        raise TuneforgeError(f"--ms-swift-liger needs a CUDA device (liger-kernel's kernels are Triton), not {device.torch_device}; leave it out there.")
    prepare_device(device, runtime_settings=bench.device_settings)
    use_local_device(device)
    dtype = modeling.resolve_dtype(bench.torch_dtype, device, None)
    config = model_config(bench.shape)
    total = (bench.warmup_steps + bench.steps) * bench.samples_per_step
    lengths = sample_lengths(total, bench.seed, bench.sample_length)
    samples = synthetic_samples(lengths, config.vocab_size, bench.seed)
    name = _device_name(device)
    peak = _peak_for(name, bench.peak_tflops)
    processes = int(os.environ.get("WORLD_SIZE", "1"))
    runs = []
    plan = [("tuneforge", None)] + [(c, c) for c in bench.compare]
    for label, comparison in plan:
        _memory_reset(device.torch_device)
        where = f" on {processes} process{'es' if processes > 1 else ''} ({bench.parallel_backend})" if "WORLD_SIZE" in os.environ else ""
        log(f"{label}: {bench.shape}{where}, {bench.warmup_steps} + {bench.steps} steps of {bench.samples_per_step} samples ...")
        try:
            gc_on = bench.gradient_checkpointing if bench.gradient_checkpointing is not None else device.fast_path.gradient_checkpointing
            if comparison is None:
                result = run_tuneforge(bench, samples, device, dtype)
            elif comparison == "ms-swift":
                from .ms_swift import run_ms_swift

                result = run_ms_swift(bench, samples, device, dtype, gradient_checkpointing=gc_on)
            else:
                result = run_plain(bench, samples, device, dtype, packed=comparison == "hf-packed", gradient_checkpointing=gc_on)
        except torch.cuda.OutOfMemoryError as exc:
            result = {"runner": label, "error": f"out of memory: {str(exc).splitlines()[0]}"}
        except Exception as exc:  # one runner's failure must not hide the others' figures
            if isinstance(exc, TuneforgeError):
                raise
            import traceback

            traceback.print_exc()
            result = {"runner": label, "error": f"{type(exc).__name__}: {exc}"}
        for key, value in _memory_peak(device.torch_device).items():
            result.setdefault(key, value)  # a runner in its own process measured its own
        result.setdefault("processes", result.get("settings", {}).get("processes", 1))
        if "error" not in result:
            recompute = result["settings"]["gradient_checkpointing"]
            base_trains = result.pop("base_trains", False)  # the comparison runners train adapters
            trainable = 0 if base_trains else result["trainable_parameters"]
            model_flops, hardware_flops = flops_per_step(config, result.pop("sample_lengths"), trainable=trainable, base_trains=base_trains, recompute=recompute)
            seconds = result["seconds"]
            result["tokens_per_s_per_device"] = result["tokens_per_s"] / result["processes"] if result["tokens_per_s"] else None
            result["model_tflops_per_s"] = model_flops / seconds / 1e12 if seconds else None
            result["hardware_tflops_per_s"] = hardware_flops / seconds / 1e12 if seconds else None
            # against the peak of every device the run used
            result["mfu"] = result["model_tflops_per_s"] / (peak * result["processes"]) if peak and seconds else None
        runs.append(result)
        _memory_reset(device.torch_device)
    base = runs[0].get("tokens_per_s")
    for run in runs[1:]:
        if base and run.get("tokens_per_s"):
            run["tuneforge_speedup"] = base / run["tokens_per_s"]
    return {**_header(bench, name, peak), "runs": runs}


def add_scaling(report: dict) -> None:
    """Each measured run's speedup over the run of the fewest processes (one, where it was measured)
    and its scaling efficiency: the speedup divided by the ratio of the process counts."""
    measured = [run for run in report["runs"] if run.get("tokens_per_s")]
    if not measured:
        return
    base = min(measured, key=lambda run: run["processes"])
    report["speedup_base_processes"] = base["processes"]
    for run in measured:
        run["speedup"] = run["tokens_per_s"] / base["tokens_per_s"]
        run["scaling_efficiency"] = run["speedup"] / (run["processes"] / base["processes"])


def table(report: dict) -> str:
    scaling = "speedup_base_processes" in report
    lines = [
        f"{report['shape']} on {report['device']}: {report['timed_samples']} timed samples, "
        f"{report['mean_tokens_per_step']:,.0f} tokens a step ({report['length_mix']})",
        f"{'runner':<10} {'procs':>5} {'tokens/s':>10} {'per device':>10} {'TFLOP/s':>8} {'MFU':>6} {'peak GiB':>9} "
        f"{'speedup':>11}  settings",
    ]
    if scaling:
        lines[0] += f"; speedups against {report['speedup_base_processes']} process{'es' if report['speedup_base_processes'] > 1 else ''}"
    for run in report["runs"]:
        peak = run.get("peak_allocated_gib")
        peak_text = f"{peak:.1f}" if peak is not None else "n/a"
        procs = run.get("processes", 1)
        if "error" in run:
            lines.append(f"{run['runner']:<10} {procs:>5} {'-':>10} {'-':>10} {'-':>8} {'-':>6} {peak_text:>9} {'':>11}  {run['error']}")
            continue
        s = run["settings"]
        mfu = f"{100 * run['mfu']:.1f}%" if run.get("mfu") is not None else "-"
        if "speedup" in run:
            speedup = f"x{run['speedup']:.2f} {100 * run['scaling_efficiency']:.0f}%"
        else:
            speedup = f"{run['tuneforge_speedup']:.2f}x" if "tuneforge_speedup" in run else ""
        fused = "/".join(name for name in ("norm", "swiglu", "rope") if s.get(f"fused_{name}"))
        fused = f"fused {fused}, " if fused else ""
        if s.get("ms_swift", {}).get("use_liger_kernel"):
            fused = "liger kernels, " + fused
        spread = f"{s['parallel_backend']}, " if scaling else ""
        if s.get("sequence_parallel_size", 1) > 1:
            spread += f"sequence parallel {s['sequence_parallel_size']}, "
        settings = (
            f"{spread}{'packed' if s['packing'] else 'padded'}, {s['attn_implementation']}, "
            f"{'chunked loss' if s['chunked_loss'] else 'plain loss'}, {fused}checkpointing {s['checkpointing_policy']}, "
            f"{s['train_type']} r{s['lora_rank']}{' fused' if s.get('fused_lora') else ''}"
            f"{', device settings off' if s.get('device_settings') is False else ''}"
        )
        per_device = run.get("tokens_per_s_per_device") or run["tokens_per_s"]
        lines.append(
            f"{run['runner']:<10} {procs:>5} {run['tokens_per_s']:>10,.0f} {per_device:>10,.0f} {run['model_tflops_per_s']:>8.1f} "
            f"{mfu:>6} {peak_text:>9} {speedup:>11}  {settings}"
        )
    return "\n".join(lines)


# ---------------------------------------------------------------- the loss plot

PLOT_SIZE = (800, 480)
PLOT_COLOURS = [(31, 119, 180), (214, 39, 40), (44, 160, 44), (148, 103, 189), (255, 127, 14), (23, 190, 207), (140, 86, 75), (127, 127, 127)]


def plot_path(output: str) -> str:
    """Where the loss plot of the report at ``output`` goes: beside it, NAME-loss.png."""
    from pathlib import Path

    path = Path(output)
    return str(path.with_name(f"{path.stem}-loss.png"))


def _ticks(low: float, high: float, count: int = 5) -> list[float]:
    """About ``count`` round values from ``low`` to ``high``."""
    span = high - low or 1.0
    raw = span / count
    magnitude = 10 ** math.floor(math.log10(raw))
    step = min((m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw), default=10 * magnitude)
    first = math.ceil(low / step) * step
    return [first + i * step for i in range(int((high - first) / step + 1e-9) + 1)]


def plot_losses(report: dict, path: str) -> bool:
    """Draw the loss of every step of each run (one colour a process count) into a PNG at ``path``.

    False, with nothing written, when Pillow is not installed.
    """
    try:
        from PIL import Image, ImageDraw, ImageFont
    except ImportError:
        return False
    curves = [(run, run["losses"]) for run in report["runs"] if run.get("losses")]
    width, height = PLOT_SIZE
    left, right, top, bottom = 70, 20, 40, 50
    image = Image.new("RGB", PLOT_SIZE, "white")
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default()
    values = [loss for _, losses in curves for loss in losses]
    low, high = (min(values), max(values)) if values else (0.0, 1.0)
    pad = (high - low) * 0.08 or max(abs(high) * 0.01, 0.01)
    low, high = low - pad, high + pad
    steps = max((len(losses) for _, losses in curves), default=1)
    x_of = lambda step: left + (width - left - right) * ((step - 1) / max(steps - 1, 1))  # noqa: E731
    y_of = lambda loss: top + (height - top - bottom) * (high - loss) / (high - low)  # noqa: E731
    draw.rectangle([left, top, width - right, height - bottom], outline="black")
    for value in _ticks(low, high):
        y = y_of(value)
        draw.line([left - 5, y, left, y], fill="black")
        draw.line([left + 1, y, width - right - 1, y], fill=(230, 230, 230))
        draw.text((left - 8, y), f"{value:.4g}", fill="black", font=font, anchor="rm")
    for step in sorted({max(1, round(v)) for v in _ticks(1, steps, min(steps, 10)) if 1 <= round(v) <= steps}):
        x = x_of(step)
        draw.line([x, height - bottom, x, height - bottom + 5], fill="black")
        draw.text((x, height - bottom + 8), str(step), fill="black", font=font, anchor="mt")
    draw.text((left + (width - left - right) / 2, height - 12), "optimizer step", fill="black", font=font, anchor="ms")
    draw.text((left, top - 12), "training loss", fill="black", font=font, anchor="ls")
    title = f"{report['shape']} on {report['device']}"
    draw.text((width - right, top - 12), title, fill="black", font=font, anchor="rs")
    legend_y = top + 10
    for index, (run, losses) in enumerate(curves):
        colour = PLOT_COLOURS[index % len(PLOT_COLOURS)]
        points = [(x_of(step), y_of(loss)) for step, loss in enumerate(losses, start=1)]
        thickness = 2 + 2 * (len(curves) - 1 - index)  # the first curves widest: curves that agree stay visible
        if len(points) > 1:
            draw.line(points, fill=colour, width=thickness)
        for x, y in points:
            draw.ellipse([x - 3, y - 3, x + 3, y + 3], outline=colour, width=2)
        processes = run.get("processes", 1)
        backend = run.get("settings", {}).get("parallel_backend")
        label = f"{processes} process{'es' if processes != 1 else ''}" + (f" ({backend})" if backend else "")
        draw.rectangle([width - right - 170, legend_y, width - right - 156, legend_y + 10], fill=colour)
        draw.text((width - right - 150, legend_y + 5), label, fill="black", font=font, anchor="lm")
        legend_y += 18
    image.save(path, format="PNG")
    return True


# ---------------------------------------------------------------- the command

PART_ENVIRONMENT = "TUNEFORGE_BENCH_PART"  # set on the torchrun jobs the command starts: rank 0 writes its run, no table


def _write(report: dict, bench: BenchTrainConfig) -> None:
    with open(bench.output, "w", encoding="utf-8") as handle:
        json.dump(report, handle, indent=2)
    print(table(report))
    if any(run.get("losses") for run in report["runs"]):
        picture = plot_path(bench.output)
        if plot_losses(report, picture):
            log(f"wrote the loss curves to {picture}")
        else:
            log("the loss plot (PNG) needs Pillow, which is not installed (pip install pillow); the curves are in the JSON report.")
    log(f"wrote the full report to {bench.output}")


def _in_place(bench: BenchTrainConfig) -> dict:
    """Under a launcher (torchrun, or one of this command's own jobs): one run on its processes."""
    from ..training.sft import end_distributed

    world = int(os.environ.get("WORLD_SIZE", "1"))
    counts = process_counts(bench)
    if counts not in ([world], [1]):  # 1 is the default: only a count that was given can disagree
        raise TuneforgeError(
            f"--nproc-per-node {','.join(map(str, counts))} disagrees with the launcher, which started {world} processes; "
            f"leave --nproc-per-node out (or give {world}), or run tuneforge bench train without a launcher to measure several counts."
        )
    bench = dataclasses.replace(bench, nproc_per_node=[str(world)])
    report = benchmark(bench)
    if _rank() == 0:
        if os.environ.get(PART_ENVIRONMENT):
            with open(bench.output, "w", encoding="utf-8") as handle:
                json.dump(report, handle)
        else:
            add_scaling(report)
            _write(report, bench)
    end_distributed()
    return report


def _check_devices(bench: BenchTrainConfig, counts: list[int], backend):
    """The device, checked against the largest count and the backend, without touching its memory."""
    from .. import modeling
    from ..registry import get_registry

    device = modeling.pick_device(bench.device)
    if device.torch_device != "cpu":
        import torch

        visible = getattr(getattr(torch, device.torch_device, None), "device_count", lambda: None)()
        if visible is not None and max(counts) > visible:
            raise TuneforgeError(
                f"--nproc-per-node {max(counts)} asks for more {device.name} devices than the {visible} visible here; "
                f"give counts up to {visible} (CUDA_VISIBLE_DEVICES or its like decides which are visible)."
            )
    tuner = get_registry().get("tuners", bench.train_type)
    if tuner.quantizes_base and not backend.supports_quantized_base:
        raise TuneforgeError(
            f"--train-type {tuner.name} trains on a quantized base, which --parallel-backend {backend.name} cannot hold; "
            f"use --parallel-backend ddp, or another --train-type such as lora."
        )
    config = sft_config(benchmark_options(bench, device, max(counts)), device, tuner, backend)
    if tuner.check is not None:
        tuner.check(config, device)
    if backend.check is not None:
        backend.check(config, device)
    return device


def run_counts(bench: BenchTrainConfig, counts: list[int], backend) -> dict:
    """One torchrun job for each process count, on the same samples and global batch; their runs in one report."""
    from pathlib import Path

    import yaml

    from ..training import launch

    device = _check_devices(bench, counts, backend)
    one_machine = types.SimpleNamespace(nnodes=1, node_rank=None, master_addr=None, master_port=None)
    runs, header = [], None
    with tempfile.TemporaryDirectory(prefix="tuneforge-bench-") as folder:
        for count in counts:
            part = Path(folder) / f"run-{count}.json"
            values = dataclasses.asdict(bench)
            values.update(nproc_per_node=[str(count)], output=str(part))
            options_file = Path(folder) / f"run-{count}.yaml"
            options_file.write_text(yaml.safe_dump(values))
            command = launch.torchrun_command(backend.launch_command(count), one_machine)
            log(f"launching {count} process{'es' if count != 1 else ''} with the '{backend.name}' backend ...")
            done = subprocess.run([*command, "-m", "tuneforge.cli", "bench", "train", str(options_file)], env={**os.environ, PART_ENVIRONMENT: "1"})
            if done.returncode == 0 and part.is_file():
                report = json.loads(part.read_text())
                header = header or report
                run = report["runs"][0]
            else:
                run = {"runner": "tuneforge", "processes": count, "error": f"the {count}-process run failed (exit code {done.returncode}); see its log above"}
            runs.append(run)
    if header is None:
        header = _header(bench, device.name, bench.peak_tflops)
    report = {**header, "options": dataclasses.asdict(bench), "runs": runs}
    add_scaling(report)
    return report


def run_bench_train(bench: BenchTrainConfig) -> dict:
    if "LOCAL_RANK" in os.environ:
        return _in_place(bench)
    counts = check(bench)
    from ..registry import get_registry

    backend = get_registry().get("parallel_backends", bench.parallel_backend)
    if counts == [1] and not spreads(backend):
        report = benchmark(bench)
    else:
        report = run_counts(bench, counts, backend)
    _write(report, bench)
    return report
