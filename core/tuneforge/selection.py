"""Which records an invocation selects, and the options class they compose.

A command's options dataclass names its selecting options in the class attribute
``__tuneforge_selects__`` (option name -> record kind: ``train_type`` -> tuners,
``device`` -> devices, ``engine`` -> inference engines, ...). The values of those
options, read from the YAML file and the flags before anything else, pick one record
of each kind; the command's flags and YAML keys are then its own options plus the
``options`` dataclass of each picked record (``tuneforge.options.compose``).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

from . import options


def selecting_value(cls, name: str, *mappings: Mapping[str, Any]) -> Any:
    """The value a selecting option takes: the last mapping that sets it, else the class default."""
    value = options.default_of(next(f for f in dataclasses.fields(cls) if f.name == name))
    for mapping in mappings:
        for key, given in (mapping or {}).items():
            if options.normalise_key(key) == name and given is not None and given != ():
                value = given
    return value


def _default_device(registry) -> str | None:
    available = [d for d in registry.all("devices") if d.is_available()]
    return max(available, key=lambda d: d.priority).name if available else None


def selected_records(cls, *mappings: Mapping[str, Any], default_device: bool = True) -> dict[str, tuple[str, type | None]]:
    """Record kind -> (name, options class) of each record the mappings select.

    An option left unset selects the kind's default (for a device: the available one
    with the highest priority; ``default_device`` off leaves it unselected, since asking
    a device whether it is available may import torch). A name that is not installed
    selects nothing here; the command reports it when it looks the record up.
    """
    from .registry import get_registry

    registry = get_registry()
    selected: dict[str, tuple[str, type | None]] = {}
    for name, kind in options.selects(cls).items():
        value = selecting_value(cls, name, *mappings)
        if value is None and kind == "devices" and default_device:
            value = _default_device(registry)
        if value is None or not isinstance(value, str) or not registry.has(kind, value):
            continue
        selected[kind] = (value, registry.get(kind, value).options)
    return selected


def compose_for(cls, *mappings: Mapping[str, Any], default_device: bool = True):
    """``cls`` extended with the options of the records the mappings select."""
    return options.compose(cls, selected_records(cls, *mappings, default_device=default_device))


def unselected_fields(composed) -> frozenset[str]:
    """The options of every record of a selecting kind that ``composed`` selected none of."""
    from .registry import get_registry

    registry = get_registry()
    selected = getattr(composed, options.SELECTED_ATTRIBUTE, None) or {}
    return frozenset(
        f.name
        for kind in options.selects(composed).values()
        if kind not in selected
        for record in registry.all(kind)
        if record.options is not None
        for f in dataclasses.fields(record.options)
    )


def owner_of(cls, key: str) -> str | None:
    """A sentence for an option ``key`` that a record of ``cls``'s selecting kinds declares but the
    invocation did not select (``lora_rank`` with ``--train-type full``); None when no record has it."""
    from .registry import get_registry, kind_word

    registry = get_registry()
    selected = getattr(cls, options.SELECTED_ATTRIBUTE, None) or {}
    for name, kind in options.selects(cls).items():
        owners = [
            record.name
            for record in registry.all(kind)
            if record.options is not None and key in {f.name for f in dataclasses.fields(record.options)}
        ]
        if not owners:
            continue
        current = selected.get(kind, (None,))[0]
        flag = "--" + name.replace("_", "-")
        now = f"the {kind_word(kind)} '{current}'" if current else f"no {kind_word(kind)}"
        return (
            f"Option '{key}' belongs to the {kind_word(kind)} '{owners[0]}', but this invocation selects {now}; "
            f"pass {flag} {' or '.join(owners)}, or leave '{key}' out."
        )
    return None
