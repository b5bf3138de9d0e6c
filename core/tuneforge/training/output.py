"""The output directory: refuse to clobber work, write the self-describing run record."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import time
from pathlib import Path

from tuneforge import __version__
from tuneforge.errors import TuneforgeError
from tuneforge.modeling import RUN_RECORD

RUN_RECORD_NAME = RUN_RECORD

STARTED_RECORD = "tuneforge_started.json"
CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")


def default_output_dir(model: str, method: str) -> str:
    stem = Path(model.rstrip("/")).name or "model"
    return os.path.join("output", f"{stem}-{method}-{time.strftime('%Y%m%d-%H%M%S')}")


def checkpoints(output_dir: str | os.PathLike) -> list[Path]:
    """Complete checkpoints, oldest first (incomplete ones never carry the final name)."""
    root = Path(output_dir)
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if p.is_dir() and (m := CHECKPOINT.match(p.name))]
    return [p for _, p in sorted(found)]


def check_output_dir(output_dir: str, *, resume: bool, overwrite: bool) -> Path | None:
    """Decide what a run may do with ``output_dir``; return the checkpoint to resume from.

    Runs before any expensive work, so a mistake costs nothing.
    """
    root = Path(output_dir)
    if root.exists() and not root.is_dir():
        raise TuneforgeError(f"--output-dir '{output_dir}' is a file; pass a directory.")
    finished = (root / RUN_RECORD).is_file()
    found = checkpoints(root)
    if finished and not overwrite and not resume:
        raise TuneforgeError(
            f"--output-dir '{output_dir}' already holds a finished run; choose a new --output-dir "
            f"or pass --overwrite-output-dir to replace it."
        )
    if found and not resume and not overwrite:
        raise TuneforgeError(
            f"--output-dir '{output_dir}' holds checkpoints of an unfinished run (last: {found[-1].name}); "
            f"pass --resume to continue it, or choose a new --output-dir."
        )
    if resume and found:
        return found[-1]
    return None


def read_started(output_dir: str) -> dict | None:
    path = Path(output_dir) / STARTED_RECORD
    return json.loads(path.read_text()) if path.is_file() else None


def write_json_atomic(path: Path, data: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str) + "\n")
    os.replace(tmp, path)


def plugin_versions() -> dict[str, str]:
    from tuneforge.plugins import get_plugin_manager

    return {
        info.distribution: info.version
        for info in get_plugin_manager().infos.values()
        if not info.error
    }


def library_versions() -> dict[str, str]:
    import importlib.metadata as md

    versions = {}
    for name in ("torch", "transformers", "peft", "accelerate", "trl"):
        try:
            versions[name] = md.version(name)
        except md.PackageNotFoundError:
            pass
    return versions


def run_record(config, *, method: str, base_model: str, family: str, template: str, tuner, dtype: str, data: dict, train_metrics: dict, base_adapters: list[str] = ()) -> dict:
    """What a run leaves beside its weights. ``base_adapters``: the adapter runs merged into
    ``base_model``, in order, before this run's adapter applies (a run continued from another)."""
    return {
        "tuneforge_version": __version__,
        "method": method,
        "base_model": base_model,
        "base_adapters": list(base_adapters),
        "model_family": family,
        "template": template,
        "tuner": tuner.name,
        "saves_adapter": tuner.saves_adapter,
        "torch_dtype": dtype,
        "plugins": plugin_versions(),
        "libraries": library_versions(),
        "data": data,
        "train_metrics": train_metrics,
        "config": dataclasses.asdict(config),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def publish_final(staging: Path, output_dir: Path) -> None:
    """Move the final weights and tokenizer from ``staging`` into ``output_dir``."""
    for entry in staging.iterdir():
        target = output_dir / entry.name
        if target.is_dir():
            shutil.rmtree(target)
        os.replace(entry, target)
    staging.rmdir()
