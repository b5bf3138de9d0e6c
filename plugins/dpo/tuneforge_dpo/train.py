"""One preference run: checks, data, policy and reference, trl's trainer, the output dir.

The order is the core's: every check that needs no weights runs first (options,
names, output dir, reference model spec, the whole dataset), then the weights load.

Reference model:
- ``--ref-model`` given: that model, frozen (an adapter run is merged into its base);
- LoRA/DoRA/QLoRA from a fresh adapter: the policy with its adapter disabled, which
  is the starting model, with no second copy of the weights;
- LoRA/DoRA/QLoRA continuing an adapter run (``--model`` an SFT output dir): the
  adapter is trained further, and a frozen copy of it (a second adapter, not a second
  model) is the reference, so the reference is the SFT model;
- full/freeze: a frozen copy of the starting model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tuneforge import modeling
from tuneforge.errors import TuneforgeError
from tuneforge.training.setup import (
    apply_seed,
    finish_wrapping,
    load_trainable_model,
    log,
    model_load_kwargs,
    prepare,
    register_attention,
    start_run,
    training_arguments,
)

from .data import prepare_preference_data

REFERENCE_ADAPTER = "ref"  # the name trl gives the frozen copy of a pretrained adapter


@dataclass(frozen=True)
class MethodSpec:
    """How a method trains: which trl trainer, paired or unpaired data, with or without a reference."""

    trainer: str  # dpo, kto, cpo, orpo
    paired: bool
    uses_reference: bool


METHODS = {
    "dpo": MethodSpec("dpo", paired=True, uses_reference=True),
    "simpo": MethodSpec("cpo", paired=True, uses_reference=False),
    "cpo": MethodSpec("cpo", paired=True, uses_reference=False),
    "orpo": MethodSpec("orpo", paired=True, uses_reference=False),
    "kto": MethodSpec("kto", paired=False, uses_reference=True),
}


def check_options(config, method: str) -> None:
    """Refuse options that cannot work with ``method``, before anything is loaded.

    ``--packing`` is refused by the core: the methods' records leave ``supports_packing`` off.
    """
    if config.train_on_prompt:
        raise TuneforgeError(
            f"--train-on-prompt has no meaning for --method {method}: the preference is between answers, "
            f"so only the answers are scored; leave it out."
        )
    if config.beta <= 0:
        raise TuneforgeError(f"--beta is {config.beta}; it must be above 0.")
    smoothing = getattr(config, "label_smoothing", 0.0)
    if not 0 <= smoothing < 0.5:
        raise TuneforgeError(f"--label-smoothing is {smoothing}; it must be in [0, 0.5).")
    if smoothing and getattr(config, "loss_type", "sigmoid") != "sigmoid":
        raise TuneforgeError(
            f"--label-smoothing only applies to the sigmoid loss, but --loss-type is {config.loss_type}; "
            f"leave --label-smoothing at 0 or use --loss-type sigmoid."
        )
    for key in ("simpo_gamma", "cpo_alpha", "desirable_weight", "undesirable_weight"):
        value = getattr(config, key, None)
        if value is not None and value < 0:
            raise TuneforgeError(f"--{key.replace('_', '-')} is {value}; it must be 0 or more.")
    if method == "kto" and config.per_device_batch_size < 2:
        raise TuneforgeError(
            f"--method kto needs --per-device-batch-size of at least 2 (its KL estimate pairs each prompt with "
            f"another answer of the batch), but it is {config.per_device_batch_size}; pass --per-device-batch-size 2 or more."
        )


def _continues_adapter(setup) -> bool:
    """True when --model is an adapter run and the tuner trains an adapter: the adapter is trained further."""
    run = setup.resolved.run
    if not (run and run.saves_adapter and setup.tuner.saves_adapter):
        return False
    if run.tuner != setup.tuner.name:
        raise TuneforgeError(
            f"--model '{setup.config.model}' holds a {run.tuner} adapter, but --train-type is {setup.tuner.name}; "
            f"continue it with --train-type {run.tuner}, or merge it first "
            f"(`tuneforge export --model {setup.config.model} --merge-lora --output-dir DIR`) and start from DIR."
        )
    return True


def _check_reference_spec(setup, spec: str):
    """Resolve --ref-model and check it shares the policy's vocabulary, before any weights load."""
    resolved = modeling.resolve_model(spec)
    trust = setup.config.trust_remote_code
    modeling.check_remote_code(resolved, trust)  # --trust-remote-code covers the reference model too
    ref_config = modeling.load_hf_config(resolved.base_path, trust_remote_code=trust)
    policy_config = modeling.load_hf_config(setup.resolved.base_path, trust_remote_code=trust)
    ref_vocab, policy_vocab = getattr(ref_config, "vocab_size", None), getattr(policy_config, "vocab_size", None)
    if ref_vocab != policy_vocab:
        raise TuneforgeError(
            f"--ref-model '{spec}' has a vocabulary of {ref_vocab} tokens but --model has {policy_vocab}; "
            f"the reference must use the same tokenizer as the model being trained."
        )
    return resolved


