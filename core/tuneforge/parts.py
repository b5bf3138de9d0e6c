"""Which named parts of a model train, and how: ``--freeze-*`` and LoRA's ``--target-parts``.

A family that names its model's parts (``ModelParts``: language model, vision tower,
aligner) makes three tuner options mean something: ``--freeze-language-model``,
``--freeze-vision-tower`` and ``--freeze-aligner`` (each ``--no-...`` to train the
part). Left unset, the vision tower and the aligner are frozen and the language model
trains, as in the established tools (ms-swift, LLaMA-Factory), so their recipes carry
over. A part that is not frozen trains:

- with LoRA (lora, dora, qlora): LoRA adapts the parts ``--target-parts`` names (default:
  the language model, unless frozen); every other part left unfrozen trains whole, its
  weights saved in the adapter (peft's ``modules_to_save``), so the common recipe, LoRA on
  the language model with a trained aligner, is ``--no-freeze-aligner``.
- with full fine-tuning: its weights train; a frozen part's get ``requires_grad=False``.

A parameter no part names (the output head) goes with the language model. Where one
part's prefix lies inside another's (Qwen2-VL's merger inside its vision tower), the
longer prefix owns the parameter. LoRA's modules are chosen per part: ``--target-modules
NAME`` for the language model (default: the family's), ``--target-modules PART:NAME`` for
any part (default for a part other than the language model: every linear layer in it).

Everything here is decided from the options and the family's ``ModelParts`` before any
weights load (``check``); a flag that cannot apply is one sentence.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from .errors import TuneforgeError
from .options import option

PARTS = ("language_model", "vision_tower", "aligner")
# The established tools' defaults: the vision tower and the aligner stay as pretrained.
FROZEN_BY_DEFAULT = {"language_model": False, "vision_tower": True, "aligner": True}
ALL_LINEAR = "all-linear"


def flag(part: str, frozen: bool = True) -> str:
    return ("--freeze-" if frozen else "--no-freeze-") + part.replace("_", "-")


@dataclass
class PartOptions:
    """Which parts of a model whose family names them (a vision-language model) train."""

    freeze_language_model: Optional[bool] = option(None, "Keep the language model's weights (and the output head) as they are; only for a model whose family names its parts (a vision-language model). Default: off (LoRA adapts it; full fine-tuning trains it).", group="tuner")
    freeze_vision_tower: Optional[bool] = option(None, "Keep the vision tower's weights as they are (--no-freeze-vision-tower trains it: whole, or with LoRA where --target-parts names it); only for a model whose family names its parts. Default: on.", group="tuner")
    freeze_aligner: Optional[bool] = option(None, "Keep the aligner's (projector's) weights as they are (--no-freeze-aligner trains it: whole, saved in a LoRA adapter too, or with LoRA where --target-parts names it); only for a model whose family names its parts. Default: on.", group="tuner")


@dataclass
class PartPlan:
    """What trains: ``frozen`` per part the model has; ``lora``: the parts LoRA adapts; ``whole``: the parts trained whole."""

    prefixes: dict[str, str]
    frozen: dict[str, bool]
    lora: list[str] = field(default_factory=list)
    whole: list[str] = field(default_factory=list)

    def owner(self, name: str) -> str:
        """The part a parameter or module name belongs to: the longest prefix that holds it, else the language model."""
        best, length = "language_model", -1
        for part, prefix in self.prefixes.items():
            if (name == prefix or name.startswith(prefix + ".")) and len(prefix) > length:
                best, length = part, len(prefix)
        return best


def _given_flags(config) -> dict[str, bool]:
    return {part: getattr(config, f"freeze_{part}") for part in PARTS if getattr(config, f"freeze_{part}", None) is not None}


def _part_entries(config) -> list[str]:
    return [entry for entry in getattr(config, "target_modules", None) or () if ":" in entry]


def plan(config, parts, family_name: str = "this") -> PartPlan | None:
    """The parts that train under ``config`` for a model with ``parts`` (a ``ModelParts`` or None),
    or None where the family names no parts (the whole model is the language model). Raises one
    sentence for an option that cannot apply."""
    known = parts.prefixes() if parts is not None else {}
    given = _given_flags(config)
    lora = hasattr(config, "target_parts")
    targets = list(getattr(config, "target_parts", None) or ())
    if not known:
        if given:
            first = next(iter(given))
            raise TuneforgeError(
                f"{flag(first, given[first])} applies to a model whose family names its parts (a vision-language model), "
                f"and the family '{family_name}' names none; leave it out."
            )
        if targets:
            raise TuneforgeError(f"--target-parts {targets} names model parts, but this model's family names none; leave --target-parts out.")
        if _part_entries(config):
            raise TuneforgeError(
                f"--target-modules '{_part_entries(config)[0]}' names a model part, but this model's family names none; "
                f"give module names alone (q_proj) or 'all-linear'."
            )
        return None
    choose = ", ".join(known)
    for part in given:
        if part not in known:
            raise TuneforgeError(f"{flag(part, given[part])}: this model has no {part.replace('_', ' ')} (its family names {choose}); leave it out.")
    unknown = [name for name in targets if name not in known]
    if unknown:
        raise TuneforgeError(f"--target-parts names {unknown}, which this model does not have; choose from {choose}.")
    for entry in _part_entries(config):
        part, _, name = entry.partition(":")
        if part not in known or not name:
            raise TuneforgeError(
                f"--target-modules '{entry}' is not PART:NAME with a part this model has ({choose}); write it as vision_tower:all-linear, say."
            )
    for part in targets:
        if given.get(part):
            raise TuneforgeError(f"--target-parts names {part} for LoRA, but {flag(part)} freezes it; drop one of the two.")
    frozen = {part: given.get(part, False if part in targets else FROZEN_BY_DEFAULT[part]) for part in known}
    if not lora:
        adapted: list[str] = []
    elif targets:
        adapted = targets
    else:
        adapted = [part for part in ("language_model",) if part in known and not frozen[part]]
    whole = [part for part in known if not frozen[part] and part not in adapted]
    for entry in _part_entries(config):
        part = entry.partition(":")[0]
        if part not in adapted:
            raise TuneforgeError(
                f"--target-modules '{entry}' chooses LoRA's modules in the {part.replace('_', ' ')}, which LoRA does not adapt here; "
                f"add --target-parts {part} (with the other parts LoRA adapts), or leave that entry out."
            )
    if all(frozen.values()):
        reasons = ", ".join(f"{part} ({flag(part)})" if part in given else f"{part} (by default)" for part in known)
        opener = next((p for p in ("aligner", "language_model", "vision_tower") if p in known and p not in given), None)
        hint = f"pass {flag(opener, False)}" if opener else f"leave one of the {', '.join(flag(p) for p in given)} out"
        raise TuneforgeError(f"Every part of the model is frozen: {reasons}; nothing would train, so {hint}.")
    if lora and not adapted:
        raise TuneforgeError(
            f"With {flag('language_model')} LoRA has no part to adapt ({', '.join(whole)} would train whole); name the parts LoRA adapts "
            f"with --target-parts ({', '.join(p for p in known if p != 'language_model')}), or train the {' and the '.join(p.replace('_', ' ') for p in whole)} with --train-type full."
        )
    return PartPlan(prefixes=known, frozen=frozen, lora=adapted, whole=whole)


def check(config, family) -> None:
    """Refuse, before any weights load, a part option that cannot apply to ``family``'s model."""
    if any(hasattr(config, name) for name in ("target_parts", *(f"freeze_{p}" for p in PARTS))):
        plan(config, family.parts, family.name)
    if getattr(config, "trainable_parts", None):
        check_trainable_parts(config, family.parts)


