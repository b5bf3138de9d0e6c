"""What real meetings have and the plain generator's did not: the words for it, and due dates said
relative to the meeting together with the date each one means.

The date conventions (the minutes resolve every relative due date with them):

- "this Thursday", "on Thursday": the next Thursday after the meeting in the same Monday-to-Sunday week;
- "next Thursday": the Thursday of the following week;
- "Thursday week", "a week from Thursday": the first Thursday after the meeting, plus seven days;
- "Thursday after next": the Thursday of the week after the following one;
- "tomorrow", "in two weeks" / "two weeks from today" / "a fortnight from today", "ten days from today";
- "the end of the week" / "close of play Friday": the Friday of the meeting's week;
- "the end of next week": the Friday of the following week;
- "the end of the month" / "the last working day of the month": the month's last working day.

A phrase is only used where its date is a working day after the meeting.
"""

from __future__ import annotations

import datetime as dt
import random
from typing import Callable

WEEKDAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")

# Phenomena a row's meta may list.
PHENOMENA = (
    "relative_dates", "first_names", "nicknames", "roles", "owner_named_later", "revised_decision",
    "no_decision", "absent_people", "tangents", "interruptions", "filler", "shared_first_name",
)
NO_DECISION = "No decisions were made."


def _is_workday(day: dt.date) -> bool:
    year_end = (day.month == 12 and day.day >= 24) or (day.month == 1 and day.day == 1)
    return day.weekday() < 5 and not year_end


def _monday(day: dt.date) -> dt.date:
    return day - dt.timedelta(days=day.weekday())


def _coming(day: dt.date, weekday: int) -> dt.date:
    """The first ``weekday`` strictly after ``day``."""
    return day + dt.timedelta(days=(weekday - day.weekday() - 1) % 7 + 1)


def _last_workday_of_month(day: dt.date) -> dt.date:
    last = (day.replace(day=28) + dt.timedelta(days=4)).replace(day=1) - dt.timedelta(days=1)
    while not _is_workday(last):
        last -= dt.timedelta(days=1)
    return last


def _this_weekday(meeting: dt.date, wd: int) -> dt.date | None:
    return meeting + dt.timedelta(days=wd - meeting.weekday()) if wd > meeting.weekday() else None


# (phrase after "by", the short form, the date from the meeting's date); {wd} is a weekday name.
RelativeRule = tuple[str, str, Callable[[dt.date, int], "dt.date | None"]]
RELATIVE: tuple[RelativeRule, ...] = (
    ("next {wd}", "next {wd}", lambda m, wd: _monday(m) + dt.timedelta(days=7 + wd)),
    ("this {wd}", "{wd}", _this_weekday),
    ("{wd} week", "{wd} week", lambda m, wd: _coming(m, wd) + dt.timedelta(days=7)),
    ("a week from {wd}", "a week from {wd}", lambda m, wd: _coming(m, wd) + dt.timedelta(days=7)),
    ("the end of the month", "the end of the month", lambda m, wd: _last_workday_of_month(m)),
    ("the end of next week", "the end of next week", lambda m, wd: _monday(m) + dt.timedelta(days=11)),
    ("the end of the week", "Friday", lambda m, wd: _monday(m) + dt.timedelta(days=4)),
    ("tomorrow", "tomorrow", lambda m, wd: m + dt.timedelta(days=1)),
    ("two weeks from today", "two weeks from today", lambda m, wd: m + dt.timedelta(days=14)),
)
# Only in the hard split: other words for the same arithmetic, and some the training split never has.
HARD_RELATIVE: tuple[RelativeRule, ...] = (
    ("{wd} after next", "{wd} after next", lambda m, wd: _monday(m) + dt.timedelta(days=14 + wd)),
    ("a fortnight from today", "a fortnight from today", lambda m, wd: m + dt.timedelta(days=14)),
    ("the last working day of the month", "month end", lambda m, wd: _last_workday_of_month(m)),
    ("close of play tomorrow", "tomorrow evening", lambda m, wd: m + dt.timedelta(days=1)),
    ("ten days from today", "ten days out", lambda m, wd: m + dt.timedelta(days=10)),
    ("close of play on {wd}", "{wd}", _this_weekday),
    ("{wd} of next week", "next {wd}", lambda m, wd: _monday(m) + dt.timedelta(days=7 + wd)),
)


