"""meeting-minutes: meeting transcripts and their minutes in one fixed structure.

``split_path(split)`` is the bundled jsonl of a split; ``load(split)`` its rows;
``structure.check`` and ``structure.score`` judge generated minutes. The files are
written by ``python -m tuneforge.datasets.meeting_minutes.generate``.
"""

from __future__ import annotations

import json
from pathlib import Path

from tuneforge.errors import DataError

from .structure import check, score

NAME = "meeting-minutes"
SPLITS = ("train", "train-long", "test", "hard", "long")
DIRECTORY = Path(__file__).parent

__all__ = ["NAME", "SPLITS", "check", "load", "score", "split_path"]


def split_path(split: str) -> Path:
    """The bundled jsonl file of ``split``."""
    if split not in SPLITS:
        raise DataError(
            f"The dataset '{NAME}' has no split '{split}'; use one of: {', '.join(SPLITS)} "
            f"(for example '{NAME}:{SPLITS[-1]}')."
        )
    return DIRECTORY / f"{split}.jsonl"


def load(split: str) -> list[dict]:
    """The rows of ``split``: ``messages`` (user transcript, assistant minutes) and ``meta``."""
    with open(split_path(split), encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]
