"""What every training method does before its trainer: checks, launch, model, tuner.

The order matters: every check that needs no weights (names, options, output
dir, data) runs before the model is loaded, so a mistake costs seconds.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tuneforge import modeling, parts, plan
from tuneforge.modeling import apply_device_environment  # noqa: F401  (also imported from here by the bench and the conformance kit)
from tuneforge.errors import TuneforgeError
from tuneforge.registry import get_registry

from . import launch, output, sequence_parallel
from .checkpointing import checkpoint_kwargs


def main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def log(message: str) -> None:
    if main_process():
        print(f"[tuneforge] {message}", file=sys.stderr, flush=True)


@dataclass
class Setup:
    """The checked, resolved pieces of a run, before the model is loaded."""

    config: Any
    method: str
    bundle: modeling.ModelBundle | None  # None only where no model spec is trained (the benchmark's random weights)
    device: Any
    dtype: Any
    tuner: Any
    backend: Any
    output_dir: Path
    resume_from: Path | None
    run_id: str | None = None  # set by ``start_run``; every checkpoint of the run carries it
    fast_path_off: dict = dataclasses.field(default_factory=dict)  # option -> why the backend turned it off

    @property
    def dtype_name(self) -> str:
        return str(self.dtype).removeprefix("torch.")

    @property
    def resolved(self) -> modeling.ResolvedModel:
        return getattr(self.bundle, "resolved", None)

    @property
    def family(self):
        return getattr(self.bundle, "family", None)

    @property
    def template_name(self) -> str:
        return getattr(self.bundle, "template_name", None)

    @property
    def tokenizer(self):
        return getattr(self.bundle, "tokenizer", None)

    @property
    def template(self):
        return getattr(self.bundle, "template", None)

    @property
    def base_adapters(self) -> list[str]:
        """The adapter runs merged into the base before this run's tuner (empty from plain weights)."""
        return list(self.bundle.adapters) if self.bundle else []


def _check_numbers(config) -> None:
    positive = {
        "per_device_batch_size": config.per_device_batch_size,
        "gradient_accumulation_steps": config.gradient_accumulation_steps,
        "max_length": config.max_length,
        "save_steps": config.save_steps,
        "logging_steps": config.logging_steps,
        "nproc_per_node": config.nproc_per_node,
        "nnodes": config.nnodes,
        "loss_chunk_size": getattr(config, "loss_chunk_size", 1),  # the CUDA device's option
        "sequence_parallel_size": config.sequence_parallel_size,
    }
    for key, value in positive.items():
        if value < 1:
            raise TuneforgeError(f"--{key.replace('_', '-')} is {value}; it must be at least 1.")
    if config.learning_rate <= 0:
        raise TuneforgeError(f"--learning-rate is {config.learning_rate}; it must be above 0.")
    if not 0 <= config.val_split_ratio < 1:
        raise TuneforgeError(f"--val-split-ratio is {config.val_split_ratio}; it must be in [0, 1).")
    if not 0 <= config.warmup_ratio < 1:
        raise TuneforgeError(f"--warmup-ratio is {config.warmup_ratio}; it must be in [0, 1).")
    if config.max_steps == 0 or config.max_steps < -1:
        raise TuneforgeError(f"--max-steps is {config.max_steps}; give a positive number, or -1 to use --num-train-epochs.")


def relaunch(config, method: str, backend, launched: launch.Launch | None = None) -> bool:
    """Start this node's processes through the backend's launcher (torchrun); True if it did.

    ``launched`` is what ``launch.resolve`` decided (resolved here when not given):
    nothing is started under an external launcher, or for a run of one process.
    """
    launched = launched or launch.resolve(config, backend)
    if launched.command is None:
        return False
    import yaml

    config = launched.config  # with the node layout SLURM gave, so every process checks the same one
    values = dataclasses.asdict(config)
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False, prefix="tuneforge-") as handle:
        yaml.safe_dump(values, handle)
    count = config.nproc_per_node
    log(f"launching {count} process{'es' if count != 1 else ''} with the '{backend.name}' backend ({launched.world.describe()})")
    # `rlhf --method` runs any installed method from its options, the built-in ones included.
    result = subprocess.run([*launched.command, "-m", "tuneforge.cli", "rlhf", "--method", method, handle.name])
    os.unlink(handle.name)
    if result.returncode != 0:
        raise TuneforgeError(f"The {launched.world.processes}-process run failed (exit code {result.returncode}); see the log above.")
    return True


