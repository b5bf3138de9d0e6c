"""One run of any training method: the order every method shares, owned by the core.

``run_training(config, method)``: the method's option checks; resolve and check
everything that needs no weights (``setup.prepare``: names, output dir, the model
bundle); lock the output dir (``output.claimed``: one live run in a directory);
prepare the data; claim the output dir (a resumed run must have the data it
started with); load the policy, fresh or continuing an adapter run; the
reference model, if the method has one; build the trainer; train; write the
output dir. A ``TrainingMethod`` supplies only what differs (see its docstring),
as callables handed a ``RunContext``.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any

from tuneforge import modeling
from tuneforge.errors import TuneforgeError

from . import output
from .setup import (
    Setup,
    apply_seed,
    finish_wrapping,
    load_trainable_model,
    log,
    main_process,
    model_load_kwargs,
    prepare,
    register_attention,
    start_run,
    training_arguments,
)


@dataclass
class RunContext:
    """What a training method's callables are handed: the checked run, and what it has built so far.

    ``setup``: the resolved pieces (options, model bundle, device, dtype, tuner,
    backend, output dir); ``continuing``: the policy continues the adapter of
    ``--model`` rather than starting a new one; ``train_dataset``/``eval_dataset``/
    ``summary``: the method's prepared data; ``state``: anything a method keeps
    between its callables (such as a resolved reference model).
    """

    setup: Setup
    method: Any  # the TrainingMethod record
    continuing: bool = False
    train_dataset: Any = None
    eval_dataset: Any = None
    summary: Any = None
    state: dict[str, Any] = field(default_factory=dict)

    @property
    def config(self):
        return self.setup.config

    @property
    def bundle(self) -> modeling.ModelBundle:
        return self.setup.bundle

    @property
    def tokenizer(self):
        return self.setup.tokenizer

    @property
    def template(self):
        return self.setup.template

    @property
    def run_id(self) -> str | None:
        return self.setup.run_id

    @property
    def resume_from(self):
        return self.setup.resume_from

    def log(self, message: str) -> None:
        log(message)

    def training_arguments(self, *, has_eval: bool, args_class=None, **overrides):
        """``TrainingArguments`` (or ``args_class``) from the options, the device and the backend."""
        return training_arguments(self.setup, has_eval=has_eval, args_class=args_class, **overrides)

    def resolve_reference(self, spec: str) -> modeling.ModelBundle:
        """The bundle of a reference model spec, checked to share the policy's vocabulary (no weights load)."""
        config = self.config
        # Only the reference's weights are used (the policy's template encodes the data): its template is not checked.
        reference = modeling.resolve_bundle(spec, trust_remote_code=config.trust_remote_code, check_template=False)
        ref_vocab = getattr(reference.hf_config, "vocab_size", None)
        policy_vocab = getattr(self.bundle.hf_config, "vocab_size", None)
        if ref_vocab != policy_vocab:
            raise TuneforgeError(
                f"--ref-model '{spec}' has a vocabulary of {ref_vocab} tokens but --model has {policy_vocab}; "
                f"the reference must use the same tokenizer as the model being trained."
            )
        return reference

    def load_frozen(self, bundle: modeling.ModelBundle | None = None):
        """The weights of ``bundle`` (default: the starting model) for reference only: its adapter chain
        merged into its base, no gradients, eval mode, in the run's dtype and attention."""
        return load_frozen(self.setup, bundle or self.bundle)


def continues_adapter(setup: Setup) -> bool:
    """True when --model is an adapter run and the tuner trains an adapter of the same kind: it is trained further."""
    run = setup.bundle.run
    if not (setup.bundle.adapters and setup.tuner.saves_adapter):
        return False
    if run.tuner != setup.tuner.name:
        raise TuneforgeError(
            f"--model '{setup.config.model}' holds a {run.tuner} adapter, but --train-type is {setup.tuner.name}; "
            f"continue it with --train-type {run.tuner}, or merge it first "
            f"(`tuneforge export --model {setup.config.model} --format merged --output-dir DIR`) and start from DIR."
        )
    from ..parts import _given_flags, _part_entries, flag

    config = setup.config
    given = [flag(part, frozen) for part, frozen in _given_flags(config).items()]
    given += ["--target-parts"] if getattr(config, "target_parts", None) else []
    given += [f"--target-modules '{entry}'" for entry in _part_entries(config)]
    if given:  # the adapter keeps the parts it was made with: say so rather than ignore the flags
        raise TuneforgeError(
            f"{', '.join(given)} cannot change which parts train when continuing the adapter of --model "
            f"'{config.model}' (it trains the parts it was made with); leave {'it' if len(given) == 1 else 'them'} out, "
            f"or start a new adapter from its base model, --model '{run.base_model}'."
        )
    return True