def _load_frozen(resolved, setup):
    """A model spec's weights for reference only: an adapter run merged into its base, no gradients, eval mode."""
    trust = setup.config.trust_remote_code
    family = modeling.match_family(
        modeling.load_hf_config(resolved.base_path, trust_remote_code=trust), resolved.run.model_family if resolved.run else None
    )
    register_attention(setup.config)
    model = modeling.load_model(
        resolved.base_path, family, dtype=setup.dtype, attn_implementation=setup.config.attn_implementation, trust_remote_code=trust
    )
    run = resolved.run
    if run and run.saves_adapter:
        model = modeling.merge_adapters(model, modeling.adapter_chain(resolved.run_dir, run))
    model.config.use_cache = False
    model.requires_grad_(False)
    return model.eval()


def _load_policy(setup, continuing: bool):
    if not continuing:
        return load_trainable_model(setup)
    from peft import PeftModel

    config = setup.config
    extra = model_load_kwargs(setup)
    log(f"loading {setup.resolved.base_path} and continuing the adapter of {setup.resolved.run_dir}")
    register_attention(config)  # the fast path may have chosen tuneforge's own attention kernel
    model = modeling.load_model(
        setup.resolved.base_path,
        setup.family,
        dtype=setup.dtype,
        attn_implementation=config.attn_implementation,
        trust_remote_code=config.trust_remote_code,
        **extra,
    )
    model = modeling.merge_adapters(model, list(setup.resolved.run.base_adapters))  # what that adapter builds on
    model.config.use_cache = False
    apply_seed(config)  # as a fresh adapter is seeded (load_trainable_model)
    model = PeftModel.from_pretrained(model, setup.resolved.run_dir, is_trainable=True)
    return finish_wrapping(setup, model, f"'{setup.tuner.name}' (continued)")


def _trainer_args(setup, spec: MethodSpec, has_eval: bool):
    from . import trainers

    config = setup.config
    common = dict(has_eval=has_eval, max_length=config.max_length, disable_dropout=True, beta=config.beta)
    if spec.trainer == "dpo":
        return training_arguments(
            setup, args_class=trainers.DPOConfig, loss_type=[config.loss_type], label_smoothing=config.label_smoothing, **common
        )
    if spec.trainer == "kto":
        return training_arguments(
            setup,
            args_class=trainers.KTOConfig,
            desirable_weight=config.desirable_weight,
            undesirable_weight=config.undesirable_weight,
            train_sampling_strategy="sequential",
            **common,
        )
    if spec.trainer == "cpo":
        simpo = hasattr(config, "simpo_gamma")
        extra = dict(loss_type="simpo", simpo_gamma=config.simpo_gamma) if simpo else dict(loss_type=config.loss_type)
        return training_arguments(
            setup, args_class=trainers.CPOConfig, cpo_alpha=config.cpo_alpha, label_smoothing=config.label_smoothing, **extra, **common
        )
    return training_arguments(setup, args_class=trainers.ORPOConfig, **common)