def _shards(name: str) -> bool | None:
    """Whether the installed parallel backend ``name`` shards the model (None: not installed)."""
    found = [b for b in get_registry().all("parallel_backends") if b.name == name]
    return found[0].shards_parameters if found else None


def prepare(config, method: str) -> Setup | None:
    """Check everything and resolve names; None when the run went to a launcher."""
    registry = get_registry()
    _check_numbers(config)
    tuner = registry.get("tuners", config.train_type)
    backend = registry.get("parallel_backends", config.parallel_backend)
    # First: under SLURM this sets RANK and the rest, which decide who logs and writes.
    launched = launch.resolve(config, backend)
    config = launched.config
    if launched.command is None and launched.world.processes > 1:
        log(launched.world.describe())
    training_method = registry.get("training_methods", method)
    if tuner.quantizes_base and not backend.supports_quantized_base:
        able = [b.name for b in registry.all("parallel_backends") if b.supports_quantized_base]
        raise TuneforgeError(
            f"--train-type {tuner.name} trains on a quantized base, which --parallel-backend {backend.name} cannot hold; "
            f"use --parallel-backend {' or '.join(able) or 'with quantized-base support'}, or another --train-type such as lora."
        )
    if config.packing and not training_method.supports_packing:
        raise TuneforgeError(f"--packing is not supported by --method {method}, which does not pack samples; leave it out.")
    device = modeling.pick_device(config.device)
    if config.dataset_format:
        registry.get("dataset_formats", config.dataset_format)
    if config.output_dir is None:
        config = dataclasses.replace(config, output_dir=output.default_output_dir(config.model, method))
    if tuner.check is not None:
        tuner.check(config, device)  # raises now if this tuner cannot run here
    if backend.check is not None:
        backend.check(config, device)  # and the backend, before it launches anything
    plan.check_pure_bf16(config, backend)
    check_fast_path(config, backend)
    if launched.world.processes < backend.min_processes:
        raise TuneforgeError(
            f"--parallel-backend {backend.name} needs at least {backend.min_processes} processes and this run has "
            f"{launched.world.processes}; pass --nproc-per-node {backend.min_processes} (or more), or use --parallel-backend single."
        )
    # A checkpoint that needs its own code is refused before the output dir is touched.
    resolved = modeling.resolve_model(config.model)
    modeling.check_remote_code(resolved, config.trust_remote_code)
    if config.sequence_parallel_size > 1:  # before the launch: each process would refuse it alike
        hf_config = modeling.load_hf_config(resolved.base_path, trust_remote_code=config.trust_remote_code)
        sequence_parallel.check(config, training_method, backend, hf_config=hf_config, processes=launched.world.processes)
    resume_from = output.check_output_dir(
        config.output_dir,
        resume=config.resume,
        overwrite=config.overwrite_output_dir,
        inputs=(config.model, *config.dataset, *config.val_dataset),
    )
    if config.resume and resume_from is None:
        log(f"no checkpoint in {config.output_dir}; starting from the beginning")
    if resume_from is not None:
        output.check_resume_layout(resume_from, config, backend, launched.world.processes, _shards)
    if relaunch(config, method, backend, launched):
        return None

    bundle = modeling.resolve_bundle(
        config.model,
        template=config.template,
        model_family=config.model_family,
        trust_remote_code=config.trust_remote_code,
        allow_template_drift=config.allow_template_drift,
        family_options=modeling.family_option_values(config),
    )
    family = bundle.family
    parts.check(config, family)  # a --freeze-* or --target-parts that cannot apply, before any weights load
    sequence_parallel.check(config, training_method, backend, family, bundle.hf_config, processes=launched.world.processes)
    dtype = modeling.resolve_dtype(config.torch_dtype, device, family)
    config = resolve_fast_path(config, device, family, backend, training_method, bundle.template)
    turned_off = fast_path_off(config, backend)
    if turned_off:
        log(f"the '{backend.name}' backend turns off " + "; ".join(f"{_part(config, name)}: {why}" for name, why in turned_off.items()))
    prepare_device(device)
    if hasattr(config, "target_modules") and not [m for m in config.target_modules if ":" not in m]:  # the LoRA tuners' option
        # The family's modules, beside the PART:NAME entries that choose them in another part.
        config = dataclasses.replace(config, target_modules=[*family.lora_target_modules, *config.target_modules])
    return Setup(
        config=config,
        method=method,
        bundle=bundle,
        device=device,
        dtype=dtype,
        tuner=tuner,
        backend=backend,
        output_dir=Path(config.output_dir),
        resume_from=resume_from,
        fast_path_off=turned_off,
    )


