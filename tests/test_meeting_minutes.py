"""The bundled meeting-minutes dataset: its structure checker, scorer, generator and splits."""

import fnmatch
import json
import re
import tomllib
from pathlib import Path

import pytest

from tuneforge.datasets import meeting_minutes
from tuneforge.datasets.meeting_minutes import generate
from tuneforge.datasets.meeting_minutes.structure import check, parse, render, score
from tuneforge.errors import TuneforgeError

ROOT = Path(__file__).resolve().parents[1]

META = {
    "date": "2026-03-02",
    "speakers": [
        {"name": "Priya Shah", "role": "Operations Director"},
        {"name": "Tom Becker", "role": "Procurement Manager"},
        {"name": "Ana Costa", "role": "Finance Analyst"},
    ],
    "decisions": ["Select Northwind as the new courier service.", "Sign a one-year contract with an option to renew."],
    "action_items": [
        {"owner": "Tom Becker", "task": "Send Northwind the signed order form", "due": "2026-03-06"},
        {"owner": "Ana Costa", "task": "Have legal review the contract terms", "due": "2026-03-10"},
    ],
}
GOOD = render(
    "Courier vendor selection", META["date"], ["Priya Shah", "Tom Becker", "Ana Costa"],
    META["decisions"], META["action_items"],
)


@pytest.fixture(scope="module")
def train():
    return meeting_minutes.load("train")


@pytest.fixture(scope="module")
def test_rows():
    return meeting_minutes.load("test")


@pytest.fixture(scope="module")
def hard():
    return meeting_minutes.load("hard")


@pytest.fixture(scope="module")
def long_rows():
    return meeting_minutes.load("long")


@pytest.fixture(scope="module")
def train_long():
    return meeting_minutes.load("train-long")


def transcript(row) -> str:
    return row["messages"][0]["content"].split("\n\n", 1)[1]


# -- the structure --------------------------------------------------------------


def test_the_reference_minutes_follow_the_structure():
    assert GOOD.splitlines()[0] == "TOPIC: Courier vendor selection"
    assert "- Tom Becker | Send Northwind the signed order form | due 2026-03-06" in GOOD
    assert check(GOOD) == []
    assert check(GOOD, META) == []
    assert check("\n" + GOOD.replace("\nDECISIONS:", "\n\nDECISIONS:") + "\n\n") == []  # blank lines are fine


def _swap(text, first, second):
    lines = text.splitlines()
    i, j = lines.index(first), lines.index(second)
    lines[i], lines[j] = lines[j], lines[i]
    return "\n".join(lines)


BROKEN = {
    "missing TOPIC": (GOOD.replace("TOPIC: Courier vendor selection\n", ""), "missing section TOPIC"),
    "missing ACTION ITEMS": (GOOD.split("\nACTION ITEMS:")[0], "missing section ACTION ITEMS"),
    "sections out of order": (_swap(GOOD, "DECISIONS:", "ACTION ITEMS:"), "sections out of order"),
    "empty topic": (GOOD.replace("TOPIC: Courier vendor selection", "TOPIC:"), "TOPIC is empty"),
    "bad meeting date": (GOOD.replace("DATE: 2026-03-02", "DATE: March 2, 2026"), "DATE 'March 2, 2026' is not a valid"),
    "no decisions": (re.sub(r"DECISIONS:\n(- .*\n)+", "DECISIONS:\n", GOOD), "DECISIONS has no '- ' items"),
    "no action items": (GOOD.split("\nACTION ITEMS:")[0] + "\nACTION ITEMS:", "ACTION ITEMS has no '- ' items"),
    "item without due": (GOOD.replace(" | due 2026-03-06", ""), "action item 1 is not 'Owner | task | due YYYY-MM-DD'"),
    "item with prose date": (GOOD.replace("due 2026-03-06", "due Friday March 6"), "action item 1 is not"),
    "impossible date": (GOOD.replace("due 2026-03-10", "due 2026-02-30"), "action item 2 has due date '2026-02-30'"),
    "inline decisions": (GOOD.replace("DECISIONS:", "DECISIONS: two of them"), "DECISIONS: must be alone on its line"),
    "prose line": (GOOD + "\nThe meeting ended at noon.", "is not part of the structure"),
    "preamble": ("Here are the minutes:\n" + GOOD, "before TOPIC is not part of the structure"),
    "section twice": (GOOD + "\nDECISIONS:\n- Another one.", "section DECISIONS appears more than once"),
    "empty answer": ("", "missing sections TOPIC, DATE, ATTENDEES, DECISIONS, ACTION ITEMS"),
}


