"""GRPO's parts of a run: option checks, prompt data, reference model, trl's GRPOTrainer, the reward figures.

Online RL with verifiable rewards: for each prompt the policy samples
``--num-generations`` answers, the selected reward functions score them, and each
answer's advantage is its reward against its group's mean. The core's
``run_training`` owns the order (checks, data, policy, trainer, train, output dir);
these are the callables the ``grpo`` record hands it.

Reference model (only with ``--beta`` above 0; at 0 none is kept or computed):
- LoRA/DoRA/QLoRA from a fresh adapter: the policy with its adapter disabled;
- continuing an adapter run (``--model`` an SFT output dir): a frozen copy of that
  adapter as it starts (a second adapter, not a second model);
- full/freeze: a frozen copy of the starting model.
"""

from __future__ import annotations

import os
from typing import Any

from tuneforge.api import TuneforgeError

from . import grpo_rewards
from .prompts import prepare_prompt_data

REFERENCE_ADAPTER = "ref"  # the name trl gives the frozen copy of a pretrained adapter
DAPO_EPSILON_HIGH = 0.28  # the DAPO paper's upper clipping range

# --loss-type -> trl's loss_type and importance_sampling_level
LOSSES = {
    "grpo": ("grpo", "token"),
    "dr_grpo": ("dr_grpo", "token"),
    "dapo": ("dapo", "token"),
    "gspo": ("grpo", "sequence"),  # GSPO: one importance ratio per answer, its tokens' losses averaged per answer
}


def _world_size(config) -> int:
    return max(int(os.environ.get("WORLD_SIZE", "1")), int(getattr(config, "nproc_per_node", 1) or 1))


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'s' if n != 1 else ''}"


def check_options(config) -> None:
    """Refuse what cannot work, before anything is resolved or loaded (the rewards are checked here too)."""
    if config.train_on_prompt:
        raise TuneforgeError("--train-on-prompt has no meaning for --method grpo: only the sampled answers are learned; leave it out.")
    if config.val_dataset or config.val_split_ratio:
        raise TuneforgeError(
            "--method grpo takes no validation data (its measure is the reward of the answers it samples, logged every "
            "step); leave out --val-dataset and --val-split-ratio, and score the output with `tuneforge eval`."
        )
    if config.num_generations < 2:
        raise TuneforgeError(
            f"--num-generations is {config.num_generations}; GRPO compares each answer with the others to the same "
            f"prompt, so give 2 or more."
        )
    if config.max_completion_length < 1:
        raise TuneforgeError(f"--max-completion-length is {config.max_completion_length}; give a positive number of tokens.")
    if config.temperature <= 0:
        raise TuneforgeError(f"--temperature is {config.temperature}; GRPO needs varied answers, so give a value above 0 (1.0 is usual).")
    if config.beta < 0:
        raise TuneforgeError(f"--beta is {config.beta}; give 0 (no KL term) or more.")
    if config.epsilon <= 0:
        raise TuneforgeError(f"--epsilon is {config.epsilon}; give a clipping range above 0 (0.2 is usual).")
    if config.epsilon_high is not None and config.epsilon_high < config.epsilon:
        raise TuneforgeError(
            f"--epsilon-high is {config.epsilon_high}, below --epsilon {config.epsilon}; give at least {config.epsilon} "
            f"(DAPO uses 0.28), or leave it out."
        )
    if config.num_iterations < 1:
        raise TuneforgeError(f"--num-iterations is {config.num_iterations}; give 1 or more.")
    world = _world_size(config)
    batch = config.per_device_batch_size * config.gradient_accumulation_steps * world
    if batch % config.num_generations:
        fitting = [n for n in range(2, batch + 1) if batch % n == 0]
        layout = f"--per-device-batch-size {config.per_device_batch_size} x --gradient-accumulation-steps {config.gradient_accumulation_steps}"
        layout += f" x {_plural(world, 'process')}" if world > 1 else ""
        fix = f"pass --num-generations {' or '.join(map(str, fitting[:6]))}, or " if fitting else "pass "
        raise TuneforgeError(
            f"The global batch of {_plural(batch, 'answer')} ({layout}) does not split into groups of --num-generations "
            f"{config.num_generations}; {fix}a --per-device-batch-size that is a multiple of {config.num_generations}."
        )
    _check_rollout_engine(config, world)
    grpo_rewards.select(config)  # unknown names, bad weights, reward files, reward options: all before any weights load


