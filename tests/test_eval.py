"""tuneforge eval: answer a dataset's split through an engine and score it with the dataset."""

import json

import pytest

from tuneforge import hookimpl
from tuneforge.config import EvalConfig
from tuneforge.errors import TuneforgeError
from tuneforge.evaluation import report_lines, run_eval
from tuneforge.inference import ChatRequest, SamplingParams, create_engine
from tuneforge.plugins import PluginManager, reset_plugin_manager
from tuneforge.records import DatasetSource

pytestmark = pytest.mark.usefixtures("one_torch_thread")


CAPITALS = [("France", "Paris"), ("Japan", "Tokyo"), ("Italy", "Rome")]


def _rows():
    return [
        {
            "messages": [
                {"role": "system", "content": "Answer with the city only."},
                {"role": "user", "content": f"What is the capital of {country}?"},
                {"role": "assistant", "content": city},
            ],
            "country": country,
        }
        for country, city in CAPITALS
    ]


class CapitalsPlugin:
    """A plugin with a scorable dataset and one that cannot score."""

    def __init__(self, folder):
        self.file = folder / "capitals-test.jsonl"
        self.file.write_text("".join(json.dumps(row) + "\n" for row in _rows()))
        self.calls = []

    def evaluate(self, rows, answers):
        self.calls.append((list(rows), list(answers)))
        hits = [row["messages"][-1]["content"].lower() in answer.lower() for row, answer in zip(rows, answers)]
        return {
            "answers naming the capital": {"passed": sum(hits), "total": len(hits)},
            "mean answer length": sum(map(len, answers)) / len(answers),
            "per_row": [{"names_capital": hit} for hit in hits],
        }

    @hookimpl
    def tuneforge_datasets(self):
        yield DatasetSource(
            name="capitals",
            description="Capitals of a few countries",
            resolve=lambda split: str(self.file),
            splits=("test",),
            evaluate=self.evaluate,
        )
        yield DatasetSource(
            name="chit-chat",
            description="Conversations with nothing to score",
            resolve=lambda split: str(self.file),
            splits=("train",),
        )


@pytest.fixture
def capitals(tmp_path):
    plugin = CapitalsPlugin(tmp_path)
    manager = PluginManager()
    manager.load_builtins()
    manager.register_plugin(plugin, "capitals", "tuneforge-capitals", "1.0")
    reset_plugin_manager(manager)
    yield plugin
    reset_plugin_manager(None)


def test_eval_answers_the_prompt_without_the_reference_and_scores(capitals, varied_tiny_dir, tmp_path, capsys):
    output = tmp_path / "scored.jsonl"
    config = EvalConfig(model=varied_tiny_dir, dataset="capitals", limit=2, max_new_tokens=6, batch_size=2, output=str(output))
    summary = run_eval(config)

    [(rows, answers)] = capitals.calls
    assert rows == _rows()[:2]
    engine = create_engine("pt", varied_tiny_dir)
    expected = engine.generate([ChatRequest(row["messages"][:-1], sampling=SamplingParams(max_tokens=6)) for row in rows])
    assert answers == [c[0].text for c in expected]

    passed = sum(row["messages"][-1]["content"].lower() in a.lower() for row, a in zip(rows, answers))
    printed = capsys.readouterr().out
    assert "on capitals:test (2 rows)" in printed
    assert f"answers naming the capital: {passed}/2 ({passed / 2:.0%})" in printed
    assert "mean answer length: " in printed
    assert summary["rows"] == 2 and summary["scores"]["answers naming the capital"] == {"passed": passed, "total": 2}
    assert "per_row" not in summary["scores"]

    written = [json.loads(line) for line in output.read_text().splitlines()]
    assert [w["answer"] for w in written] == answers
    assert [w["country"] for w in written] == ["France", "Japan"]
    assert all("names_capital" in w["scores"] and w["usage"]["completion_tokens"] > 0 for w in written)
    saved = json.loads((tmp_path / "scored.summary.json").read_text())
    assert saved["scores"] == summary["scores"] and saved["dataset"] == "capitals"


@pytest.mark.slow
def test_smollm2_names_the_capital_of_france(capitals, capsys):
    summary = run_eval(EvalConfig(model="smollm2-135m-instruct", dataset="capitals", limit=1, max_new_tokens=16))
    [(_, [answer])] = capitals.calls
    assert "Paris" in answer
    assert summary["scores"]["answers naming the capital"] == {"passed": 1, "total": 1}
    assert "answers naming the capital: 1/1 (100%)" in capsys.readouterr().out


