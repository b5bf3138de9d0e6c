"""The bundled default job, for real: SmolLM2 learns the minutes structure with LoRA.

This is the slowest test (longer than ten minutes on two CPU cores): it runs the same
`tuneforge quickstart` a newcomer runs, with fewer steps and held-out rows.
"""

import json
import os
import subprocess
import sys

import pytest


@pytest.mark.slow(minutes=10)
def test_quickstart_teaches_the_minutes_structure(tmp_path, smollm2_dir):
    out = tmp_path / "quickstart"
    result = subprocess.run(
        [sys.executable, "-m", "tuneforge.cli", "quickstart", "--output-dir", str(out),
         "--max-steps", "30", "--eval-limit", "4"],
        capture_output=True, text=True, timeout=2400, env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    before, after = report["before"], report["after"]
    assert before["total"] == after["total"] == 4
    # The base model writes free-form minutes; after 30 LoRA steps most follow the structure.
    # (Four rows a split: the answers, four rounds of up to 320 tokens, are most of this test's time.)
    assert after["follows_structure"] >= before["follows_structure"] + 2, report
    assert after["date_correct"] > before["date_correct"]
    assert "minutes that follow the structure" in result.stdout
    # The content, on the plain and the hard held-out split, before and after, as a table.
    assert set(report["per_split"]) == {"test", "hard"}
    assert report["per_split"]["hard"]["after"]["total"] == 4
    assert "Content of the minutes" in result.stdout and "whole items" in result.stdout
    assert (out / "model" / "tuneforge_run.json").is_file()
    for label in ("before", "after"):
        for split in ("test", "hard"):
            assert (out / f"answers-{label}-{split}.jsonl").is_file(), f"no answers-{label}-{split}.jsonl"


def test_an_unknown_task_is_refused_with_the_known_ones_before_any_work(tmp_path):
    out = tmp_path / "quickstart"
    result = subprocess.run(
        [sys.executable, "-m", "tuneforge.cli", "quickstart", "--task", "whitebored", "--output-dir", str(out)],
        capture_output=True, text=True, timeout=120, env={**os.environ, "TUNEFORGE_LOAD_PLUGINS": ""},
    )
    assert result.returncode != 0
    assert "whitebored" in result.stderr and "meeting-minutes" in result.stderr, result.stderr
    assert not out.exists()


def test_the_content_table_has_a_row_per_split_and_model():
    from tuneforge.quickstart import CONTENT_COLUMNS, content_table

    scores = {key: 0.5 for key, _ in CONTENT_COLUMNS}
    lines = content_table({"test": {"before": {**scores, "owner_recall": 0.0}, "after": scores}, "hard": {"after": scores}})
    assert lines[2].split() == ["split", "model", "structure", "owners", "due", "dates", "whole", "items", "decisions", "invented", "owners"]
    assert lines[3].split()[:5] == ["test", "before", "fine-tuning", "50%", "0%"]
    assert [line.split()[0] for line in lines[3:]] == ["test", "test", "hard"]
    assert content_table({"test": {"after": {"rate": 1.0}}}) == []  # a dataset without content figures: no table