@pytest.mark.parametrize("name", sorted(BROKEN))
def test_broken_minutes_are_caught(name):
    text, expected = BROKEN[name]
    problems = check(text)
    assert any(expected in problem for problem in problems), problems


def test_an_owner_who_was_not_in_the_meeting_is_a_problem_only_given_meta():
    text = GOOD.replace("- Ana Costa |", "- Jordan Ellis |")
    assert check(text) == []
    assert check(text, META) == ["action item 2 owner 'Jordan Ellis' is not a speaker in the meeting"]


def test_an_owner_may_be_named_by_a_first_name_only_one_speaker_has():
    assert check(GOOD.replace("- Ana Costa |", "- ana |"), META) == []
    meta = {**META, "speakers": META["speakers"] + [{"name": "Ana Lima", "role": "Legal Counsel"}]}
    assert check(GOOD.replace("- Ana Costa |", "- Ana |"), meta) == [
        "action item 2 owner 'Ana' is not a speaker in the meeting"
    ]


def test_parse_reads_every_part():
    minutes = parse(GOOD)
    assert minutes.topic == "Courier vendor selection"
    assert minutes.date == "2026-03-02"
    assert minutes.attendees == ["Priya Shah", "Tom Becker", "Ana Costa"]
    assert minutes.decisions == META["decisions"]
    assert [(i.owner, i.task, i.due) for i in minutes.action_items] == [
        (i["owner"], i["task"], i["due"]) for i in META["action_items"]
    ]


# -- scoring --------------------------------------------------------------------


def test_score_of_perfect_answers():
    rows = [{"meta": META}] * 2
    result = score(rows, [GOOD, GOOD])
    assert result.pop("report")[0] == "minutes that follow the structure: 2/2 (100%)"
    assert result == {
        "total": 2, "follows_structure": 2, "rate": 1.0, "date_correct": 1.0, "attendees_correct": 1.0,
        "action_items_expected": 4, "action_items_matched": 4, "action_item_recall": 1.0,
        "action_item_precision": 1.0, "decision_overlap": 1.0,
        "structure_valid": 1.0, "owner_recall": 1.0, "due_recall": 1.0, "action_items_right": 1.0,
        "decision_recall": 1.0, "superseded_reported": 0.0, "hallucinated_owners": 0.0,
    }


def test_score_counts_what_is_wrong():
    wrong_due = GOOD.replace("due 2026-03-10", "due 2026-03-11")  # structure fine, one item wrong
    no_structure = "Tom will send the order form by Friday."
    extra_item = GOOD + "\n- Priya Shah | Book the movers | due 2026-03-12"
    result = score([{"meta": META}] * 4, [wrong_due, no_structure, None, extra_item])
    assert result["total"] == 4
    assert result["follows_structure"] == 2 and result["rate"] == 0.5
    assert result["date_correct"] == 0.5
    assert result["action_items_expected"] == 8
    assert result["action_items_matched"] == 3  # 1 + 0 + 0 + 2
    assert result["action_item_recall"] == 0.375
    assert result["action_item_precision"] == 0.6  # 3 of the 2 + 3 lines written
    assert result["decision_overlap"] == 0.5


def test_score_wants_one_answer_per_row():
    with pytest.raises(ValueError, match="2 rows but 1 answers"):
        score([{"meta": META}] * 2, [GOOD])


