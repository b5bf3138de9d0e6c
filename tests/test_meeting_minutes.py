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


def test_every_gold_answer_follows_the_structure_and_matches_its_meta(train, test_rows):
    for row in train + test_rows:
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
        for item in meta["action_items"]:
            assert item["owner"] in speakers
            due = dt_date(item["due"])
            month = generate.MONTHS[due.month - 1]
            # The due date is said in words: "March 6" or "the 6th of March".
            assert re.search(rf"{month} {due.day}\b|the {due.day}(st|nd|rd|th) of {month}", text), (meta["id"], item)
            assert due > date


def dt_date(text):
    import datetime

    return datetime.date.fromisoformat(text)


def test_sizes_lengths_and_variety(train, test_rows):
    assert len(train) >= 300 and len(test_rows) >= 40
    for row in train + test_rows:
        assert row["meta"]["words"] == len(transcript(row).split())
        assert generate.MIN_WORDS <= row["meta"]["words"] <= generate.MAX_WORDS
    share_long = sum(row["meta"]["words"] > 700 for row in train) / len(train)
    assert 0.08 <= share_long <= 0.25, share_long
    assert sum(row["meta"]["words"] < 500 for row in train) / len(train) >= 0.4  # leaning short
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
    assert tuple(source.splits) == ("train", "test")
    assert json.loads(Path(source.resolve("train")).read_text().splitlines()[0]) == train[0]
    with pytest.raises(TuneforgeError) as info:
        source.resolve("validation")
    assert "'validation'" in str(info.value) and "train, test" in str(info.value)
    rows = train[:3]
    assert source.evaluate(rows, [row["messages"][1]["content"] for row in rows])["rate"] == 1.0
    assert source.evaluate(rows, ["no minutes"] * 3)["rate"] == 0.0


def test_every_row_fits_the_default_max_length(train, test_rows, smollm2_tokenizer):
    from tuneforge.config import DataOptions

    longest = max(
        len(smollm2_tokenizer.apply_chat_template(row["messages"], tokenize=True, return_dict=False))
        for row in train + test_rows
    )
    assert longest <= DataOptions().max_length, longest
