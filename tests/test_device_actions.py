"""The bundled device-actions dataset: its generator and splits, and how eval scores tool-call answers."""

import fnmatch
import json
import re
import tomllib
from pathlib import Path

import pytest

from tuneforge.datasets import device_actions
from tuneforge.datasets.device_actions import generate
from tuneforge.datasets.device_actions.schema import TOOL_NAMES, TOOLS
from tuneforge.errors import TuneforgeError
from tuneforge.toolcalls import call_problems, judge, read_answer, score

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def splits():
    return {split: device_actions.load(split) for split in device_actions.SPLITS}


def command(row) -> str:
    return row["messages"][1]["content"]


def calls(*pairs):
    return {"role": "assistant", "content": "", "tool_calls": [
        {"type": "function", "function": {"name": name, "arguments": arguments}} for name, arguments in pairs
    ]}


def row_for(user, answer):
    return {"messages": [{"role": "user", "content": user}, answer], "tools": TOOLS}


# -- the files ----------------------------------------------------------------------


def test_the_tool_schema_is_fixed_typed_and_in_range():
    assert 15 <= len(TOOLS) <= 25 and len(set(TOOL_NAMES)) == len(TOOLS)
    types = set()
    for tool in TOOLS:
        parameters = tool["function"]["parameters"]
        assert parameters["type"] == "object"
        assert set(parameters.get("required", ())) <= set(parameters["properties"])
        for prop in parameters["properties"].values():
            types.add(prop["type"] + ("/enum" if "enum" in prop else ""))
    assert types == {"string", "string/enum", "integer", "boolean", "array"}


def test_sizes_and_every_phenomenon_in_every_split(splits):
    assert sum(len(rows) for rows in splits.values()) >= 400
    assert {split: len(rows) for split, rows in splits.items()} == generate.SPLIT_SIZES
    for split, rows in splits.items():
        seen = {p for row in rows for p in row["meta"]["phenomena"]}
        assert seen == set(generate.PHENOMENA), split
        assert [row["meta"]["id"] for row in rows] == [f"{split}-{i:04d}" for i in range(len(rows))]
    used = {name for row in splits["train"] for name in row["meta"]["actions"]}
    assert used == set(TOOL_NAMES)  # every action is trained


def test_the_splits_are_disjoint_and_hard_uses_held_out_values(splits):
    commands = {split: {command(row).casefold() for row in rows} for split, rows in splits.items()}
    assert all(len(commands[split]) == len(splits[split]) for split in splits)
    assert not commands["train"] & commands["test"]
    assert not commands["train"] & commands["hard"] and not commands["test"] & commands["hard"]
    assert not commands["rl"] & (commands["train"] | commands["test"] | commands["hard"])
    assert not commands["holdout"] & (commands["train"] | commands["test"] | commands["hard"] | commands["rl"])
    held_out = set(generate.PEOPLE[1]) | set(generate.FILES[1]) | set(generate.MEETINGS[1]) | set(generate.MESSAGES[1])
    text_of = {split: " ".join(command(row) for row in rows) for split, rows in splits.items()}
    assert not any(value in text_of[split] for value in held_out for split in ("train", "test", "rl", "holdout"))
    assert sum(value in text_of["hard"] for value in held_out) >= len(held_out) // 2


def test_every_row_is_a_tool_calling_conversation_that_validates_against_the_schema(splits):
    for rows in splits.values():
        for row in rows:
            system, user, answer = row["messages"]
            assert (system["role"], user["role"], answer["role"]) == ("system", "user", "assistant")
            assert row["tools"] == TOOLS and system["content"] == device_actions.SYSTEM
            refusal = "refusal" in row["meta"]["phenomena"]
            if refusal:
                assert "tool_calls" not in answer and answer["content"].startswith("Sorry, I can't "), row["meta"]
                assert row["meta"]["actions"] == []
                continue
            assert answer["content"] == "" and all(isinstance(c["function"]["arguments"], dict) for c in answer["tool_calls"])
            assert call_problems(read_answer(answer), row["tools"]) == [], row["meta"]
            assert row["meta"]["actions"] == [c["function"]["name"] for c in answer["tool_calls"]]
            assert len(answer["tool_calls"]) == (2 if "two_actions" in row["meta"]["phenomena"] else 1)


