"""Built-in datasets (an internal plugin)."""

from tuneforge import hookimpl
from tuneforge.records import DatasetSource


def _meeting_minutes_path(split: str) -> str:
    from tuneforge.datasets.meeting_minutes import split_path

    return str(split_path(split))


def _score_meeting_minutes(rows, answers) -> dict:
    from tuneforge.datasets.meeting_minutes.structure import score

    return score(rows, answers)


def _device_actions_path(split: str) -> str:
    from tuneforge.datasets.device_actions import split_path

    return str(split_path(split))


def _score_device_actions(rows, answers, template=None) -> dict:
    from tuneforge.datasets.device_actions import evaluate

    return evaluate(rows, answers, template)


@hookimpl
def tuneforge_datasets():
    yield DatasetSource(
        name="meeting-minutes",
        description="Meeting transcripts and their minutes in one fixed structure "
        "(bundled, 320 train / 40 train-long / 50 test / 50 hard / 20 long)",
        resolve=_meeting_minutes_path,
        splits=("train", "train-long", "test", "hard", "long"),
        evaluate=_score_meeting_minutes,
    )
    yield DatasetSource(
        name="device-actions",
        description="Commands to a meeting and desktop assistant, answered with tool calls or refused "
        "(bundled, 19 tools; 360 train / 100 test / 100 hard / 400 rl, prompts for GRPO after SFT / 500 holdout)",
        resolve=_device_actions_path,
        splits=("train", "test", "hard", "rl", "holdout"),
        evaluate=_score_device_actions,
    )