def load_frozen(setup: Setup, bundle: modeling.ModelBundle):
    """A model's weights for reference only: its adapter chain merged into its base, no gradients, eval mode."""
    register_attention(setup.config, setup.device)
    model = modeling.load_model(
        bundle.base_path,
        bundle.family,
        dtype=setup.dtype,
        attn_implementation=setup.config.attn_implementation,
        trust_remote_code=bundle.trust_remote_code,
        options=bundle.family_options,
    )
    if bundle.adapters:
        model = modeling.merge_adapters(model, list(bundle.adapters))
    model.config.use_cache = False
    model.requires_grad_(False)
    return model.eval()


def continue_adapter(setup: Setup):
    """Load the base with what the adapter of --model builds on merged in, and that adapter, trainable."""
    from peft import PeftModel

    config, bundle = setup.config, setup.bundle
    log(f"loading {bundle.base_path} and continuing the adapter of {bundle.run_dir}")
    register_attention(config, setup.device)  # the fast path may have chosen tuneforge's own attention kernel
    model = modeling.load_model(
        bundle.base_path,
        bundle.family,
        dtype=setup.dtype,
        attn_implementation=config.attn_implementation,
        trust_remote_code=config.trust_remote_code,
        options=bundle.family_options,
        **model_load_kwargs(setup),
    )
    model = modeling.merge_adapters(model, list(bundle.base_adapters))
    model.config.use_cache = False
    apply_seed(config)  # as a fresh adapter is seeded (load_trainable_model)
    model = PeftModel.from_pretrained(model, bundle.run_dir, is_trainable=True)
    return finish_wrapping(setup, model, f"'{setup.tuner.name}' (continued)")


def run_training(config, method) -> str:
    """Train ``config`` with the ``TrainingMethod`` record ``method``; returns the output directory."""
    if method.check is not None:
        method.check(config)  # the method's own options, before anything is resolved
    setup = prepare(config, method.name)
    if setup is None:  # ran under a multi-process launcher
        return config.output_dir
    # One run at a time in an output dir: held by the process that trains (the first of several), from before
    # the data is read to the run record.
    with output.claimed(setup.output_dir) if main_process() else contextlib.nullcontext():
        return _train(setup, method)


def _train(setup, method) -> str:
    from .sft import finish_run

    ctx = RunContext(setup=setup, method=method, continuing=method.continues_adapter and continues_adapter(setup))
    if method.check_setup is not None:
        method.check_setup(ctx)

    ctx.train_dataset, ctx.eval_dataset, ctx.summary = method.prepare_data(ctx)
    log(ctx.summary.describe())
    start_run(setup, ctx.summary)  # the same data as the run it resumes, or a cleared output dir

    model = continue_adapter(setup) if ctx.continuing else load_trainable_model(setup)
    ref_model, metrics = None, {}
    if method.reference_model is not None:
        ref_model, reference = method.reference_model(ctx)
        metrics["reference"] = reference  # the run record says what the policy was compared with
        log(f"method '{method.name}'; reference: {reference}")
    trainer = method.build_trainer(ctx, model, ref_model)
    trainer.parallel_backend = setup.backend.name  # each checkpoint records it, for a resume to check

    if method.before_train is not None:
        metrics.update(method.before_train(ctx, trainer) or {})
    if setup.resume_from:
        log(f"resuming from {setup.resume_from}")
    result = trainer.train(resume_from_checkpoint=str(setup.resume_from) if setup.resume_from else None)
    metrics.update(result.metrics)
    if ctx.eval_dataset is not None:
        metrics.update(trainer.evaluate())
    if method.after_train is not None:
        metrics.update(method.after_train(ctx, trainer) or {})  # last: it may take the trainer apart
    # A continued adapter applies on what the earlier one applied on; a fresh one, on the merged chain.
    base_adapters = list(setup.bundle.base_adapters) if ctx.continuing else None
    return finish_run(setup, trainer, ctx.summary, metrics, base_adapters=base_adapters)