def test_a_dataset_that_cannot_score_is_refused_before_loading(capitals):
    with pytest.raises(TuneforgeError, match="Dataset 'chit-chat' cannot score answers .*pick one that can: capitals"):
        run_eval(EvalConfig(model="no-such-model", dataset="chit-chat"))
    assert capitals.calls == []


def test_bad_split_limit_and_options_are_refused_before_loading(capitals, tmp_path):
    with pytest.raises(TuneforgeError, match="Dataset 'capitals' has no split 'validation'; choose one of: test"):
        run_eval(EvalConfig(model="no-such-model", dataset="capitals", split="validation"))
    with pytest.raises(TuneforgeError, match="--limit is 0"):
        run_eval(EvalConfig(model="no-such-model", dataset="capitals", limit=0))
    with pytest.raises(TuneforgeError, match="--temperature is -1.0; it must be a number of at least 0"):
        run_eval(EvalConfig(model="no-such-model", dataset="capitals", temperature=-1.0))
    with pytest.raises(TuneforgeError, match="--output '.*' is a directory"):
        run_eval(EvalConfig(model="no-such-model", dataset="capitals", output=str(tmp_path)))
    with pytest.raises(TuneforgeError, match="Model 'no-such-model' is not a registered model"):
        run_eval(EvalConfig(model="no-such-model", dataset="capitals"))
    assert capitals.calls == []


def test_report_lines():
    assert report_lines({"report": "minutes that follow the structure: 31/40 (78%)", "x": 1}) == [
        "minutes that follow the structure: 31/40 (78%)"
    ]
    assert report_lines({"report": ["a", "b"]}) == ["a", "b"]
    assert report_lines(
        {"structure": {"correct": 31, "total": 40}, "rouge_l": 0.41234, "answered": 40, "per_row": [1, 2], "notes": "x"}
    ) == ["structure: 31/40 (78%)", "rouge_l: 0.4123", "answered: 40"]


@pytest.mark.parametrize("split", [None, "hard"])
def test_cli_eval_on_meeting_minutes(split, varied_tiny_dir, tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path

    output = tmp_path / "minutes.jsonl"
    env = dict(os.environ, TUNEFORGE_LOAD_PLUGINS="", OMP_NUM_THREADS="1")
    result = subprocess.run(
        [str(Path(sys.executable).with_name("tuneforge")), "eval", "--model", varied_tiny_dir,
         "--dataset", "meeting-minutes", "--limit", "2", "--max-new-tokens", "16", "--output", str(output)]
        + (["--split", split] if split else []),
        capture_output=True, text=True, timeout=600, env=env,
    )
    assert result.returncode == 0, result.stderr
    assert f"{varied_tiny_dir} on meeting-minutes:{split or 'test'} (2 rows)" in result.stdout
    assert "  minutes that follow the structure: 0/2 (0%)" in result.stdout
    # the content figures, each of them 0 for an answer that is no minutes at all
    assert "  content: owners 0%, due dates 0%, whole action items 0%, decisions 0%, hallucinated owners 0%" in result.stdout
    written = [json.loads(line) for line in output.read_text().splitlines()]
    assert len(written) == 2 and all(w["answer"] and "meta" in w for w in written)
    assert all(w["usage"]["completion_tokens"] <= 16 for w in written)
    summary = json.loads((tmp_path / "minutes.summary.json").read_text())
    assert summary["scores"]["total"] == 2
    assert summary["scores"]["action_items_right"] == summary["scores"]["decision_recall"] == 0.0


def test_a_failing_scorer_keeps_the_answers(capitals, varied_tiny_dir, tmp_path):
    def broken(rows, answers):
        raise KeyError("meta")

    capitals.evaluate = broken
    output = tmp_path / "kept.jsonl"
    with pytest.raises(TuneforgeError, match=r"Scoring with dataset 'capitals' failed \(KeyError: 'meta'\).*The answers were written to"):
        run_eval(EvalConfig(model=varied_tiny_dir, dataset="capitals", limit=2, max_new_tokens=3, output=str(output)))
    assert len(output.read_text().splitlines()) == 2
    assert json.loads((tmp_path / "kept.summary.json").read_text())["scores"] is None
