"""Options are declared once, as dataclass fields with help text.

``option(default, "help")`` declares a field; ``click_options(cls)`` derives the
command-line flags from the dataclass; ``build(cls, yaml_mapping, cli_values)``
merges a YAML mapping and flags (flags win) and checks every key and type,
failing with a sentence that names the key.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, Literal, Mapping

import click


class OptionError(click.UsageError):
    """A bad option value or key; the message names it and says what to do."""


def option(default: Any = dataclasses.MISSING, help: str = "", *, choices=None, flag=None, group="general"):
    """Declare a configuration field: its default, help text and (optionally) choices."""
    metadata = {"help": help, "choices": choices, "flag": flag, "group": group}
    if isinstance(default, (list, dict)):
        value = default
        return dataclasses.field(default_factory=lambda: type(value)(value), metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def flag_name(field: dataclasses.Field) -> str:
    return field.metadata.get("flag") or "--" + field.name.replace("_", "-")


def _unwrap_optional(tp):
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return tp, False


def _field_types(cls) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _describe(tp) -> str:
    tp, optional = _unwrap_optional(tp)
    origin = typing.get_origin(tp)
    if origin is list:
        (inner,) = typing.get_args(tp) or (str,)
        plural = {int: "integers", float: "numbers", bool: "true/false values", str: "strings"}
        text = "a list of " + plural.get(inner, f"({_describe(inner)})")
    elif origin is Literal:
        text = "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    else:
        text = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}.get(
            tp, getattr(tp, "__name__", str(tp))
        )
    return text + (" or null" if optional else "")


def coerce(cls_name: str, key: str, tp, value, choices=None):
    """Convert ``value`` to ``tp`` or raise OptionError naming ``key``."""
    inner, optional = _unwrap_optional(tp)
    if value is None:
        if optional:
            return None
        raise OptionError(f"Option '{key}' cannot be null; give {_describe(tp)}.")
    origin = typing.get_origin(inner)
    try:
        if origin is list:
            (item_type,) = typing.get_args(inner) or (str,)
            if isinstance(value, (str, int, float)) and not isinstance(value, bool):
                value = [value]
            if not isinstance(value, (list, tuple)):
                raise TypeError
            return [coerce(cls_name, key, item_type, v) for v in value]
        if origin is Literal:
            allowed = typing.get_args(inner)
            for choice in allowed:  # flags arrive as strings, whatever the choice's type
                if type(value) is type(choice) and value == choice or isinstance(value, str) and value == str(choice):
                    return choice
            _bad_choice(key, value, [str(a) for a in allowed])
        if inner is bool:
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in {"true", "false", "yes", "no", "1", "0"}:
                return value.lower() in {"true", "yes", "1"}
            raise TypeError
        if inner is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise TypeError
            return int(value)
        if inner is float:
            if isinstance(value, bool):
                raise TypeError
            return float(value)
        if inner is str:
            if isinstance(value, (dict, list)):
                raise TypeError
            value = str(value)
            if choices and value not in choices:
                _bad_choice(key, value, list(choices))
            return value
        if inner in (dict, typing.Any):
            return value
    except OptionError:
        raise
    except (TypeError, ValueError):
        pass
    else:
        return value
    raise OptionError(f"Option '{key}' must be {_describe(tp)}, not {value!r} ({type(value).__name__}).")


def _bad_choice(key: str, value, choices: list[str]):
    import difflib

    close = difflib.get_close_matches(str(value), choices, n=1)
    hint = f" Did you mean '{close[0]}'?" if close else ""
    raise OptionError(f"Option '{key}' is {value!r}; choose one of {', '.join(choices)}.{hint}")


def normalise_key(key: str) -> str:
    return str(key).strip().replace("-", "_")


def build(cls, *mappings: Mapping[str, Any]):
    """Make a ``cls`` from mappings (later ones win), checking keys and types.

    A command's class that names selecting options (``__tuneforge_selects__``) is first
    composed with the options of the records the mappings select (``compose``), so a
    training config built with ``train_type: lora`` has LoRA's fields. The keys are
    checked before the default device is looked up (its availability may import torch),
    so a bad key or value is reported before anything heavy loads.
    """
    if selects(cls) and getattr(cls, SELECTED_ATTRIBUTE, None) is None:
        from .selection import compose_for, expand_aliases, unselected_fields

        mappings = tuple(expand_aliases(cls, mappings))
        cheap = compose_for(cls, *mappings, default_device=False)
        _checked_values(cheap, mappings, deferred=unselected_fields(cheap))
        cls = compose_for(cls, *mappings)
        from .selection import recorded_defaults

        mappings = (recorded_defaults(cls, mappings), *mappings)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    values = _checked_values(cls, mappings)
    missing = [
        name
        for name, f in fields.items()
        if name not in values
        and f.default is dataclasses.MISSING
        and f.default_factory is dataclasses.MISSING  # type: ignore[misc]
    ]
    if missing:
        raise OptionError(f"Option '{missing[0]}' is required; pass {flag_name(fields[missing[0]])} or set it in the YAML file.")
    return cls(**values)


def _checked_values(cls, mappings, deferred: frozenset = frozenset()) -> dict[str, Any]:
    """The mappings' values for ``cls``'s fields, each key and type checked (``deferred`` keys skipped)."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    types_ = _field_types(cls)
    values: dict[str, Any] = {}
    for mapping in mappings:
        for raw_key, value in (mapping or {}).items():
            key = normalise_key(raw_key)
            if key not in fields:
                if key in deferred:
                    continue
                if selects(cls):
                    from .selection import owner_of

                    sentence = owner_of(cls, key)
                    if sentence:
                        raise OptionError(sentence)
                import difflib

                close = difflib.get_close_matches(key, fields, n=1)
                hint = f" Did you mean '{close[0]}'?" if close else ""
                raise OptionError(
                    f"Unknown option '{raw_key}'.{hint} See `--help` for the options this command takes."
                )
            values[key] = coerce(cls.__name__, key, types_[key], value, fields[key].metadata.get("choices"))
    return values


