"""The one structure meeting minutes follow, how to write it, check it and score it.

::

    TOPIC: Courier vendor selection for the Leeds warehouse
    DATE: 2026-03-02
    ATTENDEES: Priya Shah, Tom Becker, Ana Costa
    DECISIONS:
    - Go with Northwind as the courier for Leeds.
    ACTION ITEMS:
    - Tom Becker | Send the signed order form to Northwind | due 2026-03-06

Five sections, in this order, each present once and non-empty. An action item is
``- Owner | task | due YYYY-MM-DD``. Blank lines are allowed; any other line is a
problem. With the meeting's ground truth (the row's ``meta``), every owner must be
one of the speakers.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

SECTIONS = ("TOPIC", "DATE", "ATTENDEES", "DECISIONS", "ACTION ITEMS")
LIST_SECTIONS = ("DECISIONS", "ACTION ITEMS")

_HEADER = re.compile(r"^(TOPIC|DATE|ATTENDEES|DECISIONS|ACTION ITEMS):(.*)$")
_ACTION = re.compile(r"^(?P<owner>[^|]+?)\s*\|\s*(?P<task>[^|]+?)\s*\|\s*due\s+(?P<due>\S+)$")
_ISO_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")


@dataclass(frozen=True)
class ActionItem:
    owner: str
    task: str
    due: str  # YYYY-MM-DD


@dataclass
class Minutes:
    """What could be read from an answer, whatever its problems."""

    topic: str = ""
    date: str = ""
    attendees: list[str] = field(default_factory=list)
    decisions: list[str] = field(default_factory=list)
    action_items: list[ActionItem] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def render(topic: str, date: str, attendees: Sequence[str], decisions: Sequence[str],
           action_items: Sequence[Mapping[str, str]]) -> str:
    """Write minutes in the structure (the gold answers are made with this)."""
    lines = [f"TOPIC: {topic}", f"DATE: {date}", f"ATTENDEES: {', '.join(attendees)}", "DECISIONS:"]
    lines += [f"- {decision}" for decision in decisions]
    lines.append("ACTION ITEMS:")
    lines += [f"- {item['owner']} | {item['task']} | due {item['due']}" for item in action_items]
    return "\n".join(lines)


def parse(text: str) -> Minutes:
    """Read minutes, collecting every structural problem on the way."""
    minutes = Minutes()
    problems = minutes.problems
    seen: list[str] = []
    items: dict[str, list[str]] = {name: [] for name in LIST_SECTIONS}
    current = None
    for number, raw in enumerate((text or "").splitlines(), 1):
        line = raw.strip()
        if not line:
            continue
        header = _HEADER.match(line)
        if header:
            name, value = header.group(1), header.group(2).strip()
            if name in seen:
                problems.append(f"section {name} appears more than once (line {number})")
            seen.append(name)
            current = name
            if name in LIST_SECTIONS:
                if value:
                    problems.append(f"{name}: must be alone on its line, with its items below as '- ' lines (line {number})")
            elif not value:
                problems.append(f"{name} is empty (line {number})")
            elif name == "TOPIC":
                minutes.topic = minutes.topic or value
            elif name == "DATE":
                minutes.date = minutes.date or value
                if not _valid_date(value):
                    problems.append(f"DATE {value!r} is not a valid YYYY-MM-DD date")
            elif name == "ATTENDEES":
                names = [part.strip() for part in value.split(",")]
                if any(not part for part in names):
                    problems.append(f"ATTENDEES has an empty name: {value!r}")
                minutes.attendees = minutes.attendees or [part for part in names if part]
        elif line.startswith("-") and current in LIST_SECTIONS:
            entry = line[1:].strip()
            if not entry:
                problems.append(f"an empty '-' item under {current} (line {number})")
            else:
                items[current].append(entry)
        else:
            where = f"under {current}" if current else "before TOPIC"
            problems.append(f"line {number} {where} is not part of the structure: {_clip(line)!r}")

    missing = [name for name in SECTIONS if name not in seen]
    if missing:
        problems.append(f"missing section{'s' if len(missing) > 1 else ''} {', '.join(missing)}")
    present = [name for name in SECTIONS if name in seen]
    first_seen = list(dict.fromkeys(seen))
    if first_seen != present:
        problems.append(f"sections out of order: {', '.join(first_seen)} (expected {', '.join(SECTIONS)})")

    minutes.decisions = items["DECISIONS"]
    if "DECISIONS" in seen and not minutes.decisions:
        problems.append("DECISIONS has no '- ' items")
    if "ACTION ITEMS" in seen and not items["ACTION ITEMS"]:
        problems.append("ACTION ITEMS has no '- ' items")
    for index, entry in enumerate(items["ACTION ITEMS"], 1):
        match = _ACTION.match(entry)
        if not match:
            problems.append(f"action item {index} is not 'Owner | task | due YYYY-MM-DD': {_clip(entry)!r}")
            continue
        item = ActionItem(match["owner"], match["task"], match["due"])
        if not _valid_date(item.due):
            problems.append(f"action item {index} has due date {item.due!r}, not a valid YYYY-MM-DD date")
        minutes.action_items.append(item)
    return minutes


def check(text: str, meta: Mapping[str, Any] | None = None) -> list[str]:
    """The problems of an answer; an empty list means it follows the structure.

    Given the meeting's ``meta``, an action item whose owner is not one of the
    speakers is a problem too.
    """
    minutes = parse(text)
    problems = list(minutes.problems)
    if meta is not None:
        for index, item in enumerate(minutes.action_items, 1):
            if speaker_named(item.owner, meta) is None:
                problems.append(f"action item {index} owner {item.owner!r} is not a speaker in the meeting")
    return problems


def speaker_named(name: str, meta: Mapping[str, Any]) -> str | None:
    """The speaker's full name that ``name`` refers to (full name, or a first name only one speaker has)."""
    wanted = _norm(name)
    speakers = [speaker["name"] for speaker in meta.get("speakers", ())]
    for speaker in speakers:
        if _norm(speaker) == wanted:
            return speaker
    by_first = [speaker for speaker in speakers if _norm(speaker.split()[0]) == wanted]
    return by_first[0] if len(by_first) == 1 else None


