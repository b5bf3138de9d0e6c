"""The options of each preference method, declared once (YAML keys and flags derive from them).

Every method extends the core's ``TrainConfig`` (model, data, tuner, training
options) with its own fields in the ``preference`` group, which ``--help`` lists
just before the general options.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional

from tuneforge.api import TrainConfig, option

GROUP = "preference"
DEFAULT_PREFERENCE_DATASET = "minutes-preferences"


@dataclass
class PreferenceOptions(TrainConfig):
    """What every preference method shares."""

    dataset: list[str] = option(
        [DEFAULT_PREFERENCE_DATASET],
        "Preference data: a file (jsonl, json, csv, parquet) or a registered dataset name, optionally NAME:SPLIT.",
        group="data",
    )
    beta: float = option(0.1, "Strength of the preference loss (how far the policy may move from the reference).", group=GROUP)


@dataclass
class ReferenceOptions(PreferenceOptions):
    """Methods that compare the policy with a frozen reference model."""

    ref_model: Optional[str] = option(
        None,
        "Reference model (name, checkpoint dir or output dir); default: the starting model itself "
        "(adapters disabled for LoRA/DoRA/QLoRA, a frozen copy for full tuning).",
        group=GROUP,
    )


@dataclass
class DPOOptions(ReferenceOptions):
    """Direct preference optimisation."""

    loss_type: Literal["sigmoid", "ipo", "hinge"] = option(
        "sigmoid", "DPO loss: sigmoid (the paper's), ipo (identity preference), hinge (SLiC).", group=GROUP
    )
    label_smoothing: float = option(
        0.0, "Share of preference labels assumed flipped (conservative DPO, sigmoid loss only); in [0, 0.5).", group=GROUP
    )


@dataclass
class SimPOOptions(PreferenceOptions):
    """Simple preference optimisation: length-normalised, no reference model."""

    beta: float = option(2.0, "Scale of the length-normalised reward (SimPO's beta).", group=GROUP)
    simpo_gamma: float = option(0.5, "Target reward margin between chosen and rejected (SimPO's gamma).", group=GROUP)
    label_smoothing: float = option(0.0, "Share of preference labels assumed flipped; in [0, 0.5).", group=GROUP)
    cpo_alpha: float = option(0.0, "Weight of an added NLL loss on the chosen responses (0: pure SimPO).", group=GROUP)


@dataclass
class CPOOptions(PreferenceOptions):
    """Contrastive preference optimisation: a reference-free preference loss plus NLL on the chosen."""

    loss_type: Literal["sigmoid", "ipo", "hinge"] = option("sigmoid", "Preference loss of CPO.", group=GROUP)
    cpo_alpha: float = option(1.0, "Weight of the NLL loss on the chosen responses.", group=GROUP)
    label_smoothing: float = option(0.0, "Share of preference labels assumed flipped (sigmoid loss only); in [0, 0.5).", group=GROUP)


@dataclass
class ORPOOptions(PreferenceOptions):
    """Odds-ratio preference optimisation: SFT loss plus an odds-ratio term, no reference model."""

    beta: float = option(0.1, "Weight of the odds-ratio term against the SFT loss (ORPO's lambda).", group=GROUP)


@dataclass
class KTOOptions(ReferenceOptions):
    """Kahneman-Tversky optimisation on unpaired desirable/undesirable answers."""

    desirable_weight: float = option(1.0, "Weight of the loss on desirable answers.", group=GROUP)
    undesirable_weight: float = option(1.0, "Weight of the loss on undesirable answers.", group=GROUP)


GRPO_GROUP = "grpo"
DEFAULT_GRPO_DATASET = "device-actions"
DEFAULT_REWARDS = ["json_valid", "action_match", "argument_f1"]


@dataclass
class GRPOOptions(TrainConfig):
    """Group relative policy optimisation: sample answers, score them with reward functions, learn from the scores.

    Not a ``PreferenceOptions``: the data are prompts (with whatever the rewards read
    beside them), not pairs, and ``--beta`` defaults to 0 (no reference model).
    """

    dataset: list[str] = option(
        [DEFAULT_GRPO_DATASET],
        "Prompt data: a file (jsonl, json, csv, parquet) or a registered dataset name, optionally NAME:SPLIT; "
        "rows with 'messages' (a final assistant answer is kept for the rewards, not shown) or 'prompt'.",
        group="data",
    )
    reward: list[str] = option(
        list(DEFAULT_REWARDS),
        "Reward functions as NAME[:WEIGHT], repeatable or comma-separated (`tuneforge list rewards`).",
        group=GRPO_GROUP,
    )
    reward_file: list[str] = option(
        [], "A Python file whose tuneforge_reward_functions() yields RewardFunction records (repeatable).", group=GRPO_GROUP
    )
    reward_option: list[str] = option(
        [], "An option of a selected reward function as KEY=VALUE (repeatable), e.g. reward_length_limit=200.",
        group=GRPO_GROUP,
    )
    num_generations: int = option(4, "Answers sampled per prompt (the group whose rewards are compared).", group=GRPO_GROUP)
    max_completion_length: int = option(128, "Most tokens of a sampled answer.", group=GRPO_GROUP)
    temperature: float = option(1.0, "Sampling temperature of the answers.", group=GRPO_GROUP)
    beta: float = option(
        0.0, "Weight of the KL term to the reference model; 0: no KL term and no reference model.", group=GRPO_GROUP
    )
    loss_type: Literal["grpo", "dr_grpo", "dapo", "gspo"] = option(
        "dapo",
        "grpo (token losses averaged per answer), dr_grpo (summed, over a constant), dapo (averaged over the batch's "
        "tokens, clipped asymmetrically), gspo (one importance ratio per answer).",
        group=GRPO_GROUP,
    )
    scale_rewards: Literal["group", "batch", "none"] = option(
        "group",
        "What each answer's advantage (its reward minus its group's mean) is divided by: group (the group's standard "
        "deviation), batch (the whole batch's), none (nothing: a small reward difference makes a small update, as "
        "Dr. GRPO recommends).",
        group=GRPO_GROUP,
    )
    epsilon: float = option(0.2, "Lower clipping range of the importance ratio.", group=GRPO_GROUP)
    epsilon_high: Optional[float] = option(
        None, "Upper clipping range; default: 0.28 with --loss-type dapo, --epsilon otherwise.", group=GRPO_GROUP
    )
    num_iterations: int = option(1, "Optimisation passes over each batch of sampled answers.", group=GRPO_GROUP)
    rollout_engine: Literal["pt", "trl", "vllm"] = option(
        "pt",
        "What samples the answers: pt (tuneforge's inference engine, in process on the policy's own weights: the "
        "template's stop markers and strings as in serving), trl (trl's own generate), or vllm (the tuneforge-vllm "
        "plugin's engine: its own copy of the model in vLLM, into which the policy's weights, each LoRA layer's "
        "product added, are pushed before the first sampling after each optimizer step; one training process).",
        group=GRPO_GROUP,
    )
    rollout_engine_option: list[str] = option(
        [],
        "An option of the vllm rollout engine as NAME=VALUE, the value read as YAML (repeatable), e.g. "
        "gpu_memory_utilization=0.3 (its share of the GPU beside training) or max_model_len=4096.",
        group=GRPO_GROUP,
    )
    per_device_batch_size: int = option(
        4, "Sampled answers per device per step (groups of --num-generations share a prompt).", group="training"
    )