def test_argument_text_is_said_exactly_and_typos_never_touch_it(splits):
    spoken = {"meeting", "recipient", "text", "name", "title", "room"}
    typos = 0
    for rows in splits.values():
        for row in rows:
            said = command(row)
            for call in row["messages"][-1].get("tool_calls", ()):
                for key, value in call["function"]["arguments"].items():
                    if key in spoken:
                        assert value in said, (row["meta"]["id"], key, value)
                    if key == "invitees":
                        assert all(person in said for person in value)
            typos += "typo" in row["meta"]["phenomena"]
    assert typos >= 100


def test_the_rows_load_through_the_data_pipeline_and_fit_the_default_length(splits, smollm2_tokenizer):
    from tuneforge.config import DataOptions
    from tuneforge.data import convert_rows, read_rows
    from tuneforge.modeling import build_template

    converted = convert_rows(read_rows(str(device_actions.split_path("hard"))))
    assert len(converted) == len(splits["hard"]) and converted[0].tools == TOOLS
    template = build_template("chatml", smollm2_tokenizer)
    longest = 0
    # Every row carries the same tools: the longest are those with the longest command and answer.
    every = [item for split in device_actions.SPLITS for item in convert_rows(read_rows(str(device_actions.split_path(split))))]
    every.sort(key=lambda item: -len(json.dumps(item.data["messages"])))
    for item in every[:15] + converted[:10] + [c for c in converted if not c.data["messages"][-1].get("tool_calls")][:3]:
        encoded = template.encode(item.data["messages"], tools=item.tools)
        longest = max(longest, len(encoded.input_ids))
        learned = smollm2_tokenizer.decode([t for t, label in zip(encoded.input_ids, encoded.labels) if label != -100])
        answer = item.data["messages"][-1]
        if answer.get("tool_calls"):
            assert "<tool_call>" in learned and answer["tool_calls"][0]["function"]["name"] in learned
        else:
            assert answer["content"] in learned
    assert longest <= DataOptions().max_length, longest


def test_the_generator_rewrites_the_same_bytes(tmp_path):
    written = generate.write(tmp_path)
    for split, path in written.items():
        assert path.read_bytes() == device_actions.split_path(split).read_bytes(), split


def test_the_files_are_package_data():
    patterns = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["tuneforge"]
    package = ROOT / "core" / "tuneforge"
    for split in device_actions.SPLITS:
        relative = device_actions.split_path(split).relative_to(package).as_posix()
        assert any(fnmatch.fnmatch(relative, pattern) for pattern in patterns), relative


def test_the_dataset_is_registered_by_name(splits):
    from tuneforge.registry import get_registry

    source = get_registry().get("datasets", "device-actions")
    assert tuple(source.splits) == ("train", "test", "hard", "rl", "holdout")
    assert json.loads(Path(source.resolve("test")).read_text().splitlines()[0]) == splits["test"][0]
    with pytest.raises(TuneforgeError, match=r"no split 'validation'; use one of: train, test, hard, rl, holdout"):
        source.resolve("validation")
    rows = splits["test"]
    perfect = source.evaluate(rows, [row["messages"][-1] for row in rows])
    assert (perfect["valid_json_rate"], perfect["action_accuracy"], perfect["argument_f1"], perfect["refusal_accuracy"]) == (1.0, 1.0, 1.0, 1.0)


# -- scoring ------------------------------------------------------------------------

MUTE_AND_SHARE = row_for("mute me and share my second screen", calls(("mute_microphone", {}), ("share_screen", {"screen": 2})))
BOOK = row_for("book Cedar tomorrow at 10am for an hour", calls(
    ("book_room", {"room": "Cedar", "day": "tomorrow", "time": "10:00", "duration_minutes": 60})))
PIZZA = row_for("order a pizza", {"role": "assistant", "content": "Sorry, I can't order food: none of my tools does that."})


def hermes(*pairs):
    return "\n".join(f"<tool_call>\n{json.dumps({'name': n, 'arguments': a})}\n</tool_call>" for n, a in pairs)