def _build_trainer(setup, spec: MethodSpec, model, ref_model, train, evaluation):
    from datasets import Dataset

    from . import trainers

    args = _trainer_args(setup, spec, has_eval=evaluation is not None)
    if spec.trainer in ("cpo", "orpo"):
        train, evaluation = trainers.to_pair_rows(train), evaluation and trainers.to_pair_rows(evaluation)
    datasets = dict(
        train_dataset=Dataset.from_list(train),
        eval_dataset=Dataset.from_list(evaluation) if evaluation else None,
        processing_class=setup.tokenizer,
        run_id=setup.run_id,  # stamped into every checkpoint
    )
    if spec.trainer == "dpo":
        return trainers.TuneforgeDPOTrainer(model=model, ref_model=ref_model, args=args, **datasets)
    if spec.trainer == "kto":
        return trainers.TuneforgeKTOTrainer(model=model, ref_model=ref_model, args=args, **datasets)
    if spec.trainer == "cpo":
        return trainers.TuneforgeCPOTrainer(model=model, args=args, **datasets)
    return trainers.TuneforgeORPOTrainer(model=model, args=args, **datasets)


def _has_reference_adapter(model) -> bool:
    return REFERENCE_ADAPTER in (getattr(model, "peft_config", None) or {})


def _last_logged(log_history: list[dict], prefixes=("rewards/", "logps/", "kl")) -> dict[str, Any]:
    """The last logged value of each training metric (reward margins, chosen/rejected rewards, accuracies ...)."""
    found: dict[str, Any] = {}
    for entry in log_history:
        for key, value in entry.items():
            if key.startswith(prefixes):
                found[key] = value
    return found


def _start_metrics(evaluated: dict[str, Any]) -> dict[str, Any]:
    """The held-out figures before training, all under ``eval_start_`` (trl names its own ``eval_`` whatever the prefix)."""
    return {
        key if key.startswith("eval_start_") else "eval_start_" + key.removeprefix("eval_"): value
        for key, value in evaluated.items()
        if key != "epoch"
    }


def run_preference(config, method: str) -> str:
    """Train ``config`` with preference ``method``; returns the output directory."""
    from tuneforge.training.sft import finish_run

    spec = METHODS[method]
    check_options(config, method)
    setup = prepare(config, method)
    if setup is None:  # ran under a multi-process launcher
        return config.output_dir
    config = setup.config
    continuing = _continues_adapter(setup)
    ref_spec = getattr(config, "ref_model", None)
    ref_resolved = _check_reference_spec(setup, ref_spec) if ref_spec else None

    train, evaluation, summary = prepare_preference_data(
        config, setup.tokenizer, setup.template, paired=spec.paired, method=method
    )
    log(summary.describe())
    start_run(setup, summary)  # the same data as the run it resumes, or a cleared output dir

    model = _load_policy(setup, continuing)
    ref_model = None
    reference = "none (reference-free)"
    if spec.uses_reference:
        if ref_resolved is not None:
            ref_model, reference = _load_frozen(ref_resolved, setup), f"--ref-model {ref_spec}"
        elif not setup.tuner.saves_adapter:
            ref_model, reference = _load_frozen(setup.resolved, setup), "a frozen copy of the starting model"
        elif continuing:
            reference = "the continued adapter as it starts (a frozen copy of it)"
        else:
            reference = "the starting model (adapter disabled)"
    log(f"method '{method}'; reference: {reference}")

    trainer = _build_trainer(setup, spec, model, ref_model, train, evaluation)
    if _has_reference_adapter(trainer.model) and not continuing:
        # A fresh adapter changes nothing yet, so disabling it gives the reference: no copy is kept.
        trainer.model.delete_adapter(REFERENCE_ADAPTER)
    metrics: dict[str, Any] = {"reference": reference}
    if evaluation is not None and not setup.resume_from:
        metrics.update(_start_metrics(trainer.evaluate(metric_key_prefix="eval_start")))
    if setup.resume_from:
        log(f"resuming from {setup.resume_from}")
    result = trainer.train(resume_from_checkpoint=str(setup.resume_from) if setup.resume_from else None)
    metrics.update(result.metrics)
    metrics.update(_last_logged(trainer.state.log_history))
    if evaluation is not None:
        metrics.update(trainer.evaluate())
    if _has_reference_adapter(trainer.model):
        trainer.model.delete_adapter(REFERENCE_ADAPTER)  # the output holds the trained adapter only
    # A continued adapter applies on what the earlier one applied on; a fresh one, on the merged chain.
    base_adapters = list(setup.resolved.run.base_adapters) if continuing else None
    return finish_run(setup, trainer, summary, metrics, base_adapters=base_adapters)
