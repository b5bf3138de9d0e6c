"""``tuneforge plan``: the peak memory per GPU of a training run, estimated before anything loads.

Only the model's configuration is read (a registered model resolved as ``sft``
resolves it, a local checkpoint's or run's ``config.json``, a hub id's config, or a
``tuneforge bench train --shape`` name); the parameters are counted from it exactly,
layer by layer. For each parallel backend that can run the job, the estimate adds up,
per GPU, in bytes:

- weights: the base in bf16 (2 bytes a parameter); for a tuner that quantizes the base
  (qlora), the decoder's linear weights in 4-bit NF4 (half a byte) with their
  double-quantized constants (one byte per 64 weights, and a float32 per 256 of
  those), their biases and norms in float32, the embeddings and output layer in bf16;
  LoRA adapters in float32 (peft keeps them so); for full fine-tuning the weights
  train in float32: the core's float32 master weights under ``single`` and ``ddp``
  (which also make the residual stream float32), FSDP's float32 weights
  (``memory_layout``'s ``float32_weights``); in bf16 with ``--pure-bf16``, or under a
  backend that keeps its float32 masters with the optimizer state (ZeRO's
  ``float32_master_weights``). Divided by
  the processes where the backend shards parameters; such a backend also holds two
  decoder layers gathered in bf16 (the one computing and the one prefetched) and the
  weights outside the layers (embeddings, output layer, final norm), which the root
  keeps gathered from the forward to the backward pass.
- gradients: one per trainable weight, in its dtype; divided where the backend shards
  gradients; a data-parallel backend that does not shard them keeps a second copy in
  its communication buckets (DDP).
- optimizer state: AdamW's two moments per trainable weight, in its dtype (float32
  for adapters and float32 trainable weights); divided where the backend shards it.
- activations, for the core's fast path on one row of ``--per-device-batch-size`` x
  ``--max-length`` packed tokens (T), in bf16: with full gradient checkpointing each
  layer keeps its input ([T, hidden]); ``selective`` keeps the attention kernel's
  output too ([T, heads x head_dim]) and its log-sum-exp (float32, [heads, T]);
  without checkpointing each layer keeps its whole working set. On top comes the
  larger of two working sets: one layer's in the backward pass (its recomputed
  forward tensors: two norm outputs, the residual, q, k and v, the attention output,
  gate, up and the SwiGLU output; then the MLP's two gradients of width
  ``intermediate_size`` and two [T, hidden] gradients of the residual stream; with a
  4-bit base, one dequantized bf16 copy of the largest linear weight; with
  ``--lora-dropout`` above 0, which the fused LoRA layers do not take, peft's layers
  run and each adapted layer keeps its dropped-out input and mask, 3 bytes an input
  feature), or the loss's:
  the chunked loss holds one chunk's logits (``--loss-chunk-size`` tokens: bf16, then
  one float32 copy that becomes the gradient, 6 bytes a logit) beside the last hidden
  states and their gradient, and where the output layer trains its float32 gradient
  accumulator and one chunk's contribution (10 bytes a weight). Where the chunked loss
  is off (a backend that cannot run it turns it off: ``ParallelBackend.fast_path_off``,
  DeepSpeed ZeRO-3), the plain loss holds the full logits: bf16, a float32 copy, its
  float32 and bf16 gradients, 12 bytes a logit; where a backend turns the selective
  checkpointing policy off (fsdp), the layers are estimated with full checkpointing.
- overhead: a fixed ``OVERHEAD_GIB`` (the CUDA context, cuBLAS and communication
  workspaces, the allocator's slack), which ``torch.cuda.max_memory_allocated`` does
  not count. A backend fits when the total is at most ``--gpu-memory``.

The gradients and the activations are not added: a backward pass starts without
gradients (the optimizer step sets them to None) and ends with all of them and the
activations freed, so the peak holds the larger of the two (checked against full
fine-tuning on one H200, where their sum overestimated by 12 to 21%); with
``--gradient-accumulation-steps`` above 1 the gradients kept between micro-batches
come on top of the next one's activations, and then they are added.

The estimate covers dense decoders with the Llama layout (``SUPPORTED_MODEL_TYPES``);
vision-language and mixture-of-experts models are refused with a sentence, as are
tuners other than full fine-tuning and the fused LoRA layers (lora, qlora). What a
backend offloads to CPU memory (``memory_layout``'s ``offloaded``: fsdp's
``--fsdp-offload`` keeps the shards of the weights, their gradients and the optimizer
state there; deepspeed's ``--offload-optimizer``/``--offload-parameters``) is left out
of the GPU's share, while the layers gathered for the computation (and one layer's
gradients before they are reduce-scattered) stay on it; the host memory it takes is
not estimated. docs/distributed.md compares the estimates with the peaks measured on
one GPU.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Optional

from .config import DataOptions, TrainingOptions, TunerOptions
from .errors import TuneforgeError
from .options import option
from .records import FastPathOptions

GIB = 2**30
OVERHEAD_GIB = 1.0  # CUDA context, cuBLAS/NCCL workspaces and allocator slack, beyond what torch allocates
HEADROOM = 0.10  # the share of a GPU's memory a recommendation leaves free where it can: estimates are within 15%
DEFAULT_GPU_GIB = 80.0  # an H100's, when no GPU is visible and --gpu-memory is not given
SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3")
LINEAR_NAMES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
NF4_BLOCK, NF4_STATS_BLOCK = 64, 256  # bitsandbytes' 4-bit blocks and their double quantization
BF16, FP32 = 2, 4
WHOLE, ADAPTERS, ADAPTERS_ON_4BIT = "every weight", "adapters", "adapters on a 4-bit base"  # what a tuner trains


def _reuse(cls, name: str, **changes):
    """A field declared once in ``cls``, reused here (optionally with another default or help)."""
    (field,) = [f for f in dataclasses.fields(cls) if f.name == name]
    return option(changes.get("default", field.default), changes.get("help", field.metadata["help"]), group=field.metadata["group"])


@dataclass
class PlanConfig(TunerOptions):
    """``tuneforge plan``: the tuner (``--train-type``) brings its own options (LoRA's rank, targets), and a
    backend named with ``--parallel-backend`` its own (the others are estimated with their defaults)."""

    __tuneforge_selects__ = {"train_type": "tuners", "parallel_backend": "parallel_backends"}

    model: Optional[str] = option(None, "A registered model name, a local checkpoint or output dir, a hub id, or a `tuneforge bench train --shape` name; only its config is read.", group="model")
    nproc_per_node: int = _reuse(TrainingOptions, "nproc_per_node")
    max_length: int = _reuse(DataOptions, "max_length", help="Tokens per sample; a packed row holds --per-device-batch-size of them.")
    per_device_batch_size: int = _reuse(TrainingOptions, "per_device_batch_size")
    gradient_accumulation_steps: int = _reuse(TrainingOptions, "gradient_accumulation_steps", help="Micro-batches a step; above 1 the gradients are kept beside the next micro-batch's activations.")
    gradient_checkpointing: Optional[bool] = _reuse(TrainingOptions, "gradient_checkpointing", help="Recompute activations in the backward pass; default: on, as sft on a GPU.")
    checkpointing_policy: Literal["full", "selective"] = _reuse(TrainingOptions, "checkpointing_policy")
    loss_chunk_size: int = _reuse(FastPathOptions, "loss_chunk_size")
    pure_bf16: bool = _reuse(TrainingOptions, "pure_bf16")
    parallel_backend: Optional[str] = option(None, "Estimate this backend only; default: every installed backend that can run the job.", group="plan")
    gpu_memory: Optional[float] = option(None, f"GiB of memory per GPU; default: the visible GPU's, else {DEFAULT_GPU_GIB:g} (an H100's).", group="plan")
    as_json: bool = option(False, "Print JSON for machines.", flag="--json", group="plan")


# ---------------------------------------------------------------- the model's shape


@dataclass(frozen=True)
class Shape:
    """What the estimate needs of a dense Llama-layout decoder, read from its config."""

    model_type: str
    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    tied_embeddings: bool
    qkv_bias: bool
    o_bias: bool
    mlp_bias: bool
    qk_norm: bool

    def linears(self) -> dict[str, tuple[int, int, bool]]:
        """Each decoder layer's linear layers: name -> (in features, out features, bias)."""
        h, q, kv, inter = self.hidden_size, self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim, self.intermediate_size
        return {
            "q_proj": (h, q, self.qkv_bias), "k_proj": (h, kv, self.qkv_bias), "v_proj": (h, kv, self.qkv_bias),
            "o_proj": (q, h, self.o_bias),
            "gate_proj": (h, inter, self.mlp_bias), "up_proj": (h, inter, self.mlp_bias), "down_proj": (inter, h, self.mlp_bias),
        }

    @property
    def layer_linear_weights(self) -> int:
        return sum(i * o for i, o, _ in self.linears().values())

    @property
    def layer_small_parameters(self) -> int:
        """Biases and norms of one layer (one-dimensional)."""
        biases = sum(o for _, o, bias in self.linears().values() if bias)
        return biases + 2 * self.hidden_size + (2 * self.head_dim if self.qk_norm else 0)

    @property
    def layer_parameters(self) -> int:
        return self.layer_linear_weights + self.layer_small_parameters

    @property
    def outside_layers(self) -> int:
        """Embeddings, the final norm and the output layer (once, where tied)."""
        embedding = self.vocab_size * self.hidden_size
        return embedding + self.hidden_size + (0 if self.tied_embeddings else embedding)

    @property
    def parameters(self) -> int:
        return self.num_layers * self.layer_parameters + self.outside_layers


def shape_of(config) -> Shape:
    """The ``Shape`` of a transformers config, or a sentence saying why it cannot be estimated."""
    model_type = getattr(config, "model_type", None)
    if getattr(config, "vision_config", None) is not None:
        raise TuneforgeError(
            f"tuneforge plan does not estimate vision-language models (model_type '{model_type}': its vision tower and "
            f"image tokens are not modelled); measure one with `tuneforge bench-vl` (docs/performance.md)."
        )
    if any(getattr(config, key, None) for key in ("num_experts", "num_local_experts", "n_routed_experts")):
        raise TuneforgeError(f"tuneforge plan does not estimate mixture-of-experts models (model_type '{model_type}'); it covers dense decoders ({', '.join(SUPPORTED_MODEL_TYPES)}).")
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise TuneforgeError(
            f"tuneforge plan estimates dense Llama-layout decoders (model_type {', '.join(SUPPORTED_MODEL_TYPES)}), "
            f"not model_type '{model_type}'; measure this one with a short run instead."
        )
    heads = config.num_attention_heads
    attention_bias = bool(getattr(config, "attention_bias", False))
    return Shape(
        model_type=model_type,
        vocab_size=config.vocab_size,
        hidden_size=config.hidden_size,
        num_layers=config.num_hidden_layers,
        num_heads=heads,
        num_kv_heads=getattr(config, "num_key_value_heads", None) or heads,
        head_dim=getattr(config, "head_dim", None) or config.hidden_size // heads,
        intermediate_size=config.intermediate_size,
        tied_embeddings=bool(getattr(config, "tie_word_embeddings", False)),
        qkv_bias=True if model_type == "qwen2" else (attention_bias and model_type != "mistral"),
        o_bias=attention_bias and model_type in ("llama", "qwen3"),
        mlp_bias=bool(getattr(config, "mlp_bias", False)) and model_type == "llama",
        qk_norm=model_type == "qwen3",
    )


def read_config(spec: str):
    """The transformers config of ``spec``, resolved as ``sft`` resolves a model; no weights are read.

    A registered model, an existing directory (a checkpoint, or a run: its base model's
    config) and a hub id come first; then the name of a benchmark shape.
    """
    from . import modeling
    from .bench.train import SHAPES, model_config
    from .registry import get_registry

    if not spec:
        raise TuneforgeError("tuneforge plan needs --model: a registered model, a checkpoint dir, a hub id or a shape (" + ", ".join(SHAPES) + ").")
    registered = get_registry().has("models", spec)
    if not registered and not Path(spec).expanduser().exists() and spec in SHAPES:
        return model_config(spec)
    try:
        resolved = modeling.resolve_model(spec)
    except TuneforgeError as exc:
        raise TuneforgeError(f"{str(exc).rstrip('.')}; or give a benchmark shape ({', '.join(SHAPES)}).") from None
    return modeling.load_hf_config(resolved.base_path)


# ---------------------------------------------------------------- the tuner


@dataclass(frozen=True)
class Training:
    """What trains: ``kind`` is ``WHOLE`` (every weight), ``ADAPTERS`` (LoRA) or ``ADAPTERS_ON_4BIT`` (LoRA on a 4-bit base)."""

    kind: str
    trainable: int  # parameters that train
    targets: tuple[str, ...] = ()  # the adapted linear layers (LoRA)
    rank: int = 0
    dropout: bool = False  # LoRA dropout on: the layers run unfused, each keeping a dropped-out copy of its input
    pure_bf16: bool = False  # whole weights trained in bf16 itself (--pure-bf16), not from float32 master weights


def training_of(tuner, config, shape: Shape, family=None) -> Training:
    """How ``tuner`` trains ``shape``: read from what the record declares, not from its name."""
    lora = tuner.options is not None and any(f.name == "lora_rank" for f in dataclasses.fields(tuner.options))
    if lora and tuner.fuse is None:
        raise TuneforgeError(f"tuneforge plan models the fused LoRA layers of lora and qlora; --train-type {tuner.name} runs other layers, whose memory it does not model.")
    if lora and getattr(config, "fused_lora", None) is False:
        raise TuneforgeError("tuneforge plan models the fused LoRA layers; leave --no-fused-lora out.")
    if not lora:
        from .parts import PartOptions

        own = {f.name for f in dataclasses.fields(tuner.options)} - {f.name for f in dataclasses.fields(PartOptions)} if tuner.options else set()
        if tuner.saves_adapter or tuner.quantizes_base or own:  # full fine-tuning takes no options but the parts' switches
            raise TuneforgeError(f"tuneforge plan estimates full fine-tuning and the LoRA tuners (lora, qlora), not --train-type {tuner.name}.")
        return Training(WHOLE, shape.parameters, pure_bf16=bool(getattr(config, "pure_bf16", False)))
    if config.lora_rank < 1:
        raise TuneforgeError(f"--lora-rank is {config.lora_rank}; it must be at least 1.")
    parts = [m for m in config.target_modules if ":" in m]
    if parts or getattr(config, "target_parts", None):
        raise TuneforgeError("tuneforge plan estimates models without named parts; leave PART:NAME --target-modules and --target-parts out.")
    names = list(config.target_modules) or list(getattr(family, "lora_target_modules", None) or ["all-linear"])
    targets = LINEAR_NAMES if "all-linear" in names else tuple(dict.fromkeys(names))
    unknown = [name for name in targets if name not in LINEAR_NAMES]
    if unknown:
        raise TuneforgeError(f"--target-modules {', '.join(unknown)} is not a linear layer of this model; use all-linear or names among {', '.join(LINEAR_NAMES)}.")
    linears = shape.linears()
    per_layer = sum(config.lora_rank * (linears[name][0] + linears[name][1]) for name in targets)
    dropout = bool(getattr(config, "lora_dropout", 0))
    return Training(ADAPTERS_ON_4BIT if tuner.quantizes_base else ADAPTERS, shape.num_layers * per_layer, targets, config.lora_rank, dropout)


def nf4_bytes(weights: int) -> float:
    """A 4-bit NF4 weight with double-quantized constants: half a byte each, a byte per 64, a float32 per 64 x 256."""
    blocks = math.ceil(weights / NF4_BLOCK)
    return weights / 2 + blocks + FP32 * math.ceil(blocks / NF4_STATS_BLOCK)


# ---------------------------------------------------------------- the estimate


@dataclass
class Estimate:
    backend: str
    weights: float  # bytes per GPU
    gradients: float
    optimizer: float
    activations: float
    sharded: tuple[str, ...]  # what the backend divides by the processes
    accumulating: bool = False  # gradients kept across the micro-batches of a step (gradient accumulation)

    @property
    def allocated(self) -> float:
        """What torch allocates at the peak (``torch.cuda.max_memory_allocated``).

        A step's backward pass starts without gradients (the optimizer step sets them to
        None) and ends with all of them and almost no activations, so one pass holds the
        larger of the two; with gradient accumulation the next micro-batch's activations
        come on top of the gradients kept from the last.
        """
        if self.accumulating:
            return self.weights + self.optimizer + self.gradients + self.activations
        return self.weights + self.optimizer + max(self.gradients, self.activations)

    @property
    def total(self) -> float:
        return self.allocated + OVERHEAD_GIB * GIB

    def as_dict(self, gpu_gib: float) -> dict:
        gib = lambda value: round(value / GIB, 2)  # noqa: E731
        return {
            "backend": self.backend, "weights_gib": gib(self.weights), "gradients_gib": gib(self.gradients),
            "optimizer_gib": gib(self.optimizer), "activations_gib": gib(self.activations),
            "allocated_gib": gib(self.allocated), "total_gib": gib(self.total), "fits": self.total <= gpu_gib * GIB,
            "sharded": list(self.sharded),
        }


def activation_bytes(shape: Shape, training: Training, tokens: int, *, checkpointing: bool, policy: str, chunked_loss: bool, chunk: int, float32_module: bool = False) -> float:
    """Activations at the peak of one step over a row of ``tokens`` (see the module's docstring).

    ``float32_module``: the trained weights are float32 in the module itself (the core's
    float32 master weights under autocast), so the embeddings hand a float32 residual
    stream to the layers, and the chunked loss casts the output weight to bf16."""
    h, inter = shape.hidden_size, shape.intermediate_size
    residual = FP32 if float32_module else BF16
    q, kv = shape.num_heads * shape.head_dim, shape.num_kv_heads * shape.head_dim
    lse = FP32 * shape.num_heads  # the attention kernel's log-sum-exp, a token
    saved = BF16 * (2 * h + (q + 2 * kv) + q + 3 * inter) + residual * h + lse  # one layer's forward tensors, a token
    if training.dropout:  # unfused layers: each keeps its dropped-out input (bf16) and the mask (a byte)
        linears = shape.linears()
        saved += (BF16 + 1) * sum(linears[name][0] for name in training.targets)
    backward = BF16 * (2 * inter + 2 * h)  # the MLP's and the residual stream's gradients
    if not checkpointing:
        kept = shape.num_layers * (residual * h + saved)
        layer = backward
    elif policy == "selective":
        kept = shape.num_layers * (residual * h + BF16 * q + lse)
        layer = saved - BF16 * q - lse + backward
    else:
        kept = shape.num_layers * residual * h
        layer = saved + backward
    layer_bytes = tokens * layer
    if training.kind == ADAPTERS_ON_4BIT:
        layer_bytes += BF16 * max(i * o for i, o, _ in shape.linears().values())
    if chunked_loss:
        loss = min(chunk, tokens) * shape.vocab_size * (BF16 + FP32) + tokens * h * (residual + BF16)
        if training.kind == WHOLE:  # the output layer trains: its float32 accumulator and one chunk's gradient
            loss += shape.vocab_size * h * (FP32 + BF16 + FP32 + (BF16 if float32_module else 0))
    else:
        loss = tokens * shape.vocab_size * (BF16 + FP32 + FP32 + BF16)
    return tokens * kept + max(layer_bytes, loss)


STATES = ("parameters", "gradients", "optimizer_state")


def layout_of(backend, options=None) -> dict:
    """What each process of ``backend`` holds under ``options`` (``ParallelBackend.memory_layout``),
    with every key filled in; ``options`` default to the defaults of the backend's own."""
    if backend.memory_layout is None:
        layout = {"sharded": STATES if backend.shards_parameters else ()}
    else:
        if options is None and backend.options is not None:
            options = backend.options()
        layout = dict(backend.memory_layout(options))
    unknown = set(layout.get("sharded", ())) - set(STATES) or set(layout.get("offloaded", ())) - set(STATES)
    if unknown:
        raise TuneforgeError(f"The '{backend.name}' backend's memory layout names {sorted(unknown)}, which tuneforge plan does not know; fix the plugin's memory_layout.")
    float32_weights = bool(layout.get("float32_weights", False))
    return {
        "sharded": tuple(state for state in STATES if state in set(layout.get("sharded", ()))),
        "float32_weights": float32_weights,
        "float32_gradients": bool(layout.get("float32_gradients", float32_weights)),
        "float32_master_weights": bool(layout.get("float32_master_weights", False)),
        "offloaded": tuple(layout.get("offloaded", ())),
    }


def fast_path_off(backend, options=None) -> dict[str, str]:
    """The fast-path options ``backend`` turns off under ``options`` (default: its own options' defaults)."""
    if options is None and backend.options is not None:
        options = backend.options()
    return backend.fast_path_turned_off(options)


def estimate(shape: Shape, training: Training, backend, nproc: int, tokens: int, *, options=None, checkpointing: bool = True, policy: str = "full", chunk: int = 1024, accumulation: int = 1) -> Estimate:
    """Peak bytes per GPU of ``training`` on ``shape`` under ``backend`` (with its ``options``) and ``nproc`` processes."""
    n = max(nproc, 1)
    layout = layout_of(backend, options)
    divisor = {state: (n if state in layout["sharded"] else 1) for state in STATES}
    on_gpu = {state: state not in layout["offloaded"] for state in STATES}
    adapters = training.kind != WHOLE
    # peft keeps adapters in float32. Whole weights train from float32 copies: the core's own in the
    # module (single, ddp) unless --pure-bf16, or the backend's (FSDP's float32 weights, ZeRO's masters).
    engine_masters = layout["float32_weights"] or layout["float32_master_weights"]
    core_masters = training.kind == WHOLE and not training.pure_bf16 and not engine_masters
    weight_bytes = FP32 if adapters or layout["float32_weights"] or core_masters else BF16
    gradient_bytes = FP32 if adapters or layout["float32_gradients"] or core_masters else BF16
    if training.kind == ADAPTERS_ON_4BIT:
        # Each linear weight quantized on its own; biases and norms in float32; embeddings and output layer in bf16.
        frozen = shape.num_layers * sum(nf4_bytes(i * o) for i, o, _ in shape.linears().values())
        frozen += FP32 * (shape.num_layers * shape.layer_small_parameters + shape.hidden_size)
        frozen += BF16 * (shape.outside_layers - shape.hidden_size)
    elif training.kind == ADAPTERS:
        frozen = BF16 * shape.parameters
    else:
        frozen = 0.0
    weights = (frozen + weight_bytes * training.trainable) / divisor["parameters"] * on_gpu["parameters"]
    if "parameters" in layout["sharded"] or not on_gpu["parameters"]:
        # Two layers gathered (computing, prefetched) and the root's weights kept gathered through the step.
        weights += BF16 * (2 * shape.layer_parameters + shape.outside_layers)
    gradients = gradient_bytes * training.trainable / divisor["gradients"] * on_gpu["gradients"]
    if "gradients" in layout["sharded"] and training.kind == WHOLE:
        gradients += gradient_bytes * shape.layer_parameters  # one layer's gradients before they are reduce-scattered
    if n > 1 and "gradients" not in layout["sharded"]:
        gradients *= 2  # the communication buckets' copy (DDP)
    optimizer_bytes = 2 * (FP32 if adapters else weight_bytes) + (FP32 if layout["float32_master_weights"] and not adapters else 0)
    optimizer = optimizer_bytes * training.trainable / divisor["optimizer_state"] * on_gpu["optimizer_state"]
    off = fast_path_off(backend, options)
    chunked = "chunked_loss" not in off  # the core turns off what the backend cannot run
    policy = "full" if "checkpointing_policy" in off else policy
    activations = activation_bytes(shape, training, tokens, checkpointing=checkpointing, policy=policy, chunked_loss=chunked, chunk=chunk, float32_module=core_masters)
    sharded = tuple(state.replace("_", " ") for state in layout["sharded"])
    return Estimate(backend.name, weights, gradients, optimizer, activations, sharded, accumulating=accumulation > 1)


# ---------------------------------------------------------------- the command


def _check(config) -> None:
    for key in ("nproc_per_node", "max_length", "per_device_batch_size", "gradient_accumulation_steps", "loss_chunk_size"):
        value = getattr(config, key)
        if value < 1:
            raise TuneforgeError(f"--{key.replace('_', '-')} is {value}; it must be at least 1.")
    if config.gpu_memory is not None and config.gpu_memory <= 0:
        raise TuneforgeError(f"--gpu-memory is {config.gpu_memory}; give the GiB of one GPU, above 0.")


def _gpu_memory(config) -> tuple[float, str]:
    """GiB per GPU and where the figure comes from."""
    if config.gpu_memory is not None:
        return float(config.gpu_memory), "--gpu-memory"
    from .modeling import pick_device

    device = pick_device(None)
    if device.torch_device != "cpu":
        try:
            import torch

            properties = getattr(torch, device.torch_device).get_device_properties(0)
            return properties.total_memory / GIB, f"the visible {device.name} device ({properties.name})"
        except (AttributeError, RuntimeError, AssertionError):
            pass
    return DEFAULT_GPU_GIB, f"no GPU visible, so an H100's; --gpu-memory to change"


def keeps_master_weights(backend, options=None) -> bool:
    """Whether ``backend`` keeps float32 copies of the trainable weights itself under bf16 mixed
    precision (its memory layout: FSDP2 through accelerate upcasts them, ZeRO keeps a master copy)."""
    layout = layout_of(backend, options)
    return layout["float32_weights"] or layout["float32_master_weights"]


def check_pure_bf16(config, backend) -> None:
    """Refuse ``--pure-bf16`` under a backend that keeps float32 trainable weights itself (``sft`` and ``plan`` alike)."""
    if getattr(config, "pure_bf16", False) and keeps_master_weights(backend, config):
        raise TuneforgeError(
            f"--pure-bf16 cannot apply under --parallel-backend {backend.name}, which keeps float32 trainable weights "
            f"itself; leave --pure-bf16 out, or use --parallel-backend single or ddp."
        )


def _backends(config, tuner) -> tuple[list, dict[str, str]]:
    """The backends to estimate, and why each other installed one is left out."""
    from .registry import get_registry

    registry = get_registry()
    n = config.nproc_per_node
    if config.parallel_backend:
        backend = registry.get("parallel_backends", config.parallel_backend)
        if tuner.quantizes_base and not backend.supports_quantized_base:
            able = [b.name for b in registry.all("parallel_backends") if b.supports_quantized_base]
            raise TuneforgeError(
                f"--train-type {tuner.name} trains on a quantized base, which --parallel-backend {backend.name} cannot hold; "
                f"use --parallel-backend {' or '.join(able) or 'with quantized-base support'}, or another --train-type such as lora."
            )
        if n > 1 and backend.launch_command(n) is None:
            raise TuneforgeError(f"--parallel-backend {backend.name} runs one process, not --nproc-per-node {n}; choose a backend that launches several (ddp, fsdp, ...) or --nproc-per-node 1.")
        if n < backend.min_processes:
            raise TuneforgeError(f"--parallel-backend {backend.name} needs at least {backend.min_processes} processes; pass --nproc-per-node {backend.min_processes} (or more), or another --parallel-backend.")
        check_pure_bf16(config, backend)
        return [backend], {}
    chosen, left_out = [], {}
    for backend in registry.all("parallel_backends"):  # in registration order: the first of equals is recommended
        if tuner.quantizes_base and not backend.supports_quantized_base:
            left_out[backend.name] = f"cannot hold the quantized base of --train-type {tuner.name}"
        elif n > 1 and backend.launch_command(n) is None:
            left_out[backend.name] = f"runs one process, not {n}"
        elif n < backend.min_processes:
            left_out[backend.name] = f"needs at least {backend.min_processes} processes"
        elif config.pure_bf16 and keeps_master_weights(backend):
            left_out[backend.name] = "keeps float32 trainable weights itself (--pure-bf16 applies to single and ddp)"
        else:
            chosen.append(backend)
    return chosen, left_out


def recommend(estimates: list[Estimate], gpu_gib: float) -> Estimate | None:
    """The backend to use: of those that fit with ``HEADROOM`` to spare, the one sharding least (the
    least communication), then the least memory; else the one needing least memory, if it fits at all."""
    limit = gpu_gib * GIB
    roomy = [e for e in estimates if e.total <= (1 - HEADROOM) * limit]
    if roomy:
        return min(roomy, key=lambda e: (len(e.sharded), e.total))  # min keeps the first of equals: registration order
    fitting = [e for e in estimates if e.total <= limit]
    return min(fitting, key=lambda e: e.total) if fitting else None


def _backend_flags(config, backend) -> list[str]:
    """The flags of the backend's own options that this invocation changed from their defaults."""
    if not config.parallel_backend or backend.options is None:
        return []
    flags, defaults = [], backend.options()
    for field in dataclasses.fields(backend.options):
        default = getattr(defaults, field.name)
        value = getattr(config, field.name, default)
        if value != default:
            name = "--" + field.name.replace("_", "-")
            flags.append(name if value is True else f"--no-{name[2:]}" if value is False else f"{name} {value}")
    return flags


def make_plan(config) -> dict:
    """Everything ``tuneforge plan`` prints, as a dictionary (the ``--json`` output)."""
    from .modeling import match_family
    from .registry import get_registry

    _check(config)
    registry = get_registry()
    tuner = registry.get("tuners", config.train_type)
    model_config = read_config(config.model)
    shape = shape_of(model_config)
    try:
        family = match_family(model_config)
    except TuneforgeError:
        family = None
    training = training_of(tuner, config, shape, family)
    backends, left_out = _backends(config, tuner)
    gpu_gib, gpu_source = _gpu_memory(config)
    tokens = config.per_device_batch_size * config.max_length
    checkpointing = config.gradient_checkpointing is not False
    estimates = [
        estimate(shape, training, backend, config.nproc_per_node, tokens, options=config if config.parallel_backend else None,
                 checkpointing=checkpointing, policy=config.checkpointing_policy, chunk=config.loss_chunk_size,
                 accumulation=config.gradient_accumulation_steps)
        for backend in backends
    ]
    rows = [e.as_dict(gpu_gib) for e in estimates]
    notes = {}  # what a backend estimates otherwise than asked, because it turns that part off
    for backend in backends:
        off = fast_path_off(backend, config if config.parallel_backend else None)
        if checkpointing and config.checkpointing_policy != "full" and "checkpointing_policy" in off:
            notes[backend.name] = f"estimated with full checkpointing, not {config.checkpointing_policy}: {off['checkpointing_policy']}"
    recommendation = None
    best = recommend(estimates, gpu_gib)
    if best is not None:
        chosen = backends[estimates.index(best)]
        backend_options = config if config.parallel_backend else None
        flags = [f"--model {config.model}", f"--train-type {tuner.name}"]
        if training.kind != WHOLE:
            flags.append(f"--lora-rank {training.rank} --lora-dropout {config.lora_dropout:g}")
            if list(config.target_modules):
                flags.append("--target-modules " + " ".join(config.target_modules))
        flags += [f"--max-length {config.max_length}", f"--per-device-batch-size {config.per_device_batch_size}"]
        if training.pure_bf16:
            flags.append("--pure-bf16")
        if config.gradient_accumulation_steps > 1:
            flags.append(f"--gradient-accumulation-steps {config.gradient_accumulation_steps}")
        if not checkpointing:
            flags.append("--no-gradient-checkpointing")
        elif config.checkpointing_policy != "full" and "checkpointing_policy" not in fast_path_off(chosen, backend_options):
            flags.append(f"--checkpointing-policy {config.checkpointing_policy}")
        flags += [f"--parallel-backend {best.backend}", f"--nproc-per-node {config.nproc_per_node}"]
        flags += _backend_flags(config, chosen)
        recommendation = {"backend": best.backend, "total_gib": round(best.total / GIB, 2), "command": "tuneforge sft " + " ".join(flags)}
    return {
        "model": config.model,
        "model_type": shape.model_type,
        "parameters": shape.parameters,
        "train_type": tuner.name,
        "trainable_parameters": training.trainable,
        "train_type_trains_whole": training.kind == WHOLE,
        "pure_bf16": training.pure_bf16,
        "lora_targets": list(training.targets),
        "nproc_per_node": config.nproc_per_node,
        "tokens_per_row": tokens,
        "gradient_checkpointing": config.checkpointing_policy if checkpointing else "off",
        "gpu_memory_gib": round(gpu_gib, 2),
        "gpu_memory_from": gpu_source,
        "overhead_gib": OVERHEAD_GIB,
        "backends": rows,
        "left_out": left_out,
        "notes": notes,
        "recommendation": recommendation,
    }


def format_plan(plan: dict) -> str:
    lines = [
        f"{plan['model']} ({plan['model_type']}): {plan['parameters']:,} parameters; --train-type {plan['train_type']}: "
        f"{plan['trainable_parameters']:,} train; {plan['tokens_per_row']:,} tokens a row per GPU, "
        f"gradient checkpointing {plan['gradient_checkpointing']}; {plan['nproc_per_node']} process(es).",
        f"GiB per GPU (total = weights + optimizer + the larger of gradients and activations (their sum with gradient accumulation) + {plan['overhead_gib']:g} GiB CUDA overhead), "
        f"against {plan['gpu_memory_gib']:g} GiB ({plan['gpu_memory_from']}):",
        "",
    ]
    header = ("backend", "weights", "gradients", "optimizer", "activations", "total", "fits")
    table = [header] + [
        (r["backend"], *(f"{r[k]:.2f}" for k in ("weights_gib", "gradients_gib", "optimizer_gib", "activations_gib", "total_gib")), "yes" if r["fits"] else "no")
        for r in plan["backends"]
    ]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    for row in table:
        lines.append("  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths))))
    for name, why in plan["left_out"].items():
        lines.append(f"({name}: left out, {why})")
    for name, note in plan["notes"].items():
        lines.append(f"({name}: {note})")
    lines.append("")
    recommendation = plan["recommendation"]
    if recommendation:
        lines.append(f"Recommended: {recommendation['backend']} ({recommendation['total_gib']:.2f} GiB per GPU): {recommendation['command']}")
    else:
        smallest = min(plan["backends"], key=lambda r: r["total_gib"])
        lines.append(
            f"No backend fits in {plan['gpu_memory_gib']:g} GiB per GPU (the smallest, {smallest['backend']}, needs "
            f"{smallest['total_gib']:.2f}): use more GPUs (--nproc-per-node), a lighter --train-type (lora, qlora), "
            f"a shorter --max-length, "
            + ("--pure-bf16 (bf16 trained weights: half their memory, but updates below bf16's resolution are lost), "
               if plan["train_type_trains_whole"] and not plan["pure_bf16"] else "")
            + "or GPUs with more memory."
        )
    return "\n".join(lines)


def run_plan(config) -> dict:
    plan = make_plan(config)
    print(json.dumps(plan, indent=2) if config.as_json else format_plan(plan))
    return plan
