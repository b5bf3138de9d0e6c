"""The preference methods' parts of a run: option checks, data, reference model, trl's trainer.

The core's ``run_training`` owns the order (checks, resolve, data, resumed-data
check, policy, trainer, train, output dir); these are the callables each method's
record hands it.

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

from typing import Any

from tuneforge.api import TuneforgeError

from .data import prepare_preference_data
from .methods import METHODS, MethodSpec

REFERENCE_ADAPTER = "ref"  # the name trl gives the frozen copy of a pretrained adapter


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


def _trainer_args(ctx, spec: MethodSpec, has_eval: bool):
    from . import trainers

    config = ctx.config
    training_arguments = ctx.training_arguments
    common = dict(has_eval=has_eval, max_length=config.max_length, disable_dropout=True, beta=config.beta)
    if spec.trainer == "dpo":
        return training_arguments(
            args_class=trainers.DPOConfig, loss_type=[config.loss_type], label_smoothing=config.label_smoothing, **common
        )
    if spec.trainer == "kto":
        return training_arguments(
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
            args_class=trainers.CPOConfig, cpo_alpha=config.cpo_alpha, label_smoothing=config.label_smoothing, **extra, **common
        )
    return training_arguments(args_class=trainers.ORPOConfig, **common)


def _build_trainer(ctx, spec: MethodSpec, model, ref_model):
    from datasets import Dataset

    from . import trainers

    train, evaluation = ctx.train_dataset, ctx.eval_dataset
    args = _trainer_args(ctx, spec, has_eval=evaluation is not None)
    if spec.trainer in ("cpo", "orpo"):
        train, evaluation = trainers.to_pair_rows(train), evaluation and trainers.to_pair_rows(evaluation)
    datasets = dict(
        train_dataset=Dataset.from_list(train),
        eval_dataset=Dataset.from_list(evaluation) if evaluation else None,
        processing_class=ctx.tokenizer,
        run_id=ctx.run_id,  # stamped into every checkpoint
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


def check_setup(ctx, method: str) -> None:
    """Resolve --ref-model and check it shares the policy's vocabulary, before the data and any weights."""
    spec = getattr(ctx.config, "ref_model", None)
    ctx.state["reference"] = ctx.resolve_reference(spec) if spec else None


def prepare_data(ctx, method: str):
    paired = METHODS[method].paired
    return prepare_preference_data(ctx.config, ctx.tokenizer, ctx.template, paired=paired, method=method)


def reference_model(ctx, method: str) -> tuple[Any, str]:
    """The frozen reference model (None where the policy serves as its own) and what it is, for the run record."""
    if not METHODS[method].uses_reference:
        return None, "none (reference-free)"
    reference = ctx.state.get("reference")
    if reference is not None:
        return ctx.load_frozen(reference), f"--ref-model {ctx.config.ref_model}"
    if not ctx.setup.tuner.saves_adapter:
        return ctx.load_frozen(), "a frozen copy of the starting model"
    if ctx.continuing:
        return None, "the continued adapter as it starts (a frozen copy of it)"
    return None, "the starting model (adapter disabled)"


def build_trainer(ctx, model, ref_model, method: str):
    trainer = _build_trainer(ctx, METHODS[method], model, ref_model)
    if _has_reference_adapter(trainer.model) and not ctx.continuing:
        # A fresh adapter changes nothing yet, so disabling it gives the reference: no copy is kept.
        trainer.model.delete_adapter(REFERENCE_ADAPTER)
    return trainer


def before_train(ctx, trainer, method: str) -> dict[str, Any]:
    """The held-out figures before training (not again when a run is resumed)."""
    if ctx.eval_dataset is None or ctx.resume_from:
        return {}
    return _start_metrics(trainer.evaluate(metric_key_prefix="eval_start"))


def after_train(ctx, trainer, method: str) -> dict[str, Any]:
    """The last logged preference figures; the output holds the trained adapter only."""
    metrics = _last_logged(trainer.state.log_history)
    if _has_reference_adapter(trainer.model):
        trainer.model.delete_adapter(REFERENCE_ADAPTER)
    return metrics
