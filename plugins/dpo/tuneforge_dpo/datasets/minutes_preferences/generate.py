"""Write the bundled minutes-preferences dataset: seeded, the same files every time.

    python -m tuneforge_dpo.datasets.minutes_preferences.generate [--out DIR]

Each row is one short meeting (at most two decisions and two action items) of the
core's meeting-minutes generator, given as short
notes (date, topic, who was there, what was agreed, who does what by when). The
chosen answer is the minutes in the house structure (``TOPIC / DATE / ATTENDEES /
DECISIONS / ACTION ITEMS``, checked by ``tuneforge.api.check_minutes``);
the rejected answer says the same things in a way that breaks it: as prose, as
loose bullets, or with sections out of order and dates in words. Both answers carry
the same facts, so the only thing a preference can learn is the form.

The test split uses other seeds and the generator's held-out speaker names.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import random
from pathlib import Path
from typing import Sequence

from tuneforge.api import check_minutes as check
from tuneforge.api import make_meeting

INSTRUCTION = "Write the minutes of this meeting in our house format."
SPLIT_SIZES = {"train": 192, "test": 32}
# Short meetings only, so that a pair is about 300 tokens and a preference step on a CPU takes seconds.
MAX_DECISIONS, MAX_ACTIONS = 2, 2
MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August",
          "September", "October", "November", "December")
WEEKDAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")


def _words_date(iso: str, weekday: bool = False) -> str:
    day = dt.date.fromisoformat(iso)
    text = f"{MONTHS[day.month - 1]} {day.day}, {day.year}"
    return f"{WEEKDAYS[day.weekday()]}, {text}" if weekday else text


def _clause(sentence: str) -> str:
    """'Request a budget increase.' -> 'request a budget increase'."""
    sentence = sentence.strip().rstrip(".")
    return sentence[:1].lower() + sentence[1:]


def _join(items: Sequence[str]) -> str:
    items = list(items)
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def notes(meta: dict, attendees: Sequence[str]) -> str:
    """The meeting as short notes: what a person would jot down and ask to have written up."""
    lines = [
        f"Meeting on {_words_date(meta['date'], weekday=True)}: {meta['title']}.",
        f"Present: {', '.join(attendees)}.",
        "Agreed: " + "; ".join(_clause(d) for d in meta["decisions"]) + ".",
        "To do: " + "; ".join(
            f"{item['owner']} will {_clause(item['task'])} by {_words_date(item['due'])}" for item in meta["action_items"]
        ) + ".",
    ]
    return "\n".join(lines)


def _prose(meta: dict, attendees: Sequence[str], rng: random.Random) -> str:
    decided = _join([_clause(d) for d in meta["decisions"]])
    tasks = " ".join(
        f"{item['owner']} will {_clause(item['task'])} by {_words_date(item['due'])}." for item in meta["action_items"]
    )
    opener = rng.choice(("The meeting", "Our meeting", "Today's meeting"))
    return (
        f"{opener} on {_words_date(meta['date'])} was about {meta['title'][:1].lower() + meta['title'][1:]}. "
        f"{_join(attendees)} attended. The group decided to {decided}. {tasks}"
    )


def _loose_bullets(meta: dict, attendees: Sequence[str], rng: random.Random) -> str:
    lines = [meta["title"], f"- When: {_words_date(meta['date'])}", f"- Who: {', '.join(attendees)}"]
    lines += [f"- Decided: {_clause(d)}" for d in meta["decisions"]]
    lines += [f"- {item['owner']}: {_clause(item['task'])} ({_words_date(item['due'])})" for item in meta["action_items"]]
    return "\n".join(lines)


def _shuffled_sections(meta: dict, attendees: Sequence[str], rng: random.Random) -> str:
    actions = [f"- {item['owner']} to {_clause(item['task'])} by {_words_date(item['due'])}" for item in meta["action_items"]]
    return "\n".join([
        f"TOPIC: {meta['title']}",
        "ACTION ITEMS:", *actions,
        f"DATE: {_words_date(meta['date'])}",
        "DECISIONS:", *[f"- {d}" for d in meta["decisions"]],
        f"ATTENDEES: {', '.join(attendees)}",
    ])


REJECTED_STYLES = (_prose, _loose_bullets, _shuffled_sections)


def _attendees(minutes: str) -> list[str]:
    line = next(line for line in minutes.splitlines() if line.startswith("ATTENDEES:"))
    return [name.strip() for name in line.split(":", 1)[1].split(",")]


def make_rows(split: str, count: int) -> list[dict]:
    """``count`` preference rows of ``split``; every chosen answer passes the structure check and no rejected one does."""
    rows = []
    index = 0
    while len(rows) < count:
        seed = f"minutes-preferences/{split}/{index}"
        meeting = make_meeting(seed, held_out=split == "test")
        index += 1
        if meeting is None or len(meeting.meta["decisions"]) > MAX_DECISIONS or len(meeting.meta["action_items"]) > MAX_ACTIONS:
            continue
        rng = random.Random(seed)
        attendees = _attendees(meeting.minutes)
        style = REJECTED_STYLES[len(rows) % len(REJECTED_STYLES)]
        rejected = style(meeting.meta, attendees, rng)
        assert not check(meeting.minutes, meeting.meta), seed
        assert check(rejected, meeting.meta), seed
        rows.append({
            "prompt": f"{INSTRUCTION}\n\n{notes(meeting.meta, attendees)}",
            "chosen": meeting.minutes,
            "rejected": rejected,
            "meta": {"id": f"{split}-{len(rows):04d}", "rejected_style": style.__name__.strip("_"), "date": meeting.meta["date"]},
        })
    return rows


def write(directory: str | Path) -> dict[str, Path]:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    written = {}
    for split, count in SPLIT_SIZES.items():
        path = directory / f"{split}.jsonl"
        with open(path, "w", encoding="utf-8", newline="\n") as handle:
            for row in make_rows(split, count):
                handle.write(json.dumps(row, ensure_ascii=False) + "\n")
        written[split] = path
    return written


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Write the minutes-preferences dataset (the same files every time).")
    parser.add_argument("--out", default=str(Path(__file__).parent), help="Directory for train.jsonl and test.jsonl.")
    args = parser.parse_args(argv)
    for split, path in write(args.out).items():
        print(f"Wrote {SPLIT_SIZES[split]} {split} rows to {path}")


if __name__ == "__main__":
    main()