def load_yaml(path: str | Path) -> dict:
    import yaml

    path = Path(path)
    if not path.is_file():
        raise OptionError(f"Config file '{path}' does not exist; pass the path of a YAML file.")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise OptionError(f"Config file '{path}' is not valid YAML ({exc}).") from None
    if not isinstance(data, dict):
        raise OptionError(f"Config file '{path}' must hold a mapping of option names to values.")
    return data


GROUP_ORDER = ["model", "data", "tuner", "training", "generation", "general"]


def group_rank(field: dataclasses.Field) -> float:
    """Where a field's group goes in ``--help``; a group a plugin invents comes just before 'general'."""
    group = field.metadata.get("group", "general")
    return GROUP_ORDER.index(group) if group in GROUP_ORDER else len(GROUP_ORDER) - 1.5


def default_of(field: dataclasses.Field) -> Any:
    """A field's default value (None for a required field)."""
    if field.default is not dataclasses.MISSING:
        return field.default
    if field.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return field.default_factory()  # type: ignore[misc]
    return None


def click_options(cls):
    """A decorator adding one click option per field of ``cls``.

    Flags default to ``None`` so that only the flags actually given override the
    YAML file; the dataclass defaults apply last.
    """
    types_ = _field_types(cls)

    def decorate(func):
        ordered = sorted(dataclasses.fields(cls), key=group_rank)
        for f in reversed(ordered):
            tp, _ = _unwrap_optional(types_[f.name])
            origin = typing.get_origin(tp)
            name = flag_name(f)
            default = default_of(f)
            help_text = f.metadata.get("help", "") + (" (repeatable)" if origin is list else "")
            if default not in (None, "", []) and not isinstance(default, bool):
                shown = ", ".join(map(str, default)) if isinstance(default, list) else default
                help_text += f"  [default: {shown}]"
            if tp is bool:
                negative = "--no-" + name[2:]
                func = click.option(f"{name}/{negative}", f.name, default=None, help=help_text + (" [default: on]" if default else ""))(func)
            elif origin is list:
                func = click.option(name, f.name, multiple=True, default=None, help=help_text)(func)
            elif origin is Literal:
                func = click.option(name, f.name, type=click.Choice([str(a) for a in typing.get_args(tp)]), default=None, help=help_text)(func)
            else:
                click_type = {int: int, float: float}.get(tp, str)
                choices = f.metadata.get("choices")
                if choices:
                    click_type = click.Choice(list(choices))
                func = click.option(name, f.name, type=click_type, default=None, help=help_text)(func)
        return func

    return decorate