# -- the bundled files ----------------------------------------------------------


def test_every_gold_answer_follows_the_structure_and_matches_its_meta(train, train_long, test_rows, hard, long_rows):
    for row in train + train_long + test_rows + hard + long_rows:
        meta = row["meta"]
        gold = row["messages"][1]["content"]
        assert check(gold, meta) == [], meta["id"]
        minutes = parse(gold)
        assert minutes.date == meta["date"]
        assert sorted(minutes.attendees) == sorted(s["name"] for s in meta["speakers"])
        assert minutes.decisions == meta["decisions"] and meta["decisions"]
        assert [(i.owner, i.due) for i in minutes.action_items] == [(i["owner"], i["due"]) for i in meta["action_items"]]
        assert meta["action_items"]
    assert score(train, [row["messages"][1]["content"] for row in train])["action_item_recall"] == 1.0


def test_rows_are_prompts_in_messages_format(train, test_rows):
    for row in train + test_rows:
        user, assistant = row["messages"]
        assert (user["role"], assistant["role"]) == ("user", "assistant")
        assert user["content"].startswith(generate.INSTRUCTION + "\n\n")
    # The prompt never describes the structure: fine-tuning is what teaches it.
    assert not re.search(r"TOPIC|DECISIONS|ACTION ITEMS|\|", generate.INSTRUCTION)


def test_transcripts_carry_the_ground_truth(train):
    for row in train:
        meta, text = row["meta"], transcript(row)
        date = dt_date(meta["date"])
        header = text.splitlines()[0]
        assert f"{generate.MONTHS[date.month - 1]} {date.day}, {date.year}" in header
        speakers = [s["name"] for s in meta["speakers"]]
        said = {line.split(": ", 1)[0] for line in text.splitlines()[1:] if ": " in line}
        assert set(speakers) <= said, meta["id"]  # everyone speaks
        assert 3 <= len(speakers) <= 6
        for item, said in zip(meta["action_items"], meta["due_said"], strict=True):
            assert item["owner"] in speakers
            due = dt_date(item["due"])
            month = generate.MONTHS[due.month - 1]
            # The due date is said in words ("March 6", "the 6th of March") or relative to the meeting.
            if not re.fullmatch(rf"\w+day {month} {due.day}", said):
                assert said.lower() in text.lower() and resolve(said, date) == due, (meta["id"], said, item)
            else:
                assert re.search(rf"{month} {due.day}\b|the {due.day}(st|nd|rd|th) of {month}", text), (meta["id"], item)
            assert due > date


def dt_date(text):
    import datetime

    return datetime.date.fromisoformat(text)


def test_sizes_lengths_and_variety(train, test_rows, hard):
    assert len(train) >= 300 and len(test_rows) >= 40
    for row in train + test_rows:
        assert row["meta"]["words"] == len(transcript(row).split())
        assert generate.SHORT_MIN_WORDS <= row["meta"]["words"] <= generate.MAX_WORDS
    share_long = sum(row["meta"]["words"] > 700 for row in train) / len(train)
    assert 0.08 <= share_long <= 0.25, share_long
    assert sum(row["meta"]["words"] < 500 for row in train) / len(train) >= 0.4  # leaning short
    # from 200 words: some meetings are short (a tenth of train, and some in every held-out split)
    assert sum(row["meta"]["words"] < generate.MIN_WORDS for row in train) / len(train) >= 0.1
    assert all(any(row["meta"]["words"] < generate.MIN_WORDS for row in rows) for rows in (test_rows, hard))
    assert len({row["meta"]["topic"] for row in train}) >= 10
    assert {len(row["meta"]["speakers"]) for row in train} == {3, 4, 5, 6}
    assert len({row["messages"][0]["content"] for row in train}) == len(train)


