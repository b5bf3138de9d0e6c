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
