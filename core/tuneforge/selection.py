"""Which records an invocation selects, and the options class they compose.

A command's options dataclass names its selecting options in the class attribute
``__tuneforge_selects__`` (option name -> record kind: ``train_type`` -> tuners,
``device`` -> devices, ``engine`` -> inference engines, ...). The values of those
options, read from the YAML file and the flags before anything else, pick one record
of each kind; the command's flags and YAML keys are then its own options plus the
``options`` dataclass of each picked record (``tuneforge.options.compose``).

The model family (``model_family`` -> model families) is selected even when
``--model-family`` is left out: it is the family of the ``--model`` checkpoint, told
from its ``config.json`` alone (a run dir: its recorded family), so a vision-language
family's ``--max-pixels`` is a flag of every command given such a model. A model that
cannot be told now (a hub id not downloaded, a typo) selects none; the command reports
a bad model itself. An option of the family that a run recorded is the default of the
commands given that run (``recorded_defaults``).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

from . import options


MODEL_OPTION = "model"  # the option whose checkpoint selects the model family when --model-family is left out


def selecting_value(cls, name: str, *mappings: Mapping[str, Any]) -> Any:
    """The value a selecting option takes: the last mapping that sets it, else the class default
    (None for an option the class lacks: export's model family is the run's)."""
    field = next((f for f in dataclasses.fields(cls) if f.name == name), None)
    value = options.default_of(field) if field is not None else None
    for mapping in mappings:
        for key, given in (mapping or {}).items():
            if options.normalise_key(key) == name and given is not None and given != ():
                value = given
    return value


def _default_device(registry) -> str | None:
    available = [d for d in registry.all("devices") if d.is_available()]
    return max(available, key=lambda d: d.priority).name if available else None


def read_options(cls) -> list[str]:
    """The options whose values the selection reads: the selecting ones, and ``model`` where the
    model family is selected (its checkpoint names the family)."""
    names = list(options.selects(cls))
    if "model_families" in options.selects(cls).values() and any(f.name == MODEL_OPTION for f in dataclasses.fields(cls)):
        names.append(MODEL_OPTION)
    return names


def _default_family(cls, mappings) -> str | None:
    from .modeling import family_name_for

    return family_name_for(selecting_value(cls, MODEL_OPTION, *mappings))


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
        if value is None and kind == "model_families":
            value = _default_family(cls, mappings)
        if value is None or not isinstance(value, str) or not registry.has(kind, value):
            continue
        selected[kind] = (value, registry.get(kind, value).options)
    return selected


def compose_for(cls, *mappings: Mapping[str, Any], default_device: bool = True):
    """``cls`` extended with the options of the records the mappings select."""
    return options.compose(cls, selected_records(cls, *mappings, default_device=default_device))


def recorded_defaults(composed, mappings) -> dict[str, Any]:
    """The options of the selected model family that the run given as ``--model`` recorded
    (the defaults under the YAML file and the flags): a run trained with ``--max-pixels``
    is answered, served and exported with it unless told otherwise."""
    selected = (getattr(composed, options.SELECTED_ATTRIBUTE, None) or {}).get("model_families")
    if not selected or selected[1] is None:
        return {}
    from .runrecord import RunRecord

    spec = selecting_value(composed, MODEL_OPTION, *mappings)
    try:
        run = RunRecord.find(spec) if isinstance(spec, str) and spec else None
    except Exception:  # an unreadable record: the command says so when it loads the run
        return {}
    recorded = (run.options.get("model_families") or {}) if run is not None else {}
    if recorded.get("name") != selected[0]:
        return {}
    fields = {f.name for f in dataclasses.fields(selected[1])}
    return {key: value for key, value in (recorded.get("options") or {}).items() if key in fields}


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


def _warn(sentence: str) -> None:
    import click

    click.echo(f"warning: {sentence}", err=True)


def expand_aliases(cls, mappings) -> list[dict]:
    """The mappings with the deprecated spellings turned into the options they stand for.

    ``engine_option: [NAME=VALUE, ...]`` becomes the engine's own ``NAME`` keys, checked
    against the options of the selected engine; ``exporter: NAME`` becomes ``format: NAME``
    and ``merge_lora: true`` becomes ``format: merged``. Each prints a warning naming the
    flag to use instead (they go in the release after next).
    """
    expanded = [dict(mapping or {}) for mapping in mappings]
    fields = {f.name for f in dataclasses.fields(cls)}
    if "engine_option" in fields:
        for mapping in expanded:
            _expand_engine_options(cls, mapping, expanded)
    if "format" in fields:
        for mapping in expanded:
            _expand_export_format(mapping)
    return expanded


def _expand_engine_options(cls, mapping: dict, mappings: list[dict]) -> None:
    import yaml

    key = next((k for k in mapping if options.normalise_key(k) == "engine_option"), None)
    if key is None:
        return
    entries = mapping.pop(key)
    entries = [entries] if isinstance(entries, str) else list(entries or ())
    if not entries:
        return
    engine = selecting_value(cls, "engine", *mappings)
    composed = compose_for(cls, *mappings, default_device=False)
    known = []
    if getattr(composed, options.SELECTED_ATTRIBUTE, {}).get("inference_engines"):
        from .inference import accepted_options

        known = accepted_options(engine)
    given = {options.normalise_key(k) for k in mapping}
    for entry in entries:
        name, sep, value = str(entry).partition("=")
        name = options.normalise_key(name)
        if not sep or not name:
            raise options.OptionError(f"--engine-option '{entry}' is not NAME=VALUE; write it as --engine-option compile=true.")
        if name not in known:
            raise options.OptionError(
                f"Inference engine '{engine}' does not take the option '{name}'; it takes: {', '.join(known)}. "
                f"Leave that option out or pick another engine."
            )
        if name in given:
            raise options.OptionError(f"--engine-option '{entry}' sets '{name}' a second time; give it once.")
        try:
            parsed = yaml.safe_load(value) if value.strip() else ""
        except yaml.YAMLError:
            parsed = value
        flag = "--" + name.replace("_", "-")
        real = flag if parsed is True else f"--no-{flag[2:]}" if parsed is False else f"{flag} {value}"
        _warn(f"--engine-option {entry} is deprecated; pass {real} instead.")
        mapping[name] = parsed
        given.add(name)


def _expand_export_format(mapping: dict) -> None:
    from .config import MERGE_LORA_EXPORTER, MERGED_FORMAT

    keys = {options.normalise_key(k): k for k in mapping}
    exporter = mapping.pop(keys["exporter"]) if "exporter" in keys else None
    merge = mapping.pop(keys["merge_lora"]) if "merge_lora" in keys else None
    merge = merge in (True, "true", "True", "yes", "1") if merge is not None else False
    if exporter is not None:
        _warn(f"--exporter is deprecated; pass --format {exporter} instead.")
    if merge:
        _warn(f"--merge-lora is deprecated; pass --format {MERGED_FORMAT} instead.")
        if exporter is not None and exporter not in (MERGED_FORMAT, MERGE_LORA_EXPORTER):
            raise options.OptionError(
                f"--merge-lora and --exporter '{exporter}' ask for different exporters; pass only one of them."
            )
    name = exporter if exporter is not None else MERGED_FORMAT if merge else None
    if name is not None:
        if "format" in keys and mapping[keys["format"]] != name:
            raise options.OptionError(
                f"--format '{mapping[keys['format']]}' and the deprecated spelling of '{name}' ask for different exporters; pass only --format."
            )
        mapping["format"] = name