def test_the_test_split_is_held_out(train, test_rows):
    train_transcripts = {transcript(row) for row in train}
    train_minutes = {row["messages"][1]["content"] for row in train}
    train_firsts = {s["name"].split()[0] for row in train for s in row["meta"]["speakers"]}
    assert not train_firsts & set(generate.HELD_OUT_FIRST_NAMES)
    for row in test_rows:
        assert transcript(row) not in train_transcripts
        assert row["messages"][1]["content"] not in train_minutes
        firsts = {s["name"].split()[0] for s in row["meta"]["speakers"]}
        assert firsts & set(generate.HELD_OUT_FIRST_NAMES), row["meta"]["id"]


def test_the_generator_rewrites_the_same_bytes(tmp_path):
    written = generate.write(tmp_path)
    for split, path in written.items():
        assert path.read_bytes() == meeting_minutes.split_path(split).read_bytes(), split


def test_the_files_are_package_data():
    patterns = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["tuneforge"]
    package = ROOT / "core" / "tuneforge"
    for split in meeting_minutes.SPLITS:
        relative = meeting_minutes.split_path(split).relative_to(package).as_posix()
        assert any(fnmatch.fnmatch(relative, pattern) for pattern in patterns), relative


# -- the registered dataset -----------------------------------------------------


def test_the_dataset_is_registered_by_name(train):
    from tuneforge.registry import get_registry

    source = get_registry().get("datasets", "meeting-minutes")
    assert tuple(source.splits) == meeting_minutes.SPLITS == ("train", "train-long", "test", "hard", "long")
    assert json.loads(Path(source.resolve("train")).read_text().splitlines()[0]) == train[0]
    with pytest.raises(TuneforgeError) as info:
        source.resolve("validation")
    assert "'validation'" in str(info.value) and "train, train-long, test" in str(info.value)
    rows = train[:3]
    assert source.evaluate(rows, [row["messages"][1]["content"] for row in rows])["rate"] == 1.0
    assert source.evaluate(rows, ["no minutes"] * 3)["rate"] == 0.0


def test_every_row_fits_the_default_max_length(train, train_long, test_rows, hard, long_rows, smollm2_tokenizer):
    from tuneforge.config import DataOptions

    def tokens(row):
        return len(smollm2_tokenizer.apply_chat_template(row["messages"], tokenize=True, return_dict=False))

    longest = max(tokens(row) for row in train + test_rows + hard)
    assert longest <= DataOptions().max_length, longest
    # The long split fills SmolLM2's context, and stays within it.
    for rows in (long_rows, train_long):
        long_tokens = [tokens(row) for row in rows]
        assert max(long_tokens) <= 8192 and max(long_tokens) >= 5000 and min(long_tokens) > DataOptions().max_length, long_tokens


def test_the_long_training_meetings_are_not_the_long_split(train_long, long_rows):
    # other seeds, so no long meeting is evaluated that was trained on
    assert not {transcript(row) for row in train_long} & {transcript(row) for row in long_rows}
    assert not {row["messages"][1]["content"] for row in train_long} & {row["messages"][1]["content"] for row in long_rows}
    assert all(row["meta"]["id"].startswith("train-long-") for row in train_long)
    # as long as the long split's meetings, with as many action items
    from statistics import mean

    assert mean([row["meta"]["words"] for row in train_long]) >= 0.8 * mean([row["meta"]["words"] for row in long_rows])
    assert min(len(row["meta"]["action_items"]) for row in train_long) >= 4


# -- what real meetings have ----------------------------------------------------

WEEKDAY = {name: number for number, name in enumerate(("Monday", "Tuesday", "Wednesday", "Thursday", "Friday"))}