def prepare_device(device, *, runtime_settings: bool = True) -> None:
    """Ready ``device`` for training in this process: its environment variables, then its runtime's settings.

    ``runtime_settings=False`` leaves out the latter (``prepare_training``): a benchmark of what they cost.
    """
    apply_device_environment(device)
    if runtime_settings and device.prepare_training is not None:
        device.prepare_training()


def start_run(setup: Setup, summary) -> None:
    """Claim the output dir for this run: after every check, before the weights load.

    A resumed run keeps its id and must have the data it started with. Any other run
    gets a new id and first deletes whatever an earlier run left in the directory
    (``check_output_dir`` allowed it: an overwrite, or a run that never reached a
    checkpoint), so no checkpoint of the old run can be rotated in, resumed or
    published under the new run's record.
    """
    config = setup.config
    if setup.resume_from:
        started = output.read_started(config.output_dir) or {}
        if started and started.get("data_fingerprint") != summary.fingerprint:
            raise TuneforgeError(
                f"The data differs from the data of the run being resumed in '{config.output_dir}' "
                f"(fingerprint {summary.fingerprint[:12]} vs {str(started.get('data_fingerprint', '?'))[:12]}); "
                f"resume with the same --dataset options or start a new --output-dir."
            )
        # The start record stays as the run started; None for a run from before runs had ids (its checkpoints have none).
        setup.run_id = started.get("run_id")
        return
    setup.run_id = output.new_run_id()
    if main_process():
        output.clear_run(setup.output_dir)
        setup.output_dir.mkdir(parents=True, exist_ok=True)
        output.write_json_atomic(
            setup.output_dir / output.STARTED_RECORD,
            {"run_id": setup.run_id, "method": setup.method, "data_fingerprint": summary.fingerprint, "config": dataclasses.asdict(config)},
        )


def apply_seed(config) -> None:
    """Seed every generator before the tuner draws its initial weights (the Trainer seeds only later).

    With the same ``--seed`` two runs start from the same adapter, so they end with the
    same weights on the same machine, and a resumed run can be compared with one that
    was never interrupted.
    """
    from transformers import set_seed

    set_seed(config.seed)


def _option_default(config, name: str):
    from tuneforge.options import default_of

    return next(default_of(f) for f in dataclasses.fields(config) if f.name == name)


def _part(config, name: str) -> str:
    """How the log names a fast-path option a backend turns off: ``--chunked-loss``, ``--checkpointing-policy (kept at full)``."""
    flag = "--" + name.replace("_", "-")
    default = _option_default(config, name)
    return flag if default is None or isinstance(default, bool) else f"{flag} (kept at {default})"


def fast_path_off(config, backend) -> dict[str, str]:
    """The fast-path options of ``config`` that ``backend`` turns off, each with why (``ParallelBackend.fast_path_off``)."""
    if backend is None:
        return {}
    return {name: why for name, why in backend.fast_path_turned_off(config).items() if hasattr(config, name)}


