"""Built-in tuners (an internal plugin): lora, dora, qlora (peft), full, freeze."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Optional

from tuneforge import hookimpl, parts
from tuneforge.errors import TuneforgeError
from tuneforge.options import option
from tuneforge.parts import PartOptions
from tuneforge.records import Tuner


@dataclass
class LoraOptions(PartOptions):
    """The options of the LoRA family (lora, dora, qlora): ``--train-type lora --help`` lists them."""

    lora_rank: int = option(8, "LoRA rank r.", group="tuner")
    lora_alpha: int = option(16, "LoRA alpha.", group="tuner")
    lora_dropout: float = option(0.05, "LoRA dropout.", group="tuner")
    target_modules: list[str] = option([], "Modules LoRA adapts ('all-linear' or names); default: the model family's. PART:NAME chooses them in one part of a model whose family names its parts (vision_tower:all-linear, aligner:proj); a part named by no PART:NAME takes every linear layer in it (the language model: the plain names).", group="tuner")
    target_parts: list[str] = option([], "Named parts LoRA adapts (language_model, vision_tower, aligner) of a model whose family names its parts; default: language_model unless --freeze-language-model. Other parts left unfrozen train whole.", group="tuner")
    fused_lora: Optional[bool] = option(None, "Run each plain LoRA layer as one fused product (adapter output and input gradient accumulate into the base's); default: on for CUDA, off elsewhere.", group="tuner")


@dataclass
class FreezeOptions:
    """The options of the freeze tuner."""

    trainable_modules: list[str] = option([], "Regular expressions of parameter names to train.", group="tuner")
    trainable_parts: list[str] = option([], "Deprecated (use --train-type full with --freeze-language-model, --freeze-vision-tower, --freeze-aligner): named parts to train whole of a model whose family names its parts.", group="tuner")


def _family_of(model, config):
    """The model family of loaded weights (None: weights of no registered family, a benchmark's)."""
    from tuneforge.modeling import match_family

    try:
        return match_family(model.config, getattr(config, "model_family", None))
    except TuneforgeError:
        return None


def _plan(model, config):
    family = _family_of(model, config)
    return parts.plan(config, family.parts if family else None, family.name if family else "of these weights")


def _lora_config(config, use_dora: bool = False, model=None):
    from peft import LoraConfig

    targets = [entry for entry in config.target_modules if ":" not in entry] or ["all-linear"]
    target_modules = "all-linear" if targets == ["all-linear"] else targets
    modules_to_save = None
    if model is not None:
        part_plan = _plan(model, config)
        if part_plan is not None:
            family = _family_of(model, config)
            target_modules = parts.lora_targets(model, config, part_plan, family.lora_target_modules)
            modules_to_save = [part_plan.prefixes[part] for part in part_plan.whole] or None
    return LoraConfig(
        r=config.lora_rank,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        target_modules=target_modules,
        modules_to_save=modules_to_save,
        task_type="CAUSAL_LM",
        use_dora=use_dora,
    )


def _apply_lora(model, config, use_dora: bool = False):
    from peft import get_peft_model

    try:
        wrapped = get_peft_model(model, _lora_config(config, use_dora, model))
    except ValueError as exc:
        if "Target modules" in str(exc) or "not found" in str(exc):
            raise TuneforgeError(
                f"LoRA target modules {list(config.target_modules)} are not in this model ({exc}); "
                f"pass --target-modules with names from the model, or 'all-linear'."
            ) from None
        raise
    part_plan = _plan(model, config)
    if part_plan is not None:
        parts.freeze_frozen(wrapped, part_plan)
    return wrapped


def _load_adapter(model, path: str):
    from peft import PeftModel

    return PeftModel.from_pretrained(model, path)


def _merge(model):
    return model.merge_and_unload()


def _fuse_lora(model) -> int:
    """Each plain LoRA layer (full-precision or 4-bit base) as one fused product; DoRA layers stay peft's."""
    from tuneforge.training import fused_lora

    return fused_lora.enable(model)


def _prepare_qlora(model, config):
    """peft's k-bit preparation, without its float32 copies of the vocabulary-sized layers.

    ``prepare_model_for_kbit_training`` upcasts every unquantized weight to float32,
    the embedding and output layers too: two frozen matrices of 1 GiB each in bf16 on
    a 7B model, which it doubles in place and keeps doubled (the memory peak of a
    QLoRA run). Only the small one-dimensional weights (norms, biases) gain from
    float32; the large frozen ones stay as loaded.
    """
    import torch

    for parameter in model.parameters():
        parameter.requires_grad_(False)
        if parameter.dim() == 1 and parameter.dtype in (torch.float16, torch.bfloat16) and type(parameter).__name__ != "Params4bit":
            parameter.data = parameter.data.float()
    if config.gradient_checkpointing:
        model.enable_input_require_grads()
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return _apply_lora(model, config)


def _check_qlora(config, device) -> None:
    check_lora_options(config)
    if device.torch_device != "cuda":
        raise TuneforgeError(
            f"--train-type qlora needs a CUDA GPU (bitsandbytes 4-bit), but the device is '{device.name}'; "
            f"use --train-type lora on this machine."
        )
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        raise TuneforgeError(
            "--train-type qlora needs the bitsandbytes package, which is not installed; run `pip install bitsandbytes`."
        ) from None


def _qlora_load_kwargs(config, device) -> dict:
    """4-bit NF4 base weights (the parallel backend places them on this process's GPU)."""
    import torch
    from transformers import BitsAndBytesConfig

    return {
        "quantization_config": BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.bfloat16 if device.supports_bf16() else torch.float16,
        ),
    }


