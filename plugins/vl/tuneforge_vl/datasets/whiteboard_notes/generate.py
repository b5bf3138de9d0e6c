"""Write the whiteboard-notes dataset: seeded, the same files every time.

    python -m tuneforge_vl.datasets.whiteboard_notes.generate --out DIR [--show N]

Each row is one whiteboard: a picture (``<split>/<nnnn>.png``) in a user
message with a short instruction, the notes in the fixed structure of the core's
meeting-minutes dataset as the assistant message, and the board's ground truth under
``meta`` (attendees as ``speakers``, decisions, action items with owner and due
date), so the meeting-minutes checker scores the answers unchanged.

What a board says comes from a bounded vocabulary, small enough for a small vision
tower to learn to read: twelve topics with their decisions and tasks, 24 first names,
dates in 2026. A board has 3-5 attendees (first names, as people write them on a
board), one or two decisions and two or three action items on sticky notes, each with
an owner who was there and a due date 2-15 working days after the meeting.

Splits: ``train`` and ``test`` are drawn in the ``clear`` style from different seeds
(``test`` is held out: other boards, the same vocabulary); ``hard`` is held out too and
drawn in the ``hard`` style (handwriting-like glyphs, pale ink, tilt, glare, noise,
blur), to be reported on its own.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import random
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

from tuneforge.api import render_minutes

from .render import STYLES, render

INSTRUCTION = "Write the meeting notes from this whiteboard."
SPLIT_SIZES = {"train": 320, "test": 60, "hard": 60}
SPLIT_STYLES = {"train": "clear", "test": "clear", "hard": "hard"}
FIRST_DATE, LAST_DATE = dt.date(2026, 1, 5), dt.date(2026, 11, 27)  # every due date stays in 2026

NAMES = (
    "Tom", "Ana", "Priya", "Omar", "Lena", "Raj", "Mei", "Ben", "Sofia", "Kenji", "Grace", "Luis",
    "Nadia", "Erik", "Chloe", "Hugo", "Zara", "Felix", "Rosa", "Ravi", "Maya", "Jonas", "Clara", "Noah",
)

# Each topic: the title written on the board, what may be decided, and what may be assigned.
TOPICS: tuple[dict, ...] = (
    dict(key="product-launch", title="Product launch",
         decisions=("Launch on time", "Soft launch first", "Delay by one week", "Price it at $19", "Keep the free tier"),
         tasks=("Send release notes", "Run the regression", "Brief support", "Update pricing page", "Book the webinar", "Draft the blog post")),
    dict(key="budget-review", title="Budget review",
         decisions=("Freeze travel spend", "Cut tool licences", "Keep the reserve", "Buy new laptops", "Move costs to Q3"),
         tasks=("Update the forecast", "Cancel licences", "Get three quotes", "Send budget memo", "Review invoices", "Check the contracts")),
    dict(key="hiring", title="Hiring plan",
         decisions=("Hire two engineers", "Open a design role", "Pause hiring", "Use an agency", "Raise the salary band"),
         tasks=("Post the job ad", "Screen the CVs", "Book interviews", "Write role brief", "Call the agency", "Update the careers page")),
    dict(key="office-move", title="Office move",
         decisions=("Move on a weekend", "Use hot desks", "Hire movers", "Keep the old lease", "Add a quiet room"),
         tasks=("Book the movers", "List equipment", "Order new desks", "Tell the landlord", "Plan the seating", "Set up the network")),
    dict(key="sprint-planning", title="Sprint planning",
         decisions=("Two week sprints", "Fix bugs first", "Drop the search epic", "Add a demo day", "Freeze the scope"),
         tasks=("Groom the backlog", "Update the board", "Estimate stories", "Set up CI alerts", "Write test plan", "Fix the login bug")),
    dict(key="website-redesign", title="Website redesign",
         decisions=("Keep the blue logo", "New home page", "Stay on the old CMS", "Add a dark mode", "Launch in two phases"),
         tasks=("Draft wireframes", "Pick the fonts", "Write page copy", "Test on mobile", "Fix broken links", "Collect feedback")),
    dict(key="team-offsite", title="Team offsite",
         decisions=("Go to the lake", "Two days in May", "Skip the dinner", "Invite the interns", "Keep it local"),
         tasks=("Book the venue", "Send invites", "Plan activities", "Order the bus", "Collect dietary needs", "Set the agenda")),
    dict(key="vendor-selection", title="Vendor selection",
         decisions=("Pick Northwind", "Sign a one year deal", "Ask for a trial", "Keep two vendors", "Drop the old vendor"),
         tasks=("Call vendors", "Check references", "Send the contract", "Compare quotes", "Book a demo", "Review the terms")),
    dict(key="incident-review", title="Incident review",
         decisions=("Add more alerts", "Roll back faster", "Write a runbook", "Weekly on-call sync", "Freeze deploys Friday"),
         tasks=("Fix the root cause", "Update the runbook", "Add disk alerts", "Share the report", "Test the backups", "Tune the pager")),
    dict(key="marketing-campaign", title="Marketing campaign",
         decisions=("Focus on email", "Run a summer sale", "Stop print ads", "Target students", "Double the ad budget"),
         tasks=("Design the banner", "Write the email", "Book ad space", "Track signups", "Brief the agency", "Film the video")),
    dict(key="data-migration", title="Data migration",
         decisions=("Migrate in phases", "Freeze the old DB", "Keep backups 90 days", "Move logs last", "Test on a copy"),
         tasks=("Map the tables", "Test the scripts", "Back up the data", "Plan the cutover", "Check row counts", "Tell the users")),
    dict(key="customer-escalation", title="Customer escalation",
         decisions=("Refund the order", "Send an engineer", "Weekly check-ins", "Offer a discount", "Fix it this sprint"),
         tasks=("Call the client", "Write an apology", "Fix the export bug", "Send status update", "Log the tickets", "Review the SLA")),
)


@dataclass(frozen=True)
class Board:
    """What one whiteboard says."""

    topic: str
    title: str
    date: str  # YYYY-MM-DD
    attendees: tuple[str, ...]
    decisions: tuple[str, ...]
    actions: tuple[tuple[str, str, str], ...]  # (owner, task, due YYYY-MM-DD)

    def notes(self) -> str:
        """The board's notes in the meeting-minutes structure: the reference answer."""
        items = [{"owner": owner, "task": task, "due": due} for owner, task, due in self.actions]
        return render_minutes(self.title, self.date, self.attendees, self.decisions, items)

    def meta(self) -> dict:
        """The ground truth the meeting-minutes checker reads."""
        return {
            "topic": self.topic,
            "title": self.title,
            "date": self.date,
            "speakers": [{"name": name} for name in self.attendees],
            "decisions": list(self.decisions),
            "action_items": [{"owner": owner, "task": task, "due": due} for owner, task, due in self.actions],
        }