def check_fast_path(config, backend) -> None:
    """Refuse, before anything launches, a fast-path option the user asked for that the backend turns off."""
    for name, why in fast_path_off(config, backend).items():
        value, default = getattr(config, name), _option_default(config, name)
        if value is True or (value is not None and not isinstance(value, bool) and value != default):
            flag = "--" + name.replace("_", "-")
            asked = flag if value is True else f"{flag} {value}"
            raise TuneforgeError(f"{asked} cannot run under --parallel-backend {backend.name}: {why}; leave {flag} out.")


def resolve_fast_path(config, device, family=None, backend=None, method=None, template=None):
    """Fill in the defaults the device declares (``Device.fast_path``): packing, varlen attention,
    the chunked loss, the fused kernels and gradient checkpointing.

    Each stays as the user set it; only the unset (None) ones are decided here. Packing
    (and so the varlen attention that needs packed rows) defaults on only for a
    training method that packs (``TrainingMethod.supports_packing``) and, for a family
    that loads a processor (whose image rows carry extras), only where its template
    says those extras pack (``Template.packs_extras``). Last, what the parallel backend
    turns off (``ParallelBackend.fast_path_off``) is off: a switch becomes false, another
    option its default (``check_fast_path`` has refused those the user asked for).
    """
    from . import attention

    given = sequence_parallel.resolve_defaults(config)  # packed rows and varlen attention where it cuts rows
    if given:
        config = dataclasses.replace(config, **given)
    defaults = device.fast_path
    changes: dict = {}
    if config.gradient_checkpointing is None:
        changes["gradient_checkpointing"] = defaults.gradient_checkpointing
    if config.packing is None:
        # A family that loads a processor (a vision-language one) gives samples extras (pixel
        # values) that pack only where its template says so (packs_extras).
        multimodal = getattr(family, "load_processor", None) is not None
        extras_pack = not multimodal or bool(getattr(template, "packs_extras", False))
        changes["packing"] = defaults.packing and getattr(method, "supports_packing", True) and extras_pack
    packing = changes.get("packing", config.packing)
    if (
        config.attn_implementation is None
        and packing
        and defaults.varlen_attention
        and getattr(family, "attn_implementation", None) is None
        and (attention.available() or device_kernels(device).varlen_attention is not None)
    ):
        changes["attn_implementation"] = attention.VARLEN
    # These switches are the options of the records that offer them (the LoRA tuners, the
    # CUDA device); a config without one (another tuner or device selected) leaves it off.
    for name in ("fused_lora", "fused_norm", "fused_swiglu", "fused_rope"):
        if hasattr(config, name) and getattr(config, name) is None:
            changes[name] = defaults.fused_kernels
    if getattr(config, "chunked_loss", False) is None:
        changes["chunked_loss"] = defaults.chunked_loss
    for name in fast_path_off(config, backend):
        value = changes.get(name, getattr(config, name))
        changes[name] = False if value is None or isinstance(value, bool) else _option_default(config, name)
    return dataclasses.replace(config, **changes) if changes else config


def model_load_kwargs(setup: Setup) -> dict:
    """The tuner's model-loading arguments, and for a quantized base, where the parallel backend places it."""
    config, device = setup.config, setup.device
    extra = setup.backend.load_kwargs(config, device) if setup.tuner.quantizes_base else {}
    if setup.tuner.load_kwargs is not None:
        extra.update(setup.tuner.load_kwargs(config, device))
    return extra


def load_trainable_model(setup: Setup):
    """Load the base weights (an earlier run's adapter merged in) and wrap them with the tuner."""
    config = setup.config
    extra = model_load_kwargs(setup)
    log(f"loading {setup.resolved.base_path} ({setup.family.name} family, {setup.dtype_name})")
    register_attention(config, setup.device)
    model = modeling.load_model(
        setup.resolved.base_path,
        setup.family,
        dtype=setup.dtype,
        attn_implementation=config.attn_implementation,
        trust_remote_code=config.trust_remote_code,
        options=setup.bundle.family_options,
        **extra,
    )
    if setup.base_adapters:
        # Continuing from an adapter run: fold it (and what it built on) into the base, then tune on top.
        model = modeling.merge_adapters(model, setup.base_adapters)
    return wrap_for_training(setup, model)