def resolve(said, meeting):
    """The date a relative due phrase means, worked out here from the conventions docs/datasets.md states."""
    import datetime

    day = datetime.timedelta(days=1)
    monday = meeting - meeting.weekday() * day

    def month_end():
        last = (meeting.replace(day=28) + 4 * day).replace(day=1) - day
        while last.weekday() > 4 or (last.month == 12 and last.day >= 24):
            last -= day
        return last

    def coming(weekday):
        return meeting + ((weekday - meeting.weekday() - 1) % 7 + 1) * day

    fixed = {
        "tomorrow": meeting + day, "close of play tomorrow": meeting + day,
        "two weeks from today": meeting + 14 * day, "a fortnight from today": meeting + 14 * day,
        "ten days from today": meeting + 10 * day,
        "the end of the week": monday + 4 * day, "the end of next week": monday + 11 * day,
        "the end of the month": month_end(), "the last working day of the month": month_end(),
    }
    if said in fixed:
        return fixed[said]
    for pattern, date in (
        (r"next (\w+day)", lambda wd: monday + (7 + wd) * day),
        (r"(\w+day) of next week", lambda wd: monday + (7 + wd) * day),
        (r"(\w+day) after next", lambda wd: monday + (14 + wd) * day),
        (r"(?:this|close of play on) (\w+day)", lambda wd: monday + wd * day),
        (r"(\w+day) week", lambda wd: coming(wd) + 7 * day),
        (r"a week from (\w+day)", lambda wd: coming(wd) + 7 * day),
    ):
        match = re.fullmatch(pattern, said)
        if match:
            return date(WEEKDAY[match[1]])
    raise AssertionError(f"no rule for {said!r}")


def test_relative_due_dates_resolve_from_the_meeting_date():
    wednesday = dt_date("2026-06-03")
    assert resolve("next Tuesday", wednesday) == dt_date("2026-06-09")
    assert resolve("Monday week", wednesday) == dt_date("2026-06-15")
    assert resolve("a week from Friday", wednesday) == dt_date("2026-06-12")
    assert resolve("the end of the month", wednesday) == dt_date("2026-06-30")
    assert resolve("this Friday", wednesday) == dt_date("2026-06-05")
    # The generator's own rules give the same dates.
    import random

    from tuneforge.datasets.meeting_minutes import phenomena

    rng = random.Random(0)
    seen = set()
    for _ in range(400):
        meeting = dt_date("2025-01-06") + rng.randint(0, 700) * dt_date("2025-01-02").resolution
        drawn = phenomena.relative_due(rng, meeting, hard=rng.random() < 0.5)
        if drawn:
            due, phrase, _ = drawn
            assert resolve(phrase, meeting) == due and due > meeting and due.weekday() < 5, (meeting, phrase)
            seen.add(re.sub(r"\w+day", "DAY", phrase))
    assert len(seen) >= 14, seen


def test_the_calendar_holds_every_relative_due_date():
    import random

    from tuneforge.datasets.meeting_minutes import phenomena

    wednesday = dt_date("2026-06-03")
    lines = phenomena.calendar(wednesday).splitlines()
    assert lines[0] == phenomena.CALENDAR_HEAD
    assert lines[1] == "this week: Wed 2026-06-03 (today), Thu 2026-06-04, Fri 2026-06-05"  # no day before the meeting
    assert lines[2].startswith("next week: Mon 2026-06-08, Tue 2026-06-09") and lines[3].endswith("Fri 2026-06-19")
    assert lines[4] == "last working day of the month: Tue 2026-06-30"
    assert "no working days" in phenomena.calendar(dt_date("2026-12-22"))  # the year-end holidays are no working days
    rng = random.Random(1)
    checked = 0
    for _ in range(400):
        meeting = dt_date("2025-01-06") + rng.randint(0, 700) * dt_date("2025-01-02").resolution
        drawn = phenomena.relative_due(rng, meeting, hard=rng.random() < 0.5)
        if drawn:
            checked += 1
            assert drawn[0].isoformat() in phenomena.calendar(meeting), (meeting, drawn[1])
    assert checked > 300
    # generate --calendar ends each prompt with it; the bundled files have none
    rows = generate.make_rows("test", 2, calendar=True)
    plain = generate.make_rows("test", 2)
    for row, bare in zip(rows, plain):
        assert row["messages"][0]["content"] == bare["messages"][0]["content"] + "\n\n" + phenomena.calendar(
            dt_date(row["meta"]["date"]))
        assert row["messages"][1:] == bare["messages"][1:] and row["meta"] == bare["meta"]


