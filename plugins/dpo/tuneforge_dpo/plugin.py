"""The hooks of tuneforge-dpo: preference methods, preference dataset formats, a bundled preference set.

Registering imports neither trl nor torch: each record's callables import what
they need when a method runs. The methods leave ``supports_packing`` off (chosen and
rejected answers are batched side by side), so the core refuses ``--packing`` for
them and a device's packing default does not apply.
"""

from __future__ import annotations

from tuneforge import hookimpl
from tuneforge.records import DatasetFormat, DatasetSource, TrainingMethod

from . import formats
from .options import CPOOptions, DPOOptions, KTOOptions, ORPOOptions, SimPOOptions

TUNEFORGE_API = "1.0"  # the tuneforge.api version this plugin was written for

PREFERENCE = "preference"


def _runner(method: str):
    def run(config):
        from .train import run_preference  # trl is imported in there, not here

        return run_preference(config, method)

    run.__name__ = f"run_{method}"
    return run


@hookimpl
def tuneforge_training_methods():
    yield TrainingMethod(
        name="dpo",
        description="Direct preference optimisation (--loss-type sigmoid, ipo or hinge) against a reference model",
        options=DPOOptions,
        run=_runner("dpo"),
    )
    yield TrainingMethod(
        name="simpo",
        description="SimPO: length-normalised preference reward with a target margin, no reference model",
        options=SimPOOptions,
        run=_runner("simpo"),
    )
    yield TrainingMethod(
        name="orpo",
        description="ORPO: SFT loss plus an odds-ratio preference term, no reference model",
        options=ORPOOptions,
        run=_runner("orpo"),
    )
    yield TrainingMethod(
        name="cpo",
        description="CPO: reference-free preference loss plus NLL on the chosen answers",
        options=CPOOptions,
        run=_runner("cpo"),
    )
    yield TrainingMethod(
        name="kto",
        description="KTO: unpaired desirable/undesirable answers (pairs are split), against a reference model",
        options=KTOOptions,
        run=_runner("kto"),
    )


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