def test_known_good_answers_in_every_shape_score_full_marks():
    from tuneforge.inference import Completion

    good = hermes(("mute_microphone", {}), ("share_screen", {"screen": 2}))
    completion = Completion(text="", token_ids=[1], finish_reason="tool_calls", prompt_tokens=3, completion_tokens=1,
                            tool_calls=MUTE_AND_SHARE["messages"][-1]["tool_calls"])
    shapes = [
        MUTE_AND_SHARE["messages"][-1], good, completion, [MUTE_AND_SHARE["messages"][-1]],
        hermes(("share_screen", {"screen": 2}), ("mute_microphone", {})),  # the order of the calls is free
        '[{"name": "mute_microphone", "arguments": {}}, {"name": "share_screen", "parameters": {"screen": 2}}]',
    ]
    for shape in shapes:
        verdict = judge(MUTE_AND_SHARE, shape)
        assert verdict.valid_json and verdict.action_match and verdict.argument_f1 == 1.0 and verdict.exact, shape
    # Text is compared without case, outer spaces or a final full stop.
    assert judge(row_for("x", calls(("send_message", {"recipient": "Tom", "text": "Lunch is here"}))),
                 hermes(("send_message", {"recipient": "tom", "text": " lunch is here."}))).exact
    verdict = judge(PIZZA, "I can't order pizza, sorry.")
    assert verdict.expects_refusal and verdict.refused and verdict.action_match and verdict.valid_json


BAD = {
    "not JSON": ('<tool_call>\n{"name": "book_room", "arguments": {"room": "Cedar",}\n</tool_call>', "is not JSON"),
    "unknown tool": (hermes(("reserve_room", {"room": "Cedar"})), "'reserve_room' is not one of the tools"),
    "not in the enum": (hermes(("book_room", {"room": "Kitchen", "day": "tomorrow", "time": "10:00"})), "not one of ['Aurora'"),
    "a time off the pattern": (hermes(("book_room", {"room": "Cedar", "day": "tomorrow", "time": "10am"})), "does not match"),
    "a string for an integer": (hermes(("book_room", {"room": "Cedar", "day": "tomorrow", "time": "10:00", "duration_minutes": "60"})),
                                "duration_minutes is \"60\", not of type integer"),
    "a required argument missing": (hermes(("book_room", {"room": "Cedar", "time": "10:00"})), "lacks the required 'day'"),
    "an argument the schema lacks": (hermes(("book_room", {"room": "Cedar", "day": "tomorrow", "time": "10:00", "floor": 2})),
                                     "has 'floor', which the schema does not define"),
    "below the minimum": (hermes(("book_room", {"room": "Cedar", "day": "tomorrow", "time": "10:00", "duration_minutes": 5})),
                          "below the minimum 15"),
    "no call": ("Booked!", "the answer calls no tool"),
}


@pytest.mark.parametrize("name", sorted(BAD))
def test_known_bad_answers_are_not_valid(name):
    answer, problem = BAD[name]
    verdict = judge(BOOK, answer)
    assert not verdict.valid_json and not verdict.exact
    assert any(problem in p for p in verdict.problems), verdict.problems


def test_argument_f1_gives_partial_credit_and_actions_are_a_multiset():
    wrong_time = hermes(("book_room", {"room": "Cedar", "day": "tomorrow", "time": "11:00", "duration_minutes": 60}))
    verdict = judge(BOOK, wrong_time)
    assert verdict.valid_json and verdict.action_match and verdict.argument_f1 == 0.75 and not verdict.exact
    one_of_two = judge(MUTE_AND_SHARE, hermes(("mute_microphone", {})))
    assert not one_of_two.action_match and one_of_two.argument_f1 == 0.0  # share_screen's screen is missed
    wrong_no_argument_tool = judge(row_for("mute me", calls(("mute_microphone", {}))), hermes(("unmute_microphone", {})))
    assert not wrong_no_argument_tool.action_match and wrong_no_argument_tool.argument_f1 == 0.0
    assert not judge(PIZZA, hermes(("mute_microphone", {}))).refused


