"""Writes the configuration reference (docs/config.md) from the option dataclasses.

``python -m tuneforge.docgen > docs/config.md``; a test checks the file is current.
"""

from __future__ import annotations

import dataclasses
import typing

from . import config, options
from .plan import PlanConfig
from .server.config import DeployConfig

COMMANDS = [
    ("tuneforge sft", config.SFTConfig),
    ("tuneforge infer", config.InferConfig),
    ("tuneforge eval", config.EvalConfig),
    ("tuneforge deploy", DeployConfig),
    ("tuneforge export", config.ExportConfig),
    ("tuneforge plan", PlanConfig),
]


def _default(field) -> str:
    if field.default is not dataclasses.MISSING:
        value = field.default
    elif field.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        value = field.default_factory()  # type: ignore[misc]
    else:
        return "(required)"
    return "—" if value is None else f"`{value}`"


# The record kinds whose options a command adds when an invocation selects one, with the
# flag that selects it.
SELECTED_KINDS = [
    ("tuners", "--train-type"),
    ("devices", "--device"),
    ("parallel_backends", "--parallel-backend"),
    ("training_methods", "rlhf --method"),
    ("inference_engines", "--engine"),
    ("exporters", "export --format"),
    ("model_families", "--model-family, else the --model checkpoint's"),
]


def _table(fields, hints) -> list[str]:
    lines = ["| YAML key | flag | type | default | meaning |", "| --- | --- | --- | --- | --- |"]
    for field in sorted(fields, key=options.group_rank):
        kind = options._describe(hints[field.name])
        help_text = field.metadata.get("help", "").replace("|", "\\|")
        lines.append(f"| `{field.name}` | `{options.flag_name(field)}` | {kind} | {_default(field)} | {help_text} |")
    return lines


def _core_registry():
    """The core's own records only, so the page does not depend on what else is installed."""
    from .plugins import PluginManager
    from .registry import Registry

    manager = PluginManager()
    manager.load_builtins()
    return Registry(manager)


def _record_sections() -> list[str]:
    from .registry import kind_word

    registry = _core_registry()
    shared = {f.name for f in dataclasses.fields(config.TrainConfig)}
    lines = [
        "## Options of the records an invocation selects",
        "",
        "A command also takes the options of the records it selects: the tuner (`--train-type`),",
        "the device (`--device`; unset: the available one with the highest priority), the parallel",
        "backend, the training method, the inference engine (`--engine`) and the exporter",
        "(`export --format`), and the model family (`--model-family`, else the one the `--model`",
        "checkpoint's config.json matches). `--help` lists them once the selecting option is given; a record's",
        "option given without that record selected is refused with the flag that selects it.",
        "Plugins add records with options of their own (docs/plugins.md).",
        "",
    ]
    for kind, selector in SELECTED_KINDS:
        by_class: dict[type, list[str]] = {}  # records sharing one options class share a table
        for record in sorted(registry.all(kind), key=lambda r: r.name):
            if record.options is not None:
                by_class.setdefault(record.options, []).append(record.name)
        for options_class, names in by_class.items():
            fields = [f for f in dataclasses.fields(options_class) if kind != "training_methods" or f.name not in shared]
            if not fields:
                continue
            word = kind_word(kind) + ("s" if len(names) > 1 else "")
            lines += [f"### {word} {', '.join(f'`{n}`' for n in names)} (`{selector} NAME`)", ""]
            lines += _table(fields, typing.get_type_hints(options_class)) + [""]
    return lines


def render() -> str:
    lines = [
        "# Configuration reference",
        "",
        "Every option is declared once, in `core/tuneforge/config.py`; the YAML keys and the",
        "command-line flags below are both derived from that declaration. In YAML, write the",
        "key with underscores (`lora_rank: 16`) or dashes; on the command line, as a flag",
        "(`--lora-rank 16`). Flags override the YAML file given as the first argument.",
        "List options take a YAML list or one value; on the command line, repeat the flag.",
        "Yes/no options are `--name` / `--no-name`.",
        "",
        "This page is generated: `python -m tuneforge.docgen > docs/config.md`.",
        "",
    ]
    for command, cls in COMMANDS:
        lines += [f"## `{command}`", ""] + _table(dataclasses.fields(cls), typing.get_type_hints(cls)) + [""]
    lines += _record_sections()
    lines += [
        "Training methods that plugins add (`tuneforge rlhf --method NAME`) extend the `sft`",
        "options with their own; `--help` on the command lists them.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    print(render(), end="")
