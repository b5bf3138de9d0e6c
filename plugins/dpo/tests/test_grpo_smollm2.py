"""GRPO on the real SmolLM2-135M-Instruct: a verifiable reward it can learn in a few steps rises.

The task: answer "In one short sentence, what is X?" in as few characters as possible
(the reward is 1 for an empty answer, falling to 0 at 150 characters). The base
model writes 20 to 150 characters, so the four answers to a prompt differ and GRPO
has a signal; the assertion fails if the policy did not move towards shorter answers.
(It moves fast: in 5 steps the mean reward went 0.21, 0.47, 0.64, 0.78, 0.98, towards
empty answers, as a reward that only counts characters invites.)
"""

import json

import pytest

from tuneforge.api import read_run_record
from tuneforge.testing import run_cli

TOPICS = [
    "the moon", "a river", "a volcano", "a bee", "a train", "the ocean", "winter", "music",
    "bread", "a mountain", "a cat", "the sun", "a forest", "rain", "a library", "a bicycle",
]

BREVITY = '''
from tuneforge.api import RewardFunction


def _brevity(row, completion):
    return 1.0 - min(len(completion.strip()), 150) / 150


def tuneforge_reward_functions():
    yield RewardFunction(name="brevity", description="1 for an empty answer, 0 at 150 characters or more", score=_brevity)
'''


@pytest.mark.slow(minutes=4)
def test_grpo_makes_smollm2_answers_shorter(smollm2_dir, tmp_path):
    data = tmp_path / "topics.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"In one short sentence, what is {t}?"}) + "\n" for t in TOPICS))
    rewards = tmp_path / "brevity.py"
    rewards.write_text(BREVITY)
    out = tmp_path / "grpo"
    result = run_cli(
        "rlhf", "--method", "grpo", "--model", smollm2_dir, "--dataset", str(data), "--output-dir", str(out),
        "--reward-file", str(rewards), "--reward", "brevity", "--num-generations", "4", "--per-device-batch-size", "8",
        "--max-completion-length", "32", "--max-length", "256", "--max-steps", "5", "--learning-rate", "2e-3",
        "--lora-rank", "8", "--target-modules", "all-linear", "--lora-dropout", "0", "--lr-scheduler", "constant",
        "--logging-steps", "1", "--save-steps", "100",
        ok=False,
    )
    assert result.exit_code == 0, result.output
    metrics = read_run_record(out).train_metrics
    curve = metrics["reward_logged"]
    assert len(curve) == 5 and metrics["reward_failures"] == {"brevity": 0}
    first, last = sum(curve[:2]) / 2, sum(curve[-2:]) / 2
    print("reward per step:", [round(r, 3) for r in curve])
    assert last > first + 0.1, curve