def _check_rollout_engine(config, world: int) -> None:
    if config.rollout_engine_option and config.rollout_engine != "vllm":
        raise TuneforgeError(
            f"--rollout-engine-option is for --rollout-engine vllm, and this run samples with --rollout-engine "
            f"{config.rollout_engine}; leave it out, or pass --rollout-engine vllm."
        )
    rollout_engine_options(config)
    if config.rollout_engine != "vllm":
        return
    if config.train_type == "qlora":
        raise TuneforgeError(
            "--rollout-engine vllm pushes the policy's weights, each LoRA layer's product added, into vLLM, which a "
            "QLoRA policy (a 4-bit base) cannot give; pass --rollout-engine pt, or --train-type lora."
        )
    if config.train_type == "dora":
        raise TuneforgeError(
            "--rollout-engine vllm pushes the policy's weights with each LoRA layer's product added into vLLM, which a "
            "DoRA adapter (its magnitudes rescale the whole weight) is not; pass --rollout-engine pt, or --train-type lora."
        )
    if world > 1:
        raise TuneforgeError(
            f"--rollout-engine vllm runs one vLLM engine beside one training process, and this run has "
            f"{_plural(world, 'process')}; pass --rollout-engine pt, or train in one process."
        )


def rollout_engine_options(config) -> dict[str, Any]:
    """``--rollout-engine-option NAME=VALUE`` as the engine's keyword options (each value read as YAML)."""
    import yaml

    options: dict[str, Any] = {}
    for item in config.rollout_engine_option:
        name, equals, value = item.partition("=")
        name = name.strip().replace("-", "_")
        if not equals or not name:
            raise TuneforgeError(
                f"--rollout-engine-option '{item}' is not NAME=VALUE; give e.g. gpu_memory_utilization=0.3."
            )
        try:
            options[name] = yaml.safe_load(value) if value.strip() else None
        except yaml.YAMLError:
            raise TuneforgeError(
                f"--rollout-engine-option '{item}' has a value that is not YAML; quote it, e.g. {name}='{value}'."
            ) from None
    return options


def start_rollout_engine(ctx):
    """The vllm engine of ``--rollout-engine vllm`` on the run's base weights, created before the policy loads;
    refused in one sentence when no plugin provides it or it cannot take new weights."""
    import dataclasses

    from tuneforge.api import create_engine

    config = ctx.config
    options = {
        "torch_dtype": ctx.setup.dtype_name,  # the policy's dtype: vLLM's auto may serve float32 in 16 bits
        "batch_size": config.per_device_batch_size * config.gradient_accumulation_steps,
        **rollout_engine_options(config),
    }
    # vLLM serves the weights the policy starts from and gets the policy's own, adapter merged, before it samples:
    # no adapter of its own (a continued adapter is in what the policy sends), the run's template and tokenizer.
    bundle = dataclasses.replace(ctx.bundle, adapters=(), template=ctx.template, tokenizer=ctx.tokenizer)
    try:
        engine = create_engine("vllm", bundle, **options)
    except KeyError as exc:
        if "Unknown inference engine" not in str(exc):
            raise
        raise TuneforgeError(
            "--rollout-engine vllm needs the vllm inference engine, which no installed plugin provides; install it "
            "(pip install 'tuneforge-vllm[gpu]', or 'tuneforge-vllm[cpu]' without a GPU) or pass --rollout-engine pt."
        ) from None
    if "weight_sync" not in getattr(engine, "features", ()) or not callable(getattr(engine, "load_weights", None)):
        engine.close()
        raise TuneforgeError(
            "The vllm engine installed here cannot take the policy's weights (it declares no 'weight_sync' feature); "
            "upgrade tuneforge-vllm, or pass --rollout-engine pt."
        )
    return engine


def check_setup(ctx) -> None:
    ctx.state["rewards"] = grpo_rewards.select(ctx.config)