def _prepare_full(model, config):
    part_plan = _plan(model, config)
    for name, parameter in model.named_parameters():
        parameter.requires_grad_(part_plan is None or not part_plan.frozen[part_plan.owner(name)])
    return model


def _freeze_patterns(config) -> list[re.Pattern]:
    patterns = list(config.trainable_modules)
    if not patterns and not config.trainable_parts:
        raise TuneforgeError(
            "--train-type freeze needs --trainable-modules (regular expressions of parameter names to train), "
            "for example --trainable-modules 'layers\\.(10|11)\\.' --trainable-modules lm_head."
        )
    try:
        return [re.compile(p) for p in patterns]
    except re.error as exc:
        raise TuneforgeError(f"--trainable-modules pattern is not a valid regular expression ({exc}).") from None


def _prepare_freeze(model, config):
    compiled = _freeze_patterns(config)
    family = _family_of(model, config)
    prefixes = parts.check_trainable_parts(config, family.parts if family else None, warn=False) if config.trainable_parts else {}
    compiled += [re.compile(rf"^{re.escape(prefix)}\.") for prefix in prefixes.values()]
    patterns = list(config.trainable_modules) + [f"part {name}" for name in config.trainable_parts]
    trained = 0
    for name, parameter in model.named_parameters():
        train = any(c.search(name) for c in compiled)
        parameter.requires_grad_(train)
        trained += int(train)
    if trained == 0:
        sample = ", ".join(name for name, _ in list(model.named_parameters())[:4])
        raise TuneforgeError(
            f"--trainable-modules {patterns} matched no parameter; parameter names look like: {sample}."
        )
    return model


def check_lora_options(config) -> None:
    if config.lora_rank < 1:
        raise TuneforgeError(f"--lora-rank is {config.lora_rank}; it must be at least 1.")
    if not 0 <= config.lora_dropout < 1:
        raise TuneforgeError(f"--lora-dropout is {config.lora_dropout}; it must be in [0, 1).")


def _adapter_tuner(name: str, description: str, use_dora: bool) -> Tuner:
    return Tuner(
        name=name,
        description=description,
        prepare=lambda model, config: _apply_lora(model, config, use_dora=use_dora),
        saves_adapter=True,
        load=_load_adapter,
        merge=_merge,
        check=lambda config, device: check_lora_options(config),
        # The fused product has no weight-decomposition term: DoRA layers run as peft runs them.
        fuse=None if use_dora else _fuse_lora,
        options=LoraOptions,
    )


@hookimpl
def tuneforge_tuners():
    yield _adapter_tuner("lora", "Low-rank adapters (peft); saves only the adapter", use_dora=False)
    yield _adapter_tuner("dora", "Weight-decomposed low-rank adapters (peft use_dora)", use_dora=True)
    yield Tuner(
        name="qlora",
        description="LoRA on a 4-bit NF4 base (bitsandbytes, CUDA only)",
        prepare=_prepare_qlora,
        saves_adapter=True,
        load=_load_adapter,
        merge=_merge,
        check=_check_qlora,
        load_kwargs=_qlora_load_kwargs,
        quantizes_base=True,
        fuse=_fuse_lora,
        options=LoraOptions,
    )
    yield Tuner(
        name="full",
        description="Train every weight (of the parts not frozen); saves the whole model",
        prepare=_prepare_full,
        options=PartOptions,
    )
    yield Tuner(
        name="freeze",
        description="Train only the parameters matching --trainable-modules; saves the whole model",
        prepare=_prepare_freeze,
        check=lambda config, device: _freeze_patterns(config) and None,
        options=FreezeOptions,
    )
