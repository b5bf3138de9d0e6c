"""Reward functions as records: the built-in ones on real device-actions rows, selection, weights, failures, user files."""

import json
import math

import pytest
from click.testing import CliRunner

from tuneforge.api import RewardFunction, combine_rewards, rewards_from_file
from tuneforge.datasets import device_actions
from tuneforge.errors import TuneforgeError
from tuneforge.options import OptionError
from tuneforge.toolcalls import read_answer

BUILT_IN = ("json_valid", "action_match", "action_f1", "argument_f1", "format", "length_penalty")


@pytest.fixture(scope="module")
def rows():
    """Real rows of the test split: one with a call with arguments, one with two calls, one to refuse."""
    test = device_actions.load("test")

    def first(phenomenon, predicate=lambda row: True):
        return next(row for row in test if phenomenon in row["meta"]["phenomena"] and predicate(row))

    with_arguments = first("plain", lambda row: len(row["messages"][-1]["tool_calls"][0]["function"]["arguments"]) >= 2)
    return {"call": with_arguments, "two": first("two_actions"), "refuse": first("refusal")}


def gold(row):
    return row["messages"][-1]


def as_text(row):
    return read_answer(gold(row)).text  # the gold answer as a model writes it (<tool_call> blocks, or the refusal)


def one(name, **options):
    return combine_rewards(name, options=options)


def test_each_built_in_reward_scores_the_gold_answers_fully(rows):
    rewards = combine_rewards(list(BUILT_IN))
    assert rewards.names == list(BUILT_IN)
    for row in rows.values():
        for answer in (gold(row), as_text(row)):
            result = rewards(row, answer)
            assert result.values == {"json_valid": 1.0, "action_match": 1.0, "action_f1": 1.0, "argument_f1": 1.0, "format": 1.0,
                                     "length_penalty": 0.0}, row["meta"]
            assert result.total == 5.0 and result.failures == {}


def test_json_valid(rows):
    reward = one("json_valid")
    call = rows["call"]
    name = gold(call)["tool_calls"][0]["function"]["name"]
    assert reward(call, '<tool_call>\n{"name": "' + name + '", "arguments": {</tool_call>').total == 0.0  # not JSON
    assert reward(call, '<tool_call>{"name": "' + name + '", "arguments": {"nope": 1}}</tool_call>').total == 0.0  # off the schema
    assert reward(call, "Done!").total == 0.0  # no call where one is expected
    assert reward(rows["refuse"], "Sorry, no.").total == 1.0  # nothing to validate, nothing expected


def test_action_match(rows):
    reward = one("action_match")
    two = rows["two"]
    first_call = {"role": "assistant", "content": "", "tool_calls": gold(two)["tool_calls"][:1]}
    assert reward(two, first_call).total == 0.0
    swapped = {"role": "assistant", "content": "", "tool_calls": gold(two)["tool_calls"][::-1]}
    assert reward(two, swapped).total == 1.0
    assert reward(rows["refuse"], as_text(rows["call"])).total == 0.0  # acting on a command to refuse
    assert reward(rows["refuse"], "I can't do that.").total == 1.0


def test_action_f1_credits_each_right_tool(rows):
    reward = one("action_f1")
    two = rows["two"]
    calls = gold(two)["tool_calls"]
    assert len(calls) == 2 and calls[0]["function"]["name"] != calls[1]["function"]["name"]

    def answer(*tool_calls):
        return {"role": "assistant", "content": "", "tool_calls": list(tool_calls)}

    other = {"function": {"name": "leave_meeting" if "leave_meeting" not in {c["function"]["name"] for c in calls}
                          else "mute_microphone", "arguments": {}}}
    assert reward(two, answer(calls[1], calls[0])).total == 1.0  # order does not count
    assert reward(two, answer(calls[0])).total == pytest.approx(2 / 3)  # one of two: precision 1, recall 1/2
    assert reward(two, answer(calls[0], other)).total == pytest.approx(0.5)  # one right, one wrong
    assert reward(two, answer(calls[0], calls[0])).total == pytest.approx(0.5)  # a tool called twice counts twice
    assert reward(two, answer(other)).total == 0.0
    assert reward(two, "I can't do that.").total == 0.0  # a refusal where calls are expected
    assert reward(rows["refuse"], "I can't do that.").total == 1.0
    assert reward(rows["refuse"], as_text(rows["call"])).total == 0.0  # acting on a command to refuse
    # a call attempt that cannot be read is not a refusal
    assert reward(rows["refuse"], '<tool_call>\n{"name": "mute_microphone", "arguments": {</tool_call>').total == 0.0
    # action_match gives the partial answers nothing
    assert one("action_match")(two, answer(calls[0])).total == 0.0