def _workday(day: dt.date) -> dt.date:
    while day.weekday() >= 5:
        day += dt.timedelta(days=1)
    return day


def _add_workdays(day: dt.date, count: int) -> dt.date:
    while count > 0:
        day += dt.timedelta(days=1)
        if day.weekday() < 5:
            count -= 1
    return day


def make_board(seed: str) -> Board:
    """One board from ``seed``."""
    rng = random.Random(seed)
    topic = rng.choice(TOPICS)
    date = _workday(FIRST_DATE + dt.timedelta(days=rng.randint(0, (LAST_DATE - FIRST_DATE).days)))
    attendees = tuple(rng.sample(NAMES, rng.choice((3, 3, 4, 4, 5))))
    decisions = tuple(rng.sample(topic["decisions"], rng.choice((1, 2, 2))))
    count = rng.choice((2, 3, 3))
    owners = rng.sample(attendees, count)
    tasks = rng.sample(topic["tasks"], count)
    actions = tuple(
        (owner, task, _add_workdays(date, rng.randint(2, 15)).isoformat()) for owner, task in zip(owners, tasks)
    )
    return Board(topic["key"], topic["title"], date.isoformat(), attendees, decisions, actions)


def make_rows(split: str, count: int, directory: str | Path) -> list[dict]:
    """``count`` rows of ``split``; their pictures go to ``directory/<split>/<nnnn>.png``.

    The pictures are drawn into a staging folder beside it that is renamed into place
    only when all are written, so ``directory/<split>/`` never holds half a split.
    """
    directory = Path(directory).resolve()
    style = STYLES[SPLIT_STYLES[split]]
    final = directory / split
    staging = directory / f".{split}.tmp-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    rows = []
    try:
        for index in range(count):
            seed = f"whiteboard-notes/{split}/{index}"
            board = make_board(seed)
            picture, _ = render(board, style, f"{seed}/picture")
            name = f"{index:04d}.png"
            picture.save(staging / name, format="PNG", compress_level=6)
            rows.append({
                "messages": [
                    {"role": "user", "content": [
                        {"type": "image_url", "image_url": {"url": str(final / name)}},
                        {"type": "text", "text": INSTRUCTION},
                    ]},
                    {"role": "assistant", "content": board.notes()},
                ],
                "meta": {"id": f"{split}-{index:04d}", "split": split, "style": style.name, **board.meta(),
                         "image": f"{split}/{name}"},
            })
        if final.exists():  # an older set of pictures, or another process's (the same bytes)
            aside = directory / f".{split}.old-{os.getpid()}"
            try:
                os.rename(final, aside)
            except FileNotFoundError:
                pass
            shutil.rmtree(aside, ignore_errors=True)
        try:
            os.rename(staging, final)
        except OSError:  # another process put the same pictures there in between
            if not final.is_dir():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return rows