def check_trainable_parts(config, parts, warn: bool = True) -> dict[str, str]:
    """The prefixes of the freeze tuner's ``--trainable-parts`` (a spelling kept for compatibility), with its warning."""
    import click

    known = parts.prefixes() if parts is not None else {}
    chosen = list(config.trainable_parts)
    if chosen and not known:
        raise TuneforgeError(f"--trainable-parts {chosen} names model parts, but this model's family names none; leave --trainable-parts out.")
    unknown = [name for name in chosen if name not in known]
    if unknown:
        raise TuneforgeError(f"--trainable-parts names {unknown}, which this model does not have; choose from {', '.join(known)}.")
    flags = " ".join(flag(part, part not in chosen) for part in known)
    if warn:
        click.echo(f"warning: --trainable-parts is deprecated; pass --train-type full {flags} instead.", err=True)
    return {name: known[name] for name in chosen}


def lora_targets(model, config, part_plan: PartPlan, family_targets) -> list[str]:
    """The full names of the modules LoRA adapts: per adapted part, the modules its entries name.

    An entry matches a module whose name is it or ends with ``.``-it (peft's rule); ``all-linear``
    matches every linear layer but the output head."""
    import torch

    plain = [entry for entry in config.target_modules if ":" not in entry] or list(family_targets)
    per_part: dict[str, list[str]] = {}
    for entry in _part_entries(config):
        part, _, name = entry.partition(":")
        per_part.setdefault(part, []).append(name)
    output = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    linear = tuple(t for t in (torch.nn.Linear, _conv1d()) if t is not None)
    chosen: list[str] = []
    for part in part_plan.lora:
        names = per_part.get(part) or (plain if part == "language_model" else [ALL_LINEAR])
        found = [
            key
            for key, module in model.named_modules()
            if key
            and part_plan.owner(key) == part
            and any(
                (name == ALL_LINEAR and isinstance(module, linear) and module is not output)
                or (name != ALL_LINEAR and (key == name or key.endswith("." + name)))
                for name in names
            )
        ]
        if not found:
            where = part_plan.prefixes[part]
            raise TuneforgeError(
                f"LoRA target modules {names} match no module of the {part.replace('_', ' ')} ({where}); pass --target-modules "
                f"{'' if part == 'language_model' else part + ':'}NAME with names from it, or {'' if part == 'language_model' else part + ':'}all-linear."
            )
        chosen += found
    return chosen


def _conv1d():
    try:
        from transformers.pytorch_utils import Conv1D
    except ImportError:  # pragma: no cover - an older transformers
        return None
    return Conv1D


def original_name(name: str) -> str:
    """A parameter's name in the unwrapped model (peft's wrapper segments dropped)."""
    for segment in ("base_model.model.",):
        if name.startswith(segment):
            name = name[len(segment):]
    for segment in (".modules_to_save.default", ".original_module", ".base_layer"):
        name = name.replace(segment, "")
    return name


def freeze_frozen(model, part_plan: PartPlan) -> None:
    """No gradient for a parameter of a frozen part (a frozen part nested in one trained whole included)."""
    for name, parameter in model.named_parameters():
        if parameter.requires_grad and part_plan.frozen.get(part_plan.owner(original_name(name))) and "lora_" not in name:
            parameter.requires_grad_(False)


def trainable_by_part(model, part_plan: PartPlan) -> dict[str, int]:
    """How many parameters of each part train (for a summary or a test)."""
    counts = {part: 0 for part in part_plan.prefixes}
    counts.setdefault("language_model", 0)
    for name, parameter in model.named_parameters():
        if parameter.requires_grad:
            counts[part_plan.owner(original_name(name))] += parameter.numel()
    return counts