def test_score_counts_each_metric_over_its_rows():
    rows = [MUTE_AND_SHARE, BOOK, BOOK, PIZZA, PIZZA]
    answers = [
        MUTE_AND_SHARE["messages"][-1],  # right
        hermes(("book_room", {"room": "Cedar", "day": "tomorrow", "time": "11:00", "duration_minutes": 60})),  # one argument off
        "I booked it.",  # refused a command: no JSON
        "No can do.",  # refused right
        hermes(("mute_microphone", {})),  # acted on a command it must refuse
    ]
    result = score(rows, answers)
    assert result.pop("report") == [
        "valid JSON calls: 2/3 (67%)",
        "action accuracy: 2/3 (67%); exact (actions and arguments): 1/3 (33%)",
        "argument F1: 0.583",
        "refusal accuracy: 1/2 (50%); commands wrongly refused: 1/3",
    ]
    per_row = result.pop("per_row")
    assert result == {
        "total": 5, "action_rows": 3, "refusal_rows": 2, "valid_json": {"passed": 2, "total": 3}, "valid_json_rate": 0.6667,
        "action_accuracy": 0.6667, "argument_f1": 0.5833, "exact": 0.3333, "refusal_accuracy": 0.5, "false_refusals": 1,
    }
    assert [r["valid_json"] for r in per_row] == [True, True, False, True, True]
    assert per_row[2]["problems"] == ["the answer calls no tool"]
    with pytest.raises(ValueError, match="2 rows but 1 answers"):
        score(rows[:2], answers[:1])


def test_eval_hands_the_dataset_the_calls_the_template_parsed(smollm2_tokenizer):
    from tuneforge.evaluation import answer_of
    from tuneforge.inference import Completion
    from tuneforge.inference.text import with_tool_calls
    from tuneforge.modeling import build_template

    template = build_template("chatml", smollm2_tokenizer)
    raw = Completion(text=hermes(("mute_microphone", {}), ("share_screen", {"screen": 2})), token_ids=[1],
                     finish_reason="stop", prompt_tokens=3, completion_tokens=1)
    parsed = with_tool_calls(raw, template, TOOLS)
    handed = answer_of(parsed)
    assert handed["role"] == "assistant" and [c["function"]["name"] for c in handed["tool_calls"]] == ["mute_microphone", "share_screen"]
    assert judge(MUTE_AND_SHARE, handed).exact
    plain = Completion(text="Sorry.", token_ids=[1], finish_reason="stop", prompt_tokens=3, completion_tokens=1)
    assert answer_of(with_tool_calls(plain, template, TOOLS)) == "Sorry."


def test_eval_on_device_actions_end_to_end(varied_tiny_dir, capsys):
    from tuneforge.config import EvalConfig
    from tuneforge.evaluation import run_eval

    summary = run_eval(EvalConfig(model=varied_tiny_dir, dataset="device-actions", split="hard", limit=3, max_new_tokens=4))
    scores = summary["scores"]
    assert summary["rows"] == 3 and scores["total"] == 3
    assert {"valid_json_rate", "action_accuracy", "argument_f1", "refusal_accuracy"} <= set(scores)
    out = capsys.readouterr().out
    assert re.search(r"valid JSON calls: \d+/\d+", out) and "refusal accuracy:" in out


def test_eval_hands_a_dataset_that_takes_one_its_engine_template(smollm2_tokenizer):
    from tuneforge.evaluation import evaluate_answers
    from tuneforge.modeling import build_template
    from tuneforge.registry import get_registry

    template = build_template("chatml", smollm2_tokenizer)
    source = get_registry().get("datasets", "device-actions")
    answers = [hermes(("mute_microphone", {}), ("share_screen", {"screen": 2}))]
    assert evaluate_answers(source.evaluate, [MUTE_AND_SHARE], answers, template)["exact"] == 1.0

    def takes_none(rows, answers):
        return {"handed": None}

    def takes_one(rows, answers, template=None):
        return {"handed": template}

    assert evaluate_answers(takes_none, [], [], template) == {"handed": None}
    assert evaluate_answers(takes_one, [], [], template) == {"handed": template}
