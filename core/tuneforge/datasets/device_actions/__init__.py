"""device-actions: typed commands to a meeting and desktop assistant, answered with tool calls or refused.

``split_path(split)`` is the bundled jsonl of a split; ``load(split)`` its rows;
``evaluate(rows, answers)`` scores answers (valid JSON, action accuracy, argument F1,
refusal accuracy: ``tuneforge.toolcalls.score``). ``schema.TOOLS`` is the fixed tool
schema every row carries. The files are written by
``python -m tuneforge.datasets.device_actions.generate``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping, Sequence

from tuneforge.errors import DataError

from .schema import SYSTEM, TOOL_NAMES, TOOLS

NAME = "device-actions"
SPLITS = ("train", "test", "hard", "rl", "holdout")
DIRECTORY = Path(__file__).parent

__all__ = ["NAME", "SPLITS", "SYSTEM", "TOOLS", "TOOL_NAMES", "evaluate", "load", "split_path"]


def split_path(split: str) -> Path:
    """The bundled jsonl file of ``split``."""
    if split not in SPLITS:
        raise DataError(
            f"The dataset '{NAME}' has no split '{split}'; use one of: {', '.join(SPLITS)} (for example '{NAME}:test')."
        )
    return DIRECTORY / f"{split}.jsonl"


def load(split: str) -> list[dict]:
    """The rows of ``split``: ``messages`` (system, command, answer), ``tools`` and ``meta``."""
    with open(split_path(split), encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def evaluate(rows: Sequence[Mapping[str, Any]], answers: Sequence[Any], template: Any = None) -> dict:
    """Valid-JSON rate, action accuracy, argument F1 and refusal accuracy of ``answers`` (text or assistant messages).

    ``template``: the chat template the model answered with; its own parser reads the calls written in text.
    """
    from tuneforge.toolcalls import score

    return score(rows, answers, template)