def device_kernels(device):
    """The device's own fused operators (``Device.kernels``); none when it brings none."""
    from tuneforge.records import DeviceKernels

    if device is None or device.kernels is None:
        return DeviceKernels()
    return device.kernels()


def register_attention(config, device=None) -> None:
    """Make the core's own attention kernels known to transformers when the options name one
    (computed by ``device``'s own varlen operator where it brings one)."""
    from . import attention

    if config.attn_implementation == attention.VARLEN:
        attention.register(device_kernels(device).varlen_attention)


def wrap_for_training(setup: Setup, model):
    """Prepare loaded weights for training: no KV cache, then the tuner."""
    config = setup.config
    model.config.use_cache = False
    apply_seed(config)
    model = setup.tuner.prepare(model, config)
    return finish_wrapping(setup, model, f"'{setup.tuner.name}'")


def finish_wrapping(setup: Setup, model, tuner_label: str):
    """What every wrapped model gets before training, however its adapter came to be
    (a fresh tuner, or an earlier run's adapter continued): gradient checkpointing's
    input hook on the language model's embeddings only (``checkpointing.language_input_grads``),
    the bf16 input-cast fix and the fused kernels the options ask for (the tuner's own
    ``fuse`` for the adapter layers); logs what was fused, what trains, and which attention
    a vision tower uses."""
    config = setup.config
    from .checkpointing import language_input_grads

    # Checkpointing's input hook on the language model alone: a frozen vision tower runs no backward pass.
    language_input_grads(model)
    if mixed_precision(setup) and not getattr(config, "pure_bf16", False):
        # A backend that keeps float32 weights itself upcasts them when it wraps the model;
        # the names are kept either way, so the published model is written in the run's dtype.
        upcast = float32_master_weights(model, setup.dtype, upcast=not plan.keeps_master_weights(setup.backend, config))
        if upcast:
            log(f"float32 master weights: {upcast:,} trained parameters kept in float32 under bf16 autocast "
                f"(--pure-bf16 trains them in bf16: half the memory, but small updates are rounded away)")
    if mixed_precision(setup):
        # The trainer runs the model under bf16 autocast, so adapter products run in bf16
        # whatever their inputs; without this, peft first copies every adapter's input to
        # the float32 of its weights, and keeps each copy for the backward pass.
        for module in model.modules():
            if getattr(module, "cast_input_dtype_enabled", False):
                module.cast_input_dtype_enabled = False
    fused = {}
    if getattr(config, "fused_lora", None) and setup.tuner.fuse is not None:
        # The tuner owns its fusion (the built-in lora and qlora: tuneforge.training.fused_lora).
        fused["LoRA layers"] = setup.tuner.fuse(model)
    # The device's own operators where it brings them (Device.kernels), else the core's compiled formulas.
    kernels = device_kernels(setup.device) if any(
        getattr(config, name, None) for name in ("fused_norm", "fused_swiglu", "fused_rope")) else None
    if getattr(config, "fused_norm", None):
        from . import fused_norm

        fused["norms"] = fused_norm.enable(model, function=kernels.rms_norm)
    if getattr(config, "fused_swiglu", None) or getattr(config, "fused_rope", None):
        from . import fused_layers

        if getattr(config, "fused_swiglu", None):
            fused["SwiGLU MLPs"] = fused_layers.enable_swiglu(model, function=kernels.swiglu)
        if getattr(config, "fused_rope", None):
            fused["rotary embeddings"] = fused_layers.enable_rotary(model, function=kernels.rotary)
    if fused:
        log("fused: " + ", ".join(f"{count} {what}" for what, count in fused.items()))
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    log(f"tuner {tuner_label}: {trainable:,} trainable of {total:,} parameters ({100 * trainable / total:.2f}%)")
    vision = vision_attention(model)
    if vision is not None:
        log(f"vision tower attention: {vision}")
    return model


MASTER_NAMES = "tuneforge_float32_masters"


