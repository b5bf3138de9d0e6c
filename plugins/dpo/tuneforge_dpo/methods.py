"""The preference methods, in one table: each one's record and how it trains.

Importing this imports neither trl nor torch (the plugin registers from it).
"""

from __future__ import annotations

from dataclasses import dataclass

from .options import CPOOptions, DPOOptions, KTOOptions, ORPOOptions, SimPOOptions


@dataclass(frozen=True)
class MethodSpec:
    """How a method trains: which trl trainer, paired or unpaired data, with or without a reference."""

    description: str
    options: type
    trainer: str  # dpo, kto, cpo, orpo
    paired: bool
    uses_reference: bool


METHODS = {
    "dpo": MethodSpec(
        "Direct preference optimisation (--loss-type sigmoid, ipo or hinge) against a reference model",
        DPOOptions, "dpo", paired=True, uses_reference=True,
    ),
    "simpo": MethodSpec(
        "SimPO: length-normalised preference reward with a target margin, no reference model",
        SimPOOptions, "cpo", paired=True, uses_reference=False,
    ),
    "orpo": MethodSpec(
        "ORPO: SFT loss plus an odds-ratio preference term, no reference model",
        ORPOOptions, "orpo", paired=True, uses_reference=False,
    ),
    "cpo": MethodSpec(
        "CPO: reference-free preference loss plus NLL on the chosen answers",
        CPOOptions, "cpo", paired=True, uses_reference=False,
    ),
    "kto": MethodSpec(
        "KTO: unpaired desirable/undesirable answers (pairs are split), against a reference model",
        KTOOptions, "kto", paired=False, uses_reference=True,
    ),
}