def test_argument_f1(rows):
    reward = one("argument_f1")
    call = rows["call"]
    function = gold(call)["tool_calls"][0]["function"]
    arguments = dict(function["arguments"])
    key = sorted(arguments)[0]
    value = arguments[key]
    arguments[key] = "something else" if isinstance(value, str) else (not value) if isinstance(value, bool) else value + 1
    changed = {"role": "assistant", "content": "", "tool_calls": [{"function": {"name": function["name"], "arguments": arguments}}]}
    n = len(arguments)
    expected = 2 * ((n - 1) / n) ** 2 / (2 * (n - 1) / n)
    assert reward(call, changed).total == pytest.approx(expected, abs=1e-6) and 0 < expected < 1
    # Arguments given as a JSON string are read the same.
    as_string = {"role": "assistant", "tool_calls": [{"function": {"name": function["name"], "arguments": json.dumps(function["arguments"])}}]}
    assert reward(call, as_string).total == 1.0
    assert reward(call, "no idea").total == 0.0


def test_format_with_its_default_and_a_given_pattern(rows):
    reward = one("format")
    assert reward(rows["call"], "Sure! " + as_text(rows["call"])).total == 0.0  # chatter beside the calls
    assert reward(rows["call"], '{"name": "mute_microphone"}').total == 0.0  # a bare JSON object is not the layout
    strict = one("format", reward_format_pattern=r"Sorry, I can't .*: none of my tools does that\.")
    assert strict(rows["refuse"], gold(rows["refuse"])).total == 1.0
    assert strict(rows["refuse"], "I won't.").total == 0.0
    with pytest.raises(TuneforgeError, match=r"--reward-format-pattern '\(unclosed' is not a regular expression"):
        one("format", reward_format_pattern="(unclosed")


def test_length_penalty(rows):
    reward = one("length_penalty", reward_length_limit=20)
    assert reward(rows["refuse"], "x" * 20).total == 0.0
    assert reward(rows["refuse"], "x" * 30).total == -0.5
    assert reward(rows["refuse"], "x" * 100).total == -1.0
    assert one("length_penalty")(rows["refuse"], "x" * 400).total == pytest.approx(-100 / 300)
    with pytest.raises(TuneforgeError, match="--reward-length-limit is 0"):
        one("length_penalty", reward_length_limit=0)
    with pytest.raises(OptionError, match="reward_length_limit"):
        one("length_penalty", reward_length_limit="long")


def test_weights_combine_into_a_weighted_sum(rows):
    rewards = combine_rewards("action_match:2, argument_f1:0.5,length_penalty", options={"reward-length-limit": 10})
    assert rewards.weights == {"action_match": 2.0, "argument_f1": 0.5, "length_penalty": 1.0}
    result = rewards(rows["refuse"], "x" * 15)  # refused right, 5 characters too many
    assert result.values == {"action_match": 1.0, "argument_f1": 1.0, "length_penalty": -0.5}
    assert result.total == 2.0 + 0.5 - 0.5
    batch = rewards.score_batch([rows["refuse"], rows["call"]], ["x" * 15, as_text(rows["call"])])
    assert [r.values["action_match"] for r in batch] == [1.0, 1.0]


@pytest.mark.parametrize("specs, message", [
    ("nope", r"Unknown reward function 'nope'; choose from: action_f1, action_match, argument_f1, format, json_valid, length_penalty"),
    ("action_match:heavy", r"The weight of reward 'action_match' is 'heavy', not a number"),
    ("action_match:nan", r"is nan; give a finite number"),
    ("action_match,action_match:2", r"'action_match' is selected twice"),
    (":2", r"has no name"),
    (" , ", r"No reward function is selected"),
])
def test_bad_selections_are_one_sentence(specs, message):
    with pytest.raises(TuneforgeError, match=message):
        combine_rewards(specs)