def float32_master_weights(model, dtype, *, upcast: bool = True) -> int:
    """Put each trainable weight held in ``dtype`` (bf16) in float32; autocast computes in bf16 from them.

    AdamW's update of a bf16 weight is rounded to bf16's resolution, about 1/256 of the
    weight: at a learning rate of 1e-5, a weight above about 0.003 does not move at all.
    Trained in float32 (16 bytes a parameter with AdamW's two moments, instead of 8), every
    update lands. The names of the weights changed (tied names included) are kept on the
    model, so the final save writes them back in ``dtype`` (``TuneforgeTrainer._save``).
    Returns how many parameters were changed; adapters peft already keeps in float32 are
    left as they are. Without ``upcast``, only the names are kept (for a backend that
    upcasts the weights itself when it wraps the model) and 0 is returned.
    """
    import torch

    changed, names = 0, []
    seen = set()
    for name, parameter in model.named_parameters(remove_duplicate=False):
        if id(parameter) not in seen:  # a tied weight comes once per name
            if not parameter.requires_grad or parameter.dtype != dtype:
                continue
            seen.add(id(parameter))
            if upcast:
                parameter.data = parameter.data.to(torch.float32)
                changed += parameter.numel()
        names.append(name)
    if names:
        setattr(model, MASTER_NAMES, (frozenset(names), dtype))
    return changed


def vision_attention(model) -> str | None:
    """The attention implementation of the vision tower of ``model`` (None: it has no ``vision_config``)."""
    vision_config = getattr(getattr(model, "config", None), "vision_config", None)
    if vision_config is None:
        return None
    return getattr(vision_config, "_attn_implementation", None) or "sdpa"


def mixed_precision(setup: Setup) -> bool:
    """Whether the trainer runs in bf16 mixed precision (autocast)."""
    return str(setup.dtype) == "torch.bfloat16" and setup.device.supports_bf16()


def training_arguments(setup: Setup, *, has_eval: bool, args_class=None, **overrides):
    """TrainingArguments derived from the options, the device and the backend.

    ``args_class`` is a ``TrainingArguments`` subclass to build instead (a training
    method's trainer may need its own, with extra fields given in ``overrides``).
    """
    from transformers import TrainingArguments

    args_class = args_class or TrainingArguments

    config = setup.config
    bf16 = mixed_precision(setup)
    kwargs = dict(
        output_dir=str(setup.output_dir),
        per_device_train_batch_size=config.per_device_batch_size,
        per_device_eval_batch_size=config.per_device_batch_size,
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        learning_rate=config.learning_rate,
        num_train_epochs=config.num_train_epochs,
        max_steps=config.max_steps,
        lr_scheduler_type=config.lr_scheduler,
        warmup_steps=config.warmup_ratio,
        weight_decay=config.weight_decay,
        max_grad_norm=config.max_grad_norm,
        logging_steps=config.logging_steps,
        logging_first_step=True,
        save_strategy="steps",
        save_steps=config.save_steps,
        save_total_limit=config.save_total_limit,
        eval_strategy="steps" if (has_eval and config.eval_steps) else "no",
        eval_steps=config.eval_steps,
        bf16=bf16,
        gradient_checkpointing=bool(config.gradient_checkpointing),
        gradient_checkpointing_kwargs=checkpoint_kwargs(config.checkpointing_policy),
        seed=config.seed,
        data_seed=config.seed,
        report_to=[] if config.report_to == "none" else [config.report_to],
        remove_unused_columns=False,
        label_names=["labels"],
        # transformers' own switch for torch's CPU device type, which the record declares.
        use_cpu=setup.device.torch_device == "cpu",
        disable_tqdm=False,
        dataloader_num_workers=0,
        save_only_model=False,
    )
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        # The process group's backend; given only to a run that spans processes (transformers
        # takes any ddp_backend as a request for one).
        kwargs["ddp_backend"] = setup.device.distributed_backend
    kwargs.update(setup.backend.training_args(config))
    kwargs.update(overrides)
    known = {f.name for f in dataclasses.fields(args_class)}
    for old, new in (("gradient_checkpointing", "activation_checkpointing"),
                     ("gradient_checkpointing_kwargs", "activation_checkpointing_kwargs")):
        if new in known and old in kwargs:  # newer transformers renamed these
            kwargs[new] = kwargs.pop(old)
    return args_class(**kwargs)