def prepare_data(ctx):
    train, evaluation, summary = prepare_prompt_data(ctx.config, ctx.template)
    config = ctx.config
    cut = sum(sample["conversation"] is None for sample in train)
    if cut and config.rollout_engine != "trl":  # before the policy loads
        raise TuneforgeError(
            f"{_plural(cut, 'prompt')} of the training data {'was' if cut == 1 else 'were'} cut on the left to fit --max-length {config.max_length}, "
            f"and --rollout-engine {config.rollout_engine} samples from whole prompts; raise --max-length, or pass "
            f"--rollout-engine trl."
        )
    if config.rollout_engine == "vllm":  # before the policy loads: a missing engine or a bad option costs no load
        ctx.log("grpo: starting the vllm rollout engine (vLLM loads its own copy of the starting weights)")
        ctx.state["rollout_engine"] = start_rollout_engine(ctx)
    return train, evaluation, summary


def reference_model(ctx) -> tuple[Any, str]:
    if ctx.config.beta == 0:
        return None, "none (--beta 0: no KL term)"
    if not ctx.setup.tuner.saves_adapter:
        return ctx.load_frozen(), "a frozen copy of the starting model"
    if ctx.continuing:
        return None, "the continued adapter as it starts (a frozen copy of it)"
    return None, "the starting model (adapter disabled)"


def _trainer_args(ctx):
    from .grpo_trainer import GRPOConfig

    config = ctx.config
    loss_type, level = LOSSES[config.loss_type]
    epsilon_high = config.epsilon_high
    if epsilon_high is None:
        epsilon_high = DAPO_EPSILON_HIGH if config.loss_type == "dapo" else config.epsilon
    return ctx.training_arguments(
        has_eval=False,
        args_class=GRPOConfig,
        num_generations=config.num_generations,
        max_completion_length=config.max_completion_length,
        temperature=config.temperature,
        beta=config.beta,
        loss_type=loss_type,
        scale_rewards=config.scale_rewards,
        importance_sampling_level=level,
        epsilon=config.epsilon,
        epsilon_high=epsilon_high,
        num_iterations=config.num_iterations,
        reward_weights=ctx.state["reward_weights"],
        disable_dropout=True,
        log_completions=False,
        label_names=[],
    )


def _dataset(rows: list[dict[str, str]]):
    """The prompt rows (text columns) as a ``datasets.Dataset`` fingerprinted by their content.

    datasets would otherwise pickle the table's state to make a fingerprint, which fails on
    some Pythons (3.12 with pyarrow 26: "Can't pickle <class 'MonthDayNano'>").
    """
    import hashlib
    import json

    from datasets import Dataset
    from datasets.table import InMemoryTable

    columns = {key: [row[key] for row in rows] for key in rows[0]}
    fingerprint = hashlib.sha256(json.dumps(columns, sort_keys=True).encode()).hexdigest()[:16]
    return Dataset(InMemoryTable.from_pydict(columns), fingerprint=fingerprint)


def build_trainer(ctx, model, ref_model):

    from .grpo_trainer import TuneforgeGRPOTrainer

    tokenizer, template = ctx.tokenizer, ctx.template
    log = grpo_rewards.RewardLog(ctx.log)
    functions, weights = grpo_rewards.trl_reward_functions(
        ctx.state["rewards"], log, stop_strings=getattr(template, "stop_strings", ()), template=template
    )
    ctx.state["reward_weights"], ctx.state["reward_log"] = weights, log
    prompt_ids, rows = {}, []
    for sample in ctx.train_dataset:
        # the prompt's text is trl's key for it (and what it logs); the template's ids are what is sampled from
        text = tokenizer.decode(sample["prompt_ids"])
        prompt_ids.setdefault(text, sample["prompt_ids"])
        rows.append({"prompt": text, "row": sample["row"]})
    rollouts = engine_rollouts(ctx)
    trainer = TuneforgeGRPOTrainer(
        model=model,
        reward_funcs=functions,
        args=_trainer_args(ctx),
        train_dataset=_dataset(rows),
        processing_class=tokenizer,
        run_id=ctx.run_id,  # stamped into every checkpoint
        prompt_ids=prompt_ids,
        stop_token_ids=getattr(template, "stop_token_ids", ()),
        ref_model=ref_model,
        rollouts=rollouts,
    )
    ctx.state["rollouts"] = rollouts
    if _has_reference_adapter(trainer.model) and not ctx.continuing:
        # A fresh adapter changes nothing yet, so disabling it gives the reference: no copy is kept.
        trainer.model.delete_adapter(REFERENCE_ADAPTER)
    ctx.log(
        f"grpo: {ctx.config.num_generations} answers a prompt sampled by "
        + (f"the {rollouts.name} engine" if rollouts else "trl's generate")
        + (" (the policy's weights pushed into it before each step's sampling)" if rollouts and rollouts.syncs_weights else "")
        + f", loss {ctx.config.loss_type}, rewards "
        + ", ".join(f"{name}:{weight:g}" for name, weight in ctx.state["rewards"].weights.items())
    )
    return trainer


