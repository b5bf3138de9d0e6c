"""whiteboard-notes: pictures of meeting whiteboards and their notes in the meeting-minutes structure.

``split_path(split)`` is the jsonl of a split, drawn on first use into
``$TUNEFORGE_HOME/datasets/whiteboard-notes-v<VERSION>/`` (a few seconds; the pictures
beside it); ``load(split)`` its rows; ``evaluate(rows, answers)`` scores answers with
the core's meeting-minutes scorer, per split. ``generate.py`` draws the boards,
``render.py`` the pictures. Importing this module imports neither Pillow nor the
generator.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

from tuneforge.api import DataError, DatasetSource, check_minutes, score_minutes, tuneforge_home

NAME = "whiteboard-notes"
SPLITS = ("train", "test", "hard")
# Bump when the generator or the renderer changes what it writes, so caches are redrawn.
VERSION = 2

__all__ = ["NAME", "SPLITS", "VERSION", "cache_dir", "datasets", "evaluate", "load", "split_path"]


def cache_dir() -> Path:
    """Where the drawn splits are kept: ``$TUNEFORGE_HOME/datasets/whiteboard-notes-v<VERSION>``."""
    return tuneforge_home() / "datasets" / f"{NAME}-v{VERSION}"


def split_path(split: str) -> Path:
    """The jsonl file of ``split``, its pictures drawn first if this machine has not drawn them yet."""
    if split not in SPLITS:
        raise DataError(
            f"The dataset '{NAME}' has no split '{split}'; use one of: {', '.join(SPLITS)} (for example '{NAME}:test')."
        )
    directory = cache_dir()
    path = directory / f"{split}.jsonl"
    if path.is_file():
        return path
    from .generate import SPLIT_SIZES, write_split

    started = time.perf_counter()
    print(f"Drawing the {SPLIT_SIZES[split]} {split} whiteboards of {NAME} (once) ...", file=sys.stderr)
    try:
        write_split(directory, split)
    except PermissionError as exc:
        raise DataError(
            f"Cannot write the {NAME} pictures under '{directory}' ({exc.strerror}); set TUNEFORGE_HOME to a writable directory."
        ) from None
    print(f"Drew them in {time.perf_counter() - started:.1f} s into {directory}", file=sys.stderr)
    return path


def load(split: str) -> list[dict]:
    """The rows of ``split``: ``messages`` (user: picture and instruction; assistant: the notes) and ``meta``."""
    with open(split_path(split), encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def evaluate(rows: Sequence[Mapping[str, Any]], answers: Sequence[str | None]) -> dict:
    """The meeting-minutes scores of ``answers``, worded for notes, for all rows and for each split among them.

    Adds ``per_split`` (the scores of each split's rows, where the rows hold more than
    one) and ``per_row`` (whether each answer follows the structure, its problems, and
    its action items matched on owner and due date).
    """
    scores = score_minutes(rows, answers)
    splits = list(dict.fromkeys(row.get("meta", {}).get("split", "?") for row in rows))
    report = _report(scores, splits[0] if len(splits) == 1 else "all")
    if len(splits) > 1:
        scores["per_split"] = {}
        for split in splits:
            chosen = [i for i, row in enumerate(rows) if row.get("meta", {}).get("split", "?") == split]
            part = score_minutes([rows[i] for i in chosen], [answers[i] for i in chosen])
            part.pop("report")
            scores["per_split"][split] = part
            report += _report(part, split)
    scores["report"] = report
    per_row = []
    for row, answer in zip(rows, answers):
        one = score_minutes([row], [answer])
        per_row.append({
            "follows_structure": bool(one["follows_structure"]),
            "problems": check_minutes(answer or "", row["meta"]),
            "action_items_matched": one["action_items_matched"],
            "action_items_expected": one["action_items_expected"],
        })
    scores["per_row"] = per_row
    return scores


def _report(scores: Mapping[str, Any], split: str) -> list[str]:
    total, follows = scores["total"], scores["follows_structure"]
    expected, matched = scores["action_items_expected"], scores["action_items_matched"]
    return [
        f"[{split}] notes that follow the structure: {follows}/{total} ({scores['rate']:.0%})",
        f"[{split}] action items with the right owner and due date: {matched}/{expected} "
        f"({(matched / expected if expected else 0.0):.0%})",
        f"[{split}] date right: {scores['date_correct']:.0%}; attendees exactly right: {scores['attendees_correct']:.0%}; "
        f"decision word overlap: {scores['decision_overlap']:.2f}",
    ]


def datasets():
    yield DatasetSource(
        name=NAME,
        description="Whiteboard pictures and their notes in the meeting-minutes structure "
        "(drawn on first use: 320 train / 60 test / 60 hard)",
        resolve=lambda split: str(split_path(split)),
        splits=SPLITS,
        evaluate=evaluate,
    )