def relative_due(rng: random.Random, meeting: dt.date, hard: bool) -> tuple[dt.date, str, str] | None:
    """A due date said relative to ``meeting``: (date, phrase, short phrase), or None when the drawn phrase
    has no working day after the meeting."""
    phrase, short, resolve = rng.choice(HARD_RELATIVE if hard else RELATIVE)
    wd = rng.randint(0, 4)
    due = resolve(meeting, wd)
    if due is None or due <= meeting or not _is_workday(due) or (due - meeting).days > 40:
        return None
    name = WEEKDAYS[wd]
    return due, phrase.format(wd=name), short.format(wd=name)


# -- people ------------------------------------------------------------------------

# No nickname is anyone's first name in the name pools or a mentioned person's.
NICKNAMES = {
    "Tom": "Tommy", "David": "Dave", "Daniel": "Danny", "Samuel": "Sammy", "Marcus": "Marc",
    "Victor": "Vic", "Tobias": "Toby", "Olivia": "Liv", "Isabel": "Izzy", "Martin": "Marty",
    "Peter": "Pete", "Kevin": "Kev", "Elena": "Ellie", "Julia": "Jules", "Laura": "Laurie",
    "Ben": "Benny", "Sofia": "Sofi", "Hiroshi": "Hiro", "Dmitri": "Dima", "Svetlana": "Sveta",
    "Beatriz": "Bea", "Patrice": "Pat", "Alejandro": "Alex", "Bartholomew": "Bart", "Cornelius": "Neil",
    "Evangeline": "Evie", "Maximilian": "Max", "Theodora": "Teddie", "Rosalind": "Roz",
}
# First names only the hard split has.
HARD_FIRST_NAMES = (
    "Alejandro", "Bartholomew", "Cornelius", "Dagny", "Evangeline", "Florin", "Gwendolyn", "Horatio",
    "Ifeoma", "Jaroslav", "Keziah", "Lorcan", "Maximilian", "Nkechi", "Oluwaseun", "Perpetua",
    "Quentin", "Rosalind", "Saoirse", "Theodora", "Ulrike", "Valentin", "Wilhelmina", "Ximena",
)
HARD_LAST_NAMES = (
    "Abernathy", "Baptiste", "Czerny", "Dlamini", "Eriksen", "Fairweather", "Gallagher", "Holloway",
    "Ivanova", "Juarez", "Kaczmarek", "Lombardi", "Mwangi", "Nakamura", "O'Sullivan", "Pellegrini",
    "Quispe", "Rahimi", "Szabo", "Thorne",
)
# People talked about who are not in the meeting (first names no speaker has).
ABSENT = ("Rachel Moore", "Gareth Lloyd", "Simone Laurent", "Wes Turner", "Dolores Reyes", "Bronwyn Price",
          "Ezra Cole", "Mirela Popescu")
HARD_ABSENT = ("Ottoline Marsh", "Cassius Webb", "Philippa Grant", "Lazarus Obi", "Henrietta Vance", "Augustin Ferre")
ABSENT_TEAMS = ("legal", "finance", "IT", "HR", "the regional office", "procurement", "facilities")

ABSENT_MENTIONS = (
    "{absent} sends apologies, by the way. Out sick today.",
    "We should loop in {absent} from {team} on this at some point.",
    "{absent_first} in {team} asked about this too, so I'll forward the notes.",
    "Before I forget, {absent} from {team} is leaving at the end of the month.",
)
HARD_ABSENT_MENTIONS = (
    "{absent} couldn't join, they're travelling.",
    "I spoke to {absent_first} over in {team} yesterday, same concerns as us.",
    "{absent} is cc'd on the notes, so no need to brief them separately.",
)
ABSENT_HANDOVERS = (
    "Could {absent_first} in {team} {do}? It's really their area.",
    "Shouldn't {absent} {do}? They did it last time.",
)
ABSENT_DECLINES = (
    "{absent_first} isn't here and they're off until next month. I'll do it, {by_when}.",
    "We can't hand that to {absent_first} without asking them. Fine, I'll {do} myself, {by_when}.",
)
SOMEONE_SHOULD = (
    "Someone should {do}, {by_when} ideally.",
    "We need somebody to {do}. {by_when_cap} at the latest.",
    "And who's going to {do}? It has to happen {by_when}.",
)
HARD_SOMEONE_SHOULD = (
    "That leaves the question of who will {do}; it has to be done {by_when}.",
    "Volunteers to {do}? Needs doing {by_when}.",
)
SOMEONE_PAUSES = ("Hmm.", "Good question.", "Don't all jump at once.", "I would, but I'm stretched thin.", "Anyone?")
TAKE_IT_LATER = ("Fine, I'll take it.", "Okay, okay, I'll take it.", "Go on then, put me down for that.",
                 "Alright, that one's mine.")