def test_an_option_of_no_selected_reward_is_refused():
    with pytest.raises(TuneforgeError, match=r"The option 'reward_length_limit' belongs to none of the selected reward functions \(json_valid\)"):
        combine_rewards("json_valid", options={"reward_length_limit": 10})


def test_a_reward_that_raises_or_returns_nonsense_gives_that_sample_zero_and_is_reported(rows):
    from tuneforge.rewards import RewardSpec, Rewards

    def fragile(row, completion):
        if "boom" in str(completion):
            raise KeyError("meta")
        return 0.25

    records = {
        "fragile": RewardFunction(name="fragile", description="raises on some samples", score=fragile),
        "nan": RewardFunction(name="nan", description="returns NaN", score=lambda row, completion: math.nan),
        "text": RewardFunction(name="text", description="returns text", score=lambda row, completion: "1"),
    }
    from tuneforge.registry import get_registry

    action_match = get_registry().get("reward_functions", "action_match")
    rewards = Rewards([(RewardSpec(name, 2.0), record, None) for name, record in records.items()]
                      + [(RewardSpec("action_match"), action_match, None)])
    fine = rewards(rows["refuse"], "fine")
    assert fine.values == {"fragile": 0.25, "nan": 0.0, "text": 0.0, "action_match": 1.0} and fine.total == 1.5
    assert fine.failures == {"nan": "TypeError: returned nan, not a finite number", "text": "TypeError: returned '1', not a finite number"}
    broken = rewards(rows["refuse"], "boom")
    assert broken.values["fragile"] == 0.0 and broken.failures["fragile"] == "KeyError: 'meta'"
    assert broken.total == 1.0  # the others still count
    assert rewards.report() == [
        "reward function 'fragile' failed on 1 sample; they counted 0 for it",
        "reward function 'nan' failed on 2 samples; they counted 0 for it",
        "reward function 'text' failed on 2 samples; they counted 0 for it",
    ]


USER_FILE = '''
from tuneforge.api import RewardFunction, hookimpl


def _polite(row, completion):
    return 1.0 if "sorry" in str(completion).lower() else 0.0


@hookimpl
def tuneforge_reward_functions():
    yield RewardFunction(name="polite", description="1 when the answer says sorry", score=_polite)
'''


def test_a_users_python_file_adds_a_reward(tmp_path, rows):
    path = tmp_path / "my_rewards.py"
    path.write_text(USER_FILE)
    assert [r.name for r in rewards_from_file(path)] == ["polite"]
    rewards = combine_rewards(["polite:3", "action_match"], files=[path])
    result = rewards(rows["refuse"], gold(rows["refuse"]))
    assert result.values == {"polite": 1.0, "action_match": 1.0} and result.total == 4.0


@pytest.mark.parametrize("text, message", [
    (None, r"The reward file '.*missing\.py' does not exist"),
    ("x = 1\n", r"defines no tuneforge_reward_functions\(\)"),
    ("raise ValueError('half written')\n", r"failed \(ValueError: half written\); fix the file"),
    ("def tuneforge_reward_functions():\n    return [42]\n", r"registered a int; yield RewardFunction records"),
    (USER_FILE.replace('"polite"', '"format"'), r"The reward function 'format' of '.*' has the name of one from plugin 'tuneforge.builtin.rewards'"),
])
def test_bad_reward_files_are_one_sentence(tmp_path, text, message):
    path = tmp_path / "missing.py"
    if text is not None:
        path.write_text(text)
    with pytest.raises(TuneforgeError, match=message):
        combine_rewards("json_valid", files=[path])


def test_tuneforge_list_rewards():
    from tuneforge.cli import cli

    result = CliRunner().invoke(cli, ["list", "rewards", "--json"])
    assert result.exit_code == 0, result.output
    listed = {r["name"]: r["plugin"] for r in json.loads(result.output)["rewards"]}
    assert listed == {name: "tuneforge.builtin.rewards" for name in BUILT_IN}
