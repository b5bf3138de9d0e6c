"""The rows a quantized export calibrates on and is measured on, read before any weights load.

The run directory says what it trained on: its record keeps every option of the run
(``--dataset``, ``--val-dataset``, ``--val-split-ratio``, ``--max-samples``, the seed,
the format and system prompt), so ``load_examples`` reads, converts and splits the
same rows again, in the same order. From them:

- calibration: ``--calibration-dataset`` when given, else the run's training rows;
  a seeded random sample of ``--num-calibration-samples`` of them;
- quality: rows the run did not train on, in this order of preference: its
  validation rows (``--val-dataset`` or the ``--val-split-ratio`` split), the rows
  ``--max-samples`` left out, the ``--calibration-dataset`` rows that were not drawn
  for calibration; when there are none, the last training rows that calibration did
  not use, and the report says that the model saw them in training.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any, Mapping

from tuneforge.api import DataError, TuneforgeError, load_examples

# What ``load_examples`` reads from a config, with the defaults of ``tuneforge sft``.
_DATA_DEFAULTS = {
    "dataset": [],
    "val_dataset": [],
    "val_split_ratio": 0.0,
    "max_samples": None,
    "skip_bad_rows": False,
    "max_length": 2048,
    "truncation": "drop",
    "seed": 42,
    "dataset_format": None,
    "system": None,
}


@dataclass
class ExportRows:
    """Conversations (``Converted`` rows) to calibrate on and to measure with, and where they came from."""

    calibration: list
    calibration_from: str
    quality: list
    quality_from: str
    quality_held_out: bool  # False: the model was trained on the quality rows


def _config(run_config: Mapping[str, Any], **overrides) -> SimpleNamespace:
    values = {key: run_config.get(key, default) for key, default in _DATA_DEFAULTS.items()}
    values = {key: (default if values[key] is None and default is not None else values[key]) for key, default in _DATA_DEFAULTS.items()}
    values.update(overrides)
    return SimpleNamespace(**values)


def _read(config, template, what: str) -> tuple[list, list | None]:
    try:
        train, held_out, _ = load_examples(config, template)
    except (DataError, TuneforgeError) as exc:
        reason = str(exc).rstrip(".")
        raise TuneforgeError(f"{what} cannot be read ({reason}); fix it, or pass --calibration-dataset with rows to calibrate on.") from None
    return train, held_out


def _unseen_beyond_max_samples(run_config: Mapping[str, Any], template) -> list:
    """The rows of the run's --dataset that --max-samples left out (read only when it was set)."""
    if run_config.get("max_samples") is None:
        return []
    config = _config(run_config, max_samples=None, val_split_ratio=0.0, val_dataset=[])
    everything, _ = _read(config, template, "The run's training data")
    limit = int(run_config["max_samples"])
    return everything[limit:]


def export_rows(bundle, options: Mapping[str, Any]) -> ExportRows:
    """The calibration and quality rows of the run ``bundle`` under the exporter's ``options``."""
    run, template = bundle.run, bundle.template
    run_config = (run.config if run is not None else {}) or {}
    calibration_specs = list(options.get("calibration_dataset") or [])
    wanted_calibration = int(options["num_calibration_samples"])
    wanted_quality = max(int(options["quality_rows"]), int(options["quality_prompts"]))
    seed = run_config.get("seed") or 42

    run_train: list = []
    run_held_out: list = []
    if run_config.get("dataset"):
        run_train, held = _read(_config(run_config), template, f"The run's training data ({', '.join(map(str, run_config['dataset']))})")
        run_held_out = list(held or [])
        quality_from = "the run's validation rows" if run_held_out else ""
        if not run_held_out:
            run_held_out = _unseen_beyond_max_samples(run_config, template)
            quality_from = "the run's rows left out by --max-samples" if run_held_out else ""
    elif not calibration_specs:
        raise TuneforgeError(
            f"'{bundle.spec}' records no training data to calibrate on (its run record names no --dataset); "
            f"pass --calibration-dataset FILE with rows like the ones the model will answer."
        )

    if calibration_specs:
        config = _config({"seed": seed}, dataset=calibration_specs, max_length=int(options["calibration_max_length"]))
        pool, _ = _read(config, template, f"--calibration-dataset {' '.join(calibration_specs)}")
        calibration_from = f"--calibration-dataset {' '.join(calibration_specs)}"
    else:
        pool = run_train
        calibration_from = "the run's training rows"

    # The rows calibration may draw from; those it does not draw can measure when nothing else is held out.
    order = list(range(len(pool)))
    random.Random(seed).shuffle(order)
    if run_held_out:
        calibration = [pool[i] for i in order[:wanted_calibration]]
        return ExportRows(calibration, calibration_from, run_held_out[:wanted_quality], quality_from, True)
    spare = max(len(pool) - wanted_calibration, 0)
    if calibration_specs and spare:
        # --calibration-dataset rows not drawn for calibration: the run did not train on them either.
        taken = min(spare, wanted_quality)
        quality = [pool[i] for i in order[len(order) - taken:]]
        calibration = [pool[i] for i in order[: len(order) - taken]][:wanted_calibration]
        return ExportRows(calibration, calibration_from, quality, f"{calibration_from} (rows not drawn for calibration)", True)
    # Nothing held out: measure on training rows, keeping them out of calibration where there are enough.
    measured_pool = run_train or pool
    quality = measured_pool[-wanted_quality:]
    if pool is run_train and len(pool) > len(quality):
        kept = set(range(len(pool) - len(quality), len(pool)))
        calibration = [pool[i] for i in order if i not in kept][:wanted_calibration]
    else:
        calibration = [pool[i] for i in order[:wanted_calibration]]
    return ExportRows(calibration, calibration_from, quality, "the run's last training rows", False)


def check_rows(rows: ExportRows) -> None:
    """One sentence when there is nothing to calibrate on or to measure with."""
    if not rows.calibration:
        raise TuneforgeError(f"No rows are left to calibrate on from {rows.calibration_from}; pass --calibration-dataset with more rows.")
    if not rows.quality:
        raise TuneforgeError(f"No rows are left to measure the quantized model on from {rows.quality_from}; pass --calibration-dataset with more rows.")