HARD_TAKE_IT_LATER = ("Oh, fine. Mine.", "I suppose that falls to me, then.", "Put my name on it.")
REOPENS = (
    "Sorry, can we go back to that? {con} I think we should {say} after all.",
    "Wait, before we move on. {con} Could we {say} instead?",
    "Actually, I've changed my mind. {con} Let's {say}.",
)
REVISIONS = (
    "You know what, that's fair. Let's change it: we {say}.",
    "Okay, scratch that. The decision is to {say}.",
    "Fine, revised decision: we {say}.",
)
NO_DECISION_LINES = (
    "Let's not decide this today. We need more information first.",
    "I don't think we're ready to decide. Let's come back to it.",
    "No decision today, then. We'll pick it up next time.",
)
NO_DECISION_REPLIES = ("Agreed, too many open questions.", "Fine by me.", "Makes sense.")
NO_DECISION_TASKS = ("pull together what we need to decide {ask}", "collect the numbers on {ask}",
                     "write up the options on {ask}")
INTRODUCTIONS = ("Quick round of names for the notes: {people}.", "For the record, we have {people}.",
                 "Joining today: {people}.")
INTERRUPTIONS = (
    "Sorry, just quickly, is this being recorded?", "Sorry to jump in, can you share your screen?",
    "Sorry, you cut out for a second there.", "Hang on, someone's at the door. Okay, go on.",
    "Sorry, which document is this?",
)
RESUMES = ("Sure. As I was saying,", "Yes. Anyway,", "No problem. So,", "Okay. Where was I? Right,")
FILLERS = ("Um, ", "So, ", "Yeah, so ", "I mean, ", "Honestly, ", "Okay so, ", "Right, ")


# -- the calendar the prompt carries ---------------------------------------------------

CALENDAR_HEAD = "Calendar for the due dates:"
_WEEK_NAMES = ("this week", "next week", "the week after next")


def calendar(meeting: dt.date) -> str:
    """The working days from the meeting to the end of the week after next, by week, and the month's last
    working day, one line each: every date a relative phrase above resolves to is among them, so that a
    model could copy the date instead of counting days (``generate --calendar`` ends each prompt with it;
    the quickstart's model wrote no more due dates right with it, docs/quickstart.md)::

        Calendar for the due dates:
        this week: Wed 2026-07-08 (today), Thu 2026-07-09, Fri 2026-07-10
        next week: Mon 2026-07-13, Tue 2026-07-14, Wed 2026-07-15, Thu 2026-07-16, Fri 2026-07-17
        the week after next: Mon 2026-07-20, ...
        last working day of the month: Fri 2026-07-31
    """
    def day_cell(day: dt.date) -> str:
        return f"{WEEKDAYS[day.weekday()][:3]} {day.isoformat()}"

    lines = [CALENDAR_HEAD]
    monday = _monday(meeting)
    for week, name in enumerate(_WEEK_NAMES):
        days = [monday + dt.timedelta(days=7 * week + offset) for offset in range(5)]
        cells = [day_cell(day) + (" (today)" if day == meeting else "") for day in days
                 if day >= meeting and _is_workday(day)]
        lines.append(f"{name}: {', '.join(cells) if cells else 'no working days'}")
    lines.append(f"last working day of the month: {day_cell(_last_workday_of_month(meeting))}")
    return "\n".join(lines)
