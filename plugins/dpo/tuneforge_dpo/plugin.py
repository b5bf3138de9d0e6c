"""The hooks of tuneforge-dpo: preference methods and GRPO, their dataset formats, a bundled preference set.

Registering imports neither trl nor torch: each record's callables import what
they need when a method runs. The methods leave ``supports_packing`` off (chosen and
rejected answers are batched side by side), so the core refuses ``--packing`` for
them and a device's packing default does not apply.
"""

from __future__ import annotations

from tuneforge.api import DatasetFormat, DatasetSource, TrainingMethod, hookimpl

from . import formats, prompts
from .methods import METHODS
from .options import GRPOOptions

TUNEFORGE_API = "1.0"  # the tuneforge.api version this plugin was written for

PREFERENCE = "preference"

GRPO_PARTS = ("check_setup", "prepare_data", "reference_model", "build_trainer", "after_train")


def _part(name: str, method: str):
    """The function ``name`` of ``train`` for ``method``, imported when a run calls it (trl is imported in there)."""

    def call(*args):
        from . import train

        return getattr(train, name)(*args, method)

    call.__name__ = f"{name}_{method}"
    return call


@hookimpl
def tuneforge_training_methods():
    # The core's run_training runs each one; a method supplies its checks, data, reference and trainer.
    for name, spec in METHODS.items():
        yield TrainingMethod(
            name=name,
            description=spec.description,
            options=spec.options,
            check=_part("check_options", name),
            check_setup=_part("check_setup", name),
            prepare_data=_part("prepare_data", name),
            reference_model=_part("reference_model", name),
            build_trainer=_part("build_trainer", name),
            before_train=_part("before_train", name),
            after_train=_part("after_train", name),
            continues_adapter=True,
        )
    yield TrainingMethod(
        name="grpo",
        description="GRPO: online RL, answers sampled per prompt and scored by reward functions (--reward)",
        options=GRPOOptions,
        check=_grpo_check,
        **{part: _grpo_part(part) for part in GRPO_PARTS},
        continues_adapter=True,
    )


def _grpo_check(config):
    from . import grpo

    return grpo.check_options(config)


def _grpo_part(name: str):
    """The function ``name`` of ``grpo``, imported when a run calls it (trl is imported when the trainer is built)."""

    def call(*args):
        from . import grpo

        return getattr(grpo, name)(*args)

    call.__name__ = f"{name}_grpo"
    return call


def _has(row, *keys) -> bool:
    return all(key in row for key in keys)


@hookimpl
def tuneforge_dataset_formats():
    yield DatasetFormat(
        name="messages-rejected",
        description="OpenAI 'messages' ending with the chosen answer, plus 'rejected_response'",
        detect=lambda row: _has(row, "messages", "rejected_response"),
        convert=formats.convert_messages_rejected,
        kind=PREFERENCE,
        priority=60,
    )
    yield DatasetFormat(
        name="preference",
        description="'prompt', 'chosen', 'rejected' as text or messages (or whole conversations sharing a history), "
        "'system', 'history'",
        detect=lambda row: _has(row, "chosen", "rejected"),
        convert=formats.convert_pair,
        kind=PREFERENCE,
        priority=50,
    )
    yield DatasetFormat(
        name="kto-unpaired",
        description="'prompt', 'completion' and 'label' (true: desirable, false: undesirable), for --method kto",
        detect=lambda row: _has(row, "prompt", "completion", "label"),
        convert=formats.convert_unpaired,
        kind=PREFERENCE,
        priority=40,
    )
    # What --method grpo reads: prompts, with the whole row kept for the reward functions.
    yield DatasetFormat(
        name="prompt-messages",
        description="OpenAI 'messages' (and 'tools'); final assistant answers are cut off and kept for the rewards",
        detect=lambda row: "messages" in row,
        convert=prompts.convert_messages,
        kind=prompts.PROMPT,
        priority=60,
    )
    yield DatasetFormat(
        name="prompt",
        description="'prompt' as text or messages, optional 'system' and 'tools'; other keys go to the rewards",
        detect=lambda row: "prompt" in row,
        convert=prompts.convert_prompt,
        kind=prompts.PROMPT,
        priority=50,
    )


def _minutes_preferences_path(split: str) -> str:
    from .datasets.minutes_preferences import split_path

    return str(split_path(split))


@hookimpl
def tuneforge_datasets():
    yield DatasetSource(
        name="minutes-preferences",
        description="Meeting notes with minutes in the fixed structure (chosen) vs. minutes that break it "
        "(rejected) (bundled, 192 train / 32 test)",
        resolve=_minutes_preferences_path,
        splits=("train", "test"),
    )
