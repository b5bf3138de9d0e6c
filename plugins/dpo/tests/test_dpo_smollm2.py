"""The real SmolLM2-135M-Instruct learns the house structure of meeting minutes from preferences.

A few DPO steps on the bundled minutes-preferences pairs; on held-out pairs (meetings
and speakers never trained on) the reward margin and the chosen-minus-rejected
log-probability must both rise. Before training the structured minutes are *less*
likely than the prose ones, so the test measures a real change of preference.
"""

import pytest

from tuneforge.api import read_run_record
from tuneforge.testing import run_cli
from tuneforge_dpo.datasets.minutes_preferences import split_path

HELD_OUT_PAIRS = 8
# 2 steps move the held-out margin 0 -> 4.1 and log p(chosen) - log p(rejected) -63.9 -> -23.3 (4 steps: 6.7 and 3.4)
RECIPE = [
    "--model", "smollm2-135m-instruct", "--dataset", "minutes-preferences",
    "--max-steps", "2", "--per-device-batch-size", "2", "--learning-rate", "5e-4", "--lr-scheduler", "constant",
    "--lora-rank", "16", "--lora-alpha", "32", "--lora-dropout", "0", "--target-modules", "all-linear",
    "--beta", "0.1", "--logging-steps", "1", "--save-steps", "100",
]


@pytest.mark.slow(minutes=6)
def test_dpo_on_smollm2_prefers_structured_minutes_on_held_out_pairs(smollm2_dir, tmp_path):
    held_out = tmp_path / "held_out.jsonl"
    held_out.write_text("".join(split_path("test").read_text().splitlines(keepends=True)[:HELD_OUT_PAIRS]))
    out = tmp_path / "dpo"
    result = run_cli("rlhf", "--method", "dpo", *RECIPE, "--val-dataset", str(held_out), "--output-dir", str(out), ok=False)
    assert result.exit_code == 0, result.output
    m = read_run_record(out).train_metrics
    gap_before = m["eval_start_logps/chosen"] - m["eval_start_logps/rejected"]
    gap_after = m["eval_logps/chosen"] - m["eval_logps/rejected"]
    print(
        f"\nheld-out pairs: {HELD_OUT_PAIRS}; reward margin {m['eval_start_rewards/margins']:.3f} -> "
        f"{m['eval_rewards/margins']:.3f}; accuracy {m['eval_start_rewards/accuracies']:.2f} -> "
        f"{m['eval_rewards/accuracies']:.2f}; log p(chosen) - log p(rejected) {gap_before:.1f} -> {gap_after:.1f}"
    )
    assert m["eval_start_rewards/margins"] == 0.0  # the policy starts as its own reference
    assert m["eval_rewards/margins"] > 1.0
    assert m["eval_rewards/accuracies"] >= 0.875
    assert gap_after > gap_before + 10.0