@pytest.mark.parametrize("split", meeting_minutes.SPLITS)
def test_every_phenomenon_appears_in_every_split(split):
    from tuneforge.datasets.meeting_minutes.phenomena import PHENOMENA

    rows = meeting_minutes.load(split)
    counts = {name: sum(name in row["meta"]["phenomena"] for row in rows) for name in PHENOMENA}
    assert all(counts.values()), counts
    assert counts["relative_dates"] >= 0.8 * len(rows), counts


def test_the_minutes_are_consistent_with_what_was_said(train, train_long, test_rows, hard, long_rows):
    from tuneforge.datasets.meeting_minutes.phenomena import NO_DECISION

    for row in train + train_long + test_rows + hard + long_rows:
        meta, text, gold = row["meta"], transcript(row), parse(row["messages"][1]["content"])
        speakers = {s["name"] for s in meta["speakers"]}
        phenomena = set(meta["phenomena"])
        # Owners are present, and people talked about who are not present own nothing.
        assert {item.owner for item in gold.action_items} <= speakers, meta["id"]
        for name in meta["absent"]:
            assert name.split()[0] in text and name not in speakers, (meta["id"], name)
            assert all(not item.owner.startswith(name.split()[0]) for item in gold.action_items)
        assert bool(meta["absent"]) == ("absent_people" in phenomena), meta["id"]
        # Only the final decisions: a revised one was said, but is not in the minutes.
        for old in meta["superseded_decisions"]:
            assert old not in gold.decisions, meta["id"]
        assert bool(meta["superseded_decisions"]) == ("revised_decision" in phenomena), meta["id"]
        if "no_decision" in phenomena:
            assert gold.decisions == [NO_DECISION] and not meta["superseded_decisions"]
        else:
            assert NO_DECISION not in gold.decisions
        firsts = [name.split()[0] for name in speakers]
        assert (len(set(firsts)) < len(firsts)) == ("shared_first_name" in phenomena), meta["id"]
        if "shared_first_name" in phenomena:  # the minutes name them in full
            assert all(item.owner in speakers for item in gold.action_items)


def test_the_hard_split_has_other_domains_names_and_phrasings(train, hard):
    from tuneforge.datasets.meeting_minutes import hard_topics, phenomena

    assert {row["meta"]["topic"] for row in hard} <= {topic["key"] for topic in hard_topics.HARD_TOPICS}
    assert not {row["meta"]["topic"] for row in hard} & {row["meta"]["topic"] for row in train}
    train_names = {s["name"].split()[0] for row in train for s in row["meta"]["speakers"]}
    hard_names = {s["name"].split()[0] for row in hard for s in row["meta"]["speakers"]}
    assert not train_names & hard_names
    train_text = "\n".join(transcript(row) for row in train)
    hard_only = ("Hear me out.", "Leave that with me.", "I'm calling it.", "a fortnight from today", "after next")
    assert all(phrase not in train_text for phrase in hard_only)
    assert sum(any(phrase in transcript(row) for phrase in hard_only) for row in hard) >= 0.6 * len(hard)
    assert not set(phenomena.HARD_ABSENT) & {name for row in train for name in row["meta"]["absent"]}


def test_make_meeting_keeps_its_plain_meetings_for_existing_callers():
    plain = generate.make_meeting("minutes-preferences/train/0")
    assert plain is not None and "phenomena" not in plain.meta and "due_said" not in plain.meta
    assert generate.make_meeting("minutes-preferences/train/0", style="plain").transcript == plain.transcript
    real = generate.make_meeting("minutes-preferences/train/0", style="real")
    assert real.transcript != plain.transcript and real.meta["phenomena"]
    with pytest.raises(ValueError, match="'fancy'"):
        generate.make_meeting("x", style="fancy")


# -- scoring the content --------------------------------------------------------

REVISED_META = {
    **META,
    "superseded_decisions": ["Select Fastline as the new courier service."],
    "absent": ["Rachel Moore"],
}