def given(values: Mapping[str, Any]) -> dict:
    """The flags the user actually passed (click gives None / () for the others)."""
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in values.items() if v is not None and v != ()}


def to_dict(obj) -> dict:
    return dataclasses.asdict(obj)


SELECTED_ATTRIBUTE = "__tuneforge_selected__"
SELECTS_ATTRIBUTE = "__tuneforge_selects__"


def selects(cls) -> dict[str, str]:
    """A command's selecting options: option name -> the record kind its value names.

    Gathered over the class's bases, so a command made of several option groups
    (``ModelOptions`` selects the model family, ``EngineOptions`` the engine) selects
    what each of them does; a subclass's entry wins."""
    found: dict[str, str] = {}
    for klass in reversed(getattr(cls, "__mro__", (cls,))):
        found.update(vars(klass).get(SELECTS_ATTRIBUTE) or {})
    return found


def compose(cls, selected: Mapping[str, tuple[str, type | None]]):
    """``cls`` with the options dataclasses of the ``selected`` records as extra bases.

    ``selected`` maps a record kind to ``(record name, options class or None)``; the
    result keeps it as ``__tuneforge_selected__`` (read by ``selected_options``). A
    record option that another selected record, or the command itself, also declares
    is a plugin bug, refused with a sentence naming both.
    """
    key = (cls, tuple(sorted((kind, name, oc) for kind, (name, oc) in selected.items())))
    if key not in _COMPOSED:
        _COMPOSED[key] = _compose(cls, selected)
    return _COMPOSED[key]


# One class per command and selection, so two configs of the same selection compare equal.
_COMPOSED: dict[tuple, type] = {}


def _compose(cls, selected):
    from .registry import kind_word

    owners = {f.name: "the command's own options" for f in dataclasses.fields(cls)}
    bases: list[type] = []
    for kind, (name, options_cls) in selected.items():
        if options_cls is None or options_cls in bases:
            continue
        owner = f"the {kind_word(kind)} '{name}'"
        for f in dataclasses.fields(options_cls):
            if f.name in owners:
                raise OptionError(
                    f"Option '{f.name}' is declared by both {owners[f.name]} and {owner}; "
                    f"the plugin providing {owner} must rename it."
                )
            owners[f.name] = owner
        bases.append(options_cls)
    composed = dataclasses.make_dataclass(cls.__name__, [], bases=(*bases, cls))
    composed.__qualname__ = cls.__qualname__
    composed.__module__ = cls.__module__
    composed.__doc__ = cls.__doc__
    setattr(composed, SELECTED_ATTRIBUTE, {kind: (name, oc) for kind, (name, oc) in selected.items()})
    return composed


def selected_options(config) -> dict[str, dict[str, Any]]:
    """The options of each record an invocation selected, by record kind.

    ``{kind: {"name": record name, "options": {field: value}}}``, read from a config
    whose class was composed from a command's options and the selected records'
    ones (its ``__tuneforge_selected__`` class attribute maps each kind to
    ``(record name, options dataclass)``); empty for a plain options dataclass.
    The run record stores it, so what a run was trained with is kept per record.
    """
    selected = getattr(type(config), SELECTED_ATTRIBUTE, None) or {}
    return {
        kind: {
            "name": name,
            "options": {f.name: getattr(config, f.name) for f in dataclasses.fields(cls)} if cls else {},
        }
        for kind, (name, cls) in selected.items()
    }
