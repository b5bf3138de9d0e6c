"""Writes the configuration reference (docs/config.md) from the option dataclasses.

``python -m tuneforge.docgen > docs/config.md``; a test checks the file is current.
"""

from __future__ import annotations

import dataclasses
import typing

from . import config, options
from .server.config import DeployConfig

COMMANDS = [
    ("tuneforge sft", config.SFTConfig),
    ("tuneforge infer", config.InferConfig),
    ("tuneforge eval", config.EvalConfig),
    ("tuneforge deploy", DeployConfig),
    ("tuneforge export", config.ExportConfig),
]


def _default(field) -> str:
    if field.default is not dataclasses.MISSING:
        value = field.default
    elif field.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        value = field.default_factory()  # type: ignore[misc]
    else:
        return "(required)"
    return "—" if value is None else f"`{value}`"


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
        lines += [f"## `{command}`", "", "| YAML key | flag | type | default | meaning |", "| --- | --- | --- | --- | --- |"]
        hints = typing.get_type_hints(cls)
        fields = sorted(dataclasses.fields(cls), key=options.group_rank)
        for field in fields:
            kind = options._describe(hints[field.name])
            help_text = field.metadata.get("help", "").replace("|", "\\|")
            lines.append(f"| `{field.name}` | `{options.flag_name(field)}` | {kind} | {_default(field)} | {help_text} |")
        lines.append("")
    lines += [
        "Training methods that plugins add (`tuneforge rlhf --method NAME`) extend the `sft`",
        "options with their own; `--help` on the command lists them.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    print(render(), end="")