def _content(answer, meta=REVISED_META):
    return score([{"meta": meta}], [answer])


def test_known_good_minutes_score_perfectly_on_content():
    result = _content(GOOD)
    assert (result["owner_recall"], result["due_recall"], result["action_items_right"], result["decision_recall"]) == (1, 1, 1, 1)
    assert result["hallucinated_owners"] == 0 and result["superseded_reported"] == 0
    # The task and decision may be worded differently; a first name only one speaker has is that speaker.
    reworded = GOOD.replace("Send Northwind the signed order form", "Send the signed order form to Northwind").replace(
        "- Ana Costa |", "- Ana |").replace("Sign a one-year contract with an option to renew.", "Sign a one year contract, with an option to renew")
    assert _content(reworded)["action_items_right"] == 1.0 and _content(reworded)["decision_recall"] == 1.0


@pytest.mark.parametrize("name, answer, expected", [
    ("wrong owner", GOOD.replace("- Tom Becker |", "- Priya Shah |"),
     dict(owner_recall=0.5, due_recall=1.0, action_items_right=0.5, decision_recall=1.0, hallucinated_owners=0.0)),
    ("wrong date", GOOD.replace("due 2026-03-10", "due 2026-03-17"),
     dict(owner_recall=1.0, due_recall=0.5, action_items_right=0.5, decision_recall=1.0, hallucinated_owners=0.0)),
    ("wrong task", GOOD.replace("Have legal review the contract terms", "Book the movers"),
     dict(owner_recall=1.0, due_recall=1.0, action_items_right=0.5, decision_recall=1.0)),
    ("absent owner", GOOD.replace("- Ana Costa |", "- Rachel Moore |"),
     dict(owner_recall=0.5, due_recall=1.0, action_items_right=0.5, hallucinated_owners=0.5)),
    ("invented owner", GOOD + "\n- Zed Quark | Book the movers | due 2026-03-12",
     dict(owner_recall=1.0, action_items_right=1.0, hallucinated_owners=round(1 / 3, 4))),
    ("missed decision", GOOD.replace("- Sign a one-year contract with an option to renew.\n", ""),
     dict(decision_recall=0.5, action_items_right=1.0, superseded_reported=0.0)),
    ("superseded decision reported", GOOD.replace("Select Northwind as the new courier service.", "Select Fastline as the new courier service."),
     dict(decision_recall=0.5, superseded_reported=1.0, action_items_right=1.0)),
    ("no minutes", "Tom will send the form on Friday.",
     dict(structure_valid=0.0, owner_recall=0.0, due_recall=0.0, action_items_right=0.0, decision_recall=0.0, hallucinated_owners=0.0)),
])
def test_known_bad_minutes_score_as_expected(name, answer, expected):
    result = _content(answer)
    assert {key: result[key] for key in expected} == expected, (name, result)


def test_a_meeting_without_decisions_wants_the_minutes_to_say_so():
    from tuneforge.datasets.meeting_minutes.phenomena import NO_DECISION

    meta = {**META, "decisions": [NO_DECISION], "superseded_decisions": []}
    says_so = GOOD.replace("- Select Northwind as the new courier service.\n- Sign a one-year contract with an option to renew.",
                           f"- {NO_DECISION}")
    assert check(says_so, meta) == []
    assert _content(says_so, meta)["decision_recall"] == 1.0
    assert _content(GOOD, meta)["decision_recall"] == 0.0


def test_the_gold_minutes_of_every_split_score_perfectly(train, train_long, test_rows, hard, long_rows):
    for rows in (train, train_long, test_rows, hard, long_rows):
        result = score(rows, [row["messages"][1]["content"] for row in rows])
        assert all(result[key] == 1.0 for key in ("structure_valid", "owner_recall", "due_recall", "action_items_right", "decision_recall"))
        assert result["hallucinated_owners"] == 0.0 and result["superseded_reported"] == 0.0