def score(rows: Sequence[Mapping[str, Any]], answers: Sequence[str | None]) -> dict:
    """Score generated minutes against the rows' ground truth (``row["meta"]``).

    ``follows_structure``/``rate``: answers with no problem at all (``check`` with
    meta). ``action_item_recall``: the share of true action items that some answer
    line matches on owner and due date; ``action_item_precision``: the share of
    answer lines that match a true item. ``date_correct`` and ``attendees_correct``:
    the share of answers with the meeting's date and exactly its speakers.
    ``decision_overlap``: for each true decision, the best word-overlap F1 with an
    answer's decision, averaged.

    The content, each a share: ``owner_recall`` and ``due_recall``, true action items
    whose owner (or due date) some answer item has, each answer item used once;
    ``action_items_right``, true items some answer item gets whole: the owner, the due
    date and the task (word-overlap F1 at least TASK_MATCH); ``decision_recall``, true
    decisions some answer decision says (F1 at least DECISION_MATCH; a meeting with no
    decision has ``phenomena.NO_DECISION`` as its one); ``superseded_reported``, decisions the meeting
    revised that an answer reports as if final; ``hallucinated_owners``, answer items
    whose owner is no speaker of the meeting (someone absent, or invented).
    """
    if len(rows) != len(answers):
        raise ValueError(f"{len(rows)} rows but {len(answers)} answers; answer every row once.")
    follows = dates = attendees = 0
    expected = matched = predicted = 0
    decision_f1: list[float] = []
    owners_found = dues_found = items_right = 0
    decisions_expected = decisions_found = superseded_expected = superseded_reported = invented = 0
    for row, answer in zip(rows, answers):
        meta = row["meta"]
        text = answer or ""
        minutes = parse(text)
        if not check(text, meta):
            follows += 1
        dates += minutes.date == meta["date"]
        truth = {speaker["name"] for speaker in meta["speakers"]}
        named = {speaker_named(name, meta) for name in minutes.attendees}
        attendees += named == truth and len(minutes.attendees) == len(truth)

        gold = [(item["owner"], item["due"]) for item in meta["action_items"]]
        expected += len(gold)
        predicted += len(minutes.action_items)
        unmatched = list(gold)
        for item in minutes.action_items:
            key = (speaker_named(item.owner, meta), item.due)
            if key in unmatched:
                unmatched.remove(key)
                matched += 1
        for decision in meta["decisions"]:
            decision_f1.append(max((_word_f1(decision, said) for said in minutes.decisions), default=0.0))

        said_owners = [speaker_named(item.owner, meta) for item in minutes.action_items]
        invented += sum(owner is None for owner in said_owners)
        owners_found += _matched([item["owner"] for item in meta["action_items"]], said_owners)
        dues_found += _matched([item["due"] for item in meta["action_items"]], [item.due for item in minutes.action_items])
        unused = list(minutes.action_items)
        for item in meta["action_items"]:
            for said in unused:
                if (speaker_named(said.owner, meta) == item["owner"] and said.due == item["due"]
                        and _word_f1(item["task"], said.task) >= TASK_MATCH):
                    unused.remove(said)
                    items_right += 1
                    break
        superseded = meta.get("superseded_decisions", ())
        # a decision closer to one the meeting revised than to the final one says the revised one
        left = list(minutes.decisions)
        decisions_expected += len(meta["decisions"])
        for decision in meta["decisions"]:
            best = max(left, key=lambda said: _word_f1(decision, said), default=None)
            if best is not None and _word_f1(decision, best) >= DECISION_MATCH and _word_f1(decision, best) > max(
                    (_word_f1(old, best) for old in superseded), default=0.0):
                left.remove(best)
                decisions_found += 1
        for old in superseded:
            superseded_expected += 1
            superseded_reported += any(
                _word_f1(old, said) >= DECISION_MATCH
                and _word_f1(old, said) > max((_word_f1(final, said) for final in meta["decisions"]), default=0.0)
                for said in minutes.decisions
            )

    total = len(rows)
    report = [
        f"minutes that follow the structure: {follows}/{total} ({_share(follows, total):.0%})",
        f"action items found (owner and due date right): {matched}/{expected}",
        f"meeting date right: {_share(dates, total):.0%}; attendees exactly right: {_share(attendees, total):.0%}; "
        f"decision word overlap: {(sum(decision_f1) / len(decision_f1) if decision_f1 else 0.0):.2f}",
        f"content: owners {_share(owners_found, expected):.0%}, due dates {_share(dues_found, expected):.0%}, "
        f"whole action items {_share(items_right, expected):.0%}, decisions {_share(decisions_found, decisions_expected):.0%}, "
        f"hallucinated owners {_share(invented, predicted):.0%}"
        + (f", superseded decisions reported {superseded_reported}/{superseded_expected}" if superseded_expected else ""),
    ]
    return {
        "report": report,
        "total": total,
        "follows_structure": follows,
        "rate": _share(follows, total),
        "date_correct": _share(dates, total),
        "attendees_correct": _share(attendees, total),
        "action_items_expected": expected,
        "action_items_matched": matched,
        "action_item_recall": _share(matched, expected),
        "action_item_precision": _share(matched, predicted),
        "decision_overlap": round(sum(decision_f1) / len(decision_f1), 4) if decision_f1 else 0.0,
        "structure_valid": _share(follows, total),
        "owner_recall": _share(owners_found, expected),
        "due_recall": _share(dues_found, expected),
        "action_items_right": _share(items_right, expected),
        "decision_recall": _share(decisions_found, decisions_expected),
        "superseded_reported": _share(superseded_reported, superseded_expected),
        "hallucinated_owners": _share(invented, predicted),
    }


# What counts as the same task and the same decision (word-overlap F1): the answer may word them its own way.
TASK_MATCH = 0.5
DECISION_MATCH = 0.5


def _matched(truth: Sequence[Any], said: Sequence[Any]) -> int:
    """How many of ``truth`` appear in ``said``, each said value used once."""
    left = list(said)
    found = 0
    for value in truth:
        if value in left:
            left.remove(value)
            found += 1
    return found


def _valid_date(value: str) -> bool:
    if not _ISO_DATE.match(value):
        return False
    try:
        dt.date.fromisoformat(value)
    except ValueError:
        return False
    return True


def _word_f1(truth: str, said: str) -> float:
    truth_words, said_words = _words(truth), _words(said)
    if not truth_words or not said_words:
        return 0.0
    common = sum(min(truth_words.count(word), said_words.count(word)) for word in set(truth_words))
    if not common:
        return 0.0
    precision, recall = common / len(said_words), common / len(truth_words)
    return 2 * precision * recall / (precision + recall)


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9$%']+", text.lower())


def _norm(name: str) -> str:
    return " ".join(name.lower().split())


def _share(part: int, whole: int) -> float:
    return round(part / whole, 4) if whole else 0.0


def _clip(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."