def write_split(directory: str | Path, split: str, count: int | None = None) -> Path:
    """Draw ``split`` into ``directory``: ``<split>/`` with the pictures, then ``<split>.jsonl`` with the rows."""
    if split not in SPLIT_SIZES:
        raise ValueError(f"'{split}' is not a split of whiteboard-notes; use one of: {', '.join(SPLIT_SIZES)}.")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    rows = make_rows(split, SPLIT_SIZES[split] if count is None else count, directory)
    path = directory / f"{split}.jsonl"
    staged = directory / f".{split}.jsonl.tmp-{os.getpid()}"
    with open(staged, "w", encoding="utf-8", newline="\n") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
    os.replace(staged, path)  # the rows appear whole, after their pictures
    return path


def write(directory: str | Path, sizes: Mapping[str, int] = SPLIT_SIZES, *, quiet: bool = True) -> dict[str, Path]:
    """Write each split of ``sizes`` into ``directory``; returns the jsonl paths."""
    written = {}
    for split, count in sizes.items():
        started = time.perf_counter()
        written[split] = write_split(directory, split, count)
        if not quiet:
            print(f"Drew {count} {split} whiteboards ({SPLIT_STYLES[split]}) in {time.perf_counter() - started:.1f} s; "
                  f"rows in {written[split]}", file=sys.stderr)
    return written


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Write the whiteboard-notes dataset (the same files every time).")
    parser.add_argument("--out", required=True, help="Directory for <split>.jsonl and the pictures in <split>/ (tuneforge itself writes it "
                        "into $TUNEFORGE_HOME/datasets/ on first use).")
    parser.add_argument("--split", action="append", choices=tuple(SPLIT_SIZES), help="Only this split (repeat for more).")
    parser.add_argument("--limit", type=int, help="At most this many boards per split (a quick look).")
    args = parser.parse_args(argv)
    sizes = {split: count for split, count in SPLIT_SIZES.items() if not args.split or split in args.split}
    if args.limit is not None:
        if args.limit < 1:
            parser.error(f"--limit is {args.limit}; give a positive number of boards.")
        sizes = {split: min(count, args.limit) for split, count in sizes.items()}
    write(args.out, sizes, quiet=False)


if __name__ == "__main__":
    main()