def engine_rollouts(ctx):
    """The ``EngineRollouts`` of ``--rollout-engine`` (None for trl's own sampling); refuses prompts it cannot render."""
    import json

    from .rollouts import EngineRollouts

    config = ctx.config
    if config.rollout_engine == "trl":
        return None
    requests = {}
    for number, sample in enumerate(ctx.train_dataset, 1):  # none was cut (prepare_data)
        conversation = json.loads(sample["conversation"])
        ids = tuple(sample["prompt_ids"])
        if tuple(ctx.template.prompt(conversation["messages"], tools=conversation["tools"])) != ids:
            # the engine would sample from another prompt than the one trl scores: the updates would be off-policy
            raise TuneforgeError(
                f"The chat template '{getattr(ctx.template, 'name', '?')}' rendered prompt {number} differently the second "
                f"time, so --rollout-engine {config.rollout_engine} would sample from another prompt than the one "
                f"learned from; pass --rollout-engine trl."
            )
        requests[ids] = (conversation["messages"], conversation["tools"])
    generation_batch = config.per_device_batch_size * config.gradient_accumulation_steps
    return EngineRollouts(
        config.rollout_engine,
        tokenizer=ctx.tokenizer,
        template=ctx.template,
        template_name=getattr(ctx.template, "name", None) or str(config.template or "auto"),
        setup=ctx.setup,
        requests=requests,
        sampling={"temperature": config.temperature, "max_tokens": config.max_completion_length},
        batch_size=generation_batch,
        engine=getattr(ctx, "state", {}).get("rollout_engine"),
    )


def _has_reference_adapter(model) -> bool:
    return REFERENCE_ADAPTER in (getattr(model, "peft_config", None) or {})


def reward_figures(log_history: list[dict], names: list[str]) -> dict[str, Any]:
    """The mean reward of every logged step, of the first and last, and each function's first and last mean."""
    logged = [entry for entry in log_history if "reward" in entry]
    figures: dict[str, Any] = {}
    if logged:
        figures["reward_logged"] = [entry["reward"] for entry in logged]  # one per --logging-steps
        figures["reward_start"] = logged[0]["reward"]
        figures["reward_end"] = logged[-1]["reward"]
        for name in names:
            key = f"rewards/{name}/mean"
            values = [entry[key] for entry in logged if entry.get(key) is not None]
            if values:
                figures[f"reward_start/{name}"] = values[0]
                figures[f"reward_end/{name}"] = values[-1]
        for key in ("completions/mean_length", "kl", "frac_reward_zero_std"):
            if logged[-1].get(key) is not None:
                figures[key] = logged[-1][key]
    return figures


def after_train(ctx, trainer) -> dict[str, Any]:
    """The reward figures and failures for the run record; the output holds the trained adapter only."""
    rewards = ctx.state["rewards"]
    log: grpo_rewards.RewardLog = ctx.state["reward_log"]
    metrics: dict[str, Any] = {"rewards": rewards.weights}
    metrics.update(reward_figures(trainer.state.log_history, rewards.names))
    metrics["reward_failures"] = {name: log.failures.get(name, 0) for name in rewards.names}
    if log.first_reason:
        metrics["reward_failure_reasons"] = dict(log.first_reason)
    for line in (
        f"reward function '{name}' failed on {_plural(count, 'sample')} of this run; they counted 0 for it"
        for name, count in metrics["reward_failures"].items()
        if count
    ):
        ctx.log(line)
    rollouts = ctx.state.get("rollouts")
    if rollouts is not None:
        rollouts.close()
        metrics["rollouts"] = {"engine": rollouts.name, "answer_tokens": rollouts.tokens, "weight_syncs": rollouts.syncs}
    else:
        metrics["rollouts"] = {"engine": "trl"}
    if _has_reference_adapter(trainer.model):
        trainer.model.delete_adapter(REFERENCE_ADAPTER)
    return metrics
