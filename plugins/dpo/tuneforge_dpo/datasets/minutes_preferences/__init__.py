"""minutes-preferences: meeting notes, minutes in the house structure (chosen) vs. minutes that break it (rejected).

``split_path(split)`` is the bundled jsonl of a split. The files are written by
``python -m tuneforge_dpo.datasets.minutes_preferences.generate``.
"""

from __future__ import annotations

from pathlib import Path

from tuneforge.api import DataError

NAME = "minutes-preferences"
SPLITS = ("train", "test")
DIRECTORY = Path(__file__).parent


def split_path(split: str) -> Path:
    if split not in SPLITS:
        raise DataError(f"The dataset '{NAME}' has no split '{split}'; use one of: {', '.join(SPLITS)}.")
    return DIRECTORY / f"{split}.jsonl"
