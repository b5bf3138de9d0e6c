"""The run record: what a finished run leaves beside its weights, typed.

``tuneforge_run.json`` in an output directory describes the run (its base model,
the adapter chain it builds on, its family, template, tuner and dtype, the
options of each record it selected, its data and metrics); everything that
loads a run reads it through ``RunRecord``. The JSON stays readable both ways:
a record written by an earlier tuneforge loads (a field it lacks takes its
default), and keys this version does not know are kept and written back.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import TuneforgeError

RUN_RECORD = "tuneforge_run.json"  # its presence marks a finished run


@dataclass(frozen=True)
class RunRecord:
    """A finished run's record.

    ``base_adapters``: the adapter runs merged into ``base_model``, in order, before
    this run's adapter applies (a run continued from another). ``options``: the
    options of each record the run selected, by record kind
    (``{kind: {"name": ..., "options": {...}}}``, see ``tuneforge.options.selected_options``).
    ``config``: every option of the run, as it ran. ``template_parity``: how the
    template compared with the checkpoint's own chat template (empty: not checked;
    ``allowed``: it differed and ``--allow-template-drift`` let the run go on). ``fast_path_off``: the
    fast-path options the run's parallel backend turned off, each with why
    (``ParallelBackend.fast_path_off``; empty: none). ``extra``: keys of the JSON
    this version does not know, kept so that writing the record back loses nothing.
    """

    base_model: str
    tuneforge_version: str | None = None
    run_id: str | None = None  # the id its start record and checkpoints carry
    method: str | None = None
    base_adapters: tuple[str, ...] = ()
    model_family: str | None = None
    template: str | None = None
    tuner: str | None = None
    saves_adapter: bool = False
    torch_dtype: str | None = None
    plugins: dict[str, str] = field(default_factory=dict)
    libraries: dict[str, str] = field(default_factory=dict)
    data: dict[str, Any] = field(default_factory=dict)
    train_metrics: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    options: dict[str, dict[str, Any]] = field(default_factory=dict)
    template_parity: dict[str, Any] = field(default_factory=dict)  # the template parity check's outcome (tuneforge.parity)
    fast_path_off: dict[str, str] = field(default_factory=dict)  # option -> why the parallel backend turned it off
    created: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def trust_remote_code(self) -> bool:
        """Whether the run was trained with ``--trust-remote-code`` (never consent for a later command)."""
        return bool(self.config.get("trust_remote_code"))

    def adapter_chain(self, run_dir: str | os.PathLike) -> list[str]:
        """The adapter runs that make up this adapter run's model on top of its base, oldest first (``run_dir`` last)."""
        return [*self.base_adapters, str(run_dir)]

    def to_dict(self) -> dict[str, Any]:
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "extra"}
        values["base_adapters"] = list(self.base_adapters)
        return {**values, **self.extra}

    @classmethod
    def from_dict(cls, values: dict[str, Any], *, source: str = "the run record") -> RunRecord:
        if not isinstance(values, dict) or not isinstance(values.get("base_model"), str):
            raise TuneforgeError(
                f"{source} is not a tuneforge run record (no base_model); restore it from the run, or train again."
            )
        known = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        kept = {key: value for key, value in values.items() if key in known}
        kept["base_adapters"] = tuple(kept.get("base_adapters") or ())
        for name in ("plugins", "libraries", "data", "train_metrics", "config", "options", "template_parity", "fast_path_off"):
            kept[name] = kept.get(name) or {}
        return cls(**kept, extra={key: value for key, value in values.items() if key not in known})

    @classmethod
    def find(cls, path: str | os.PathLike) -> RunRecord | None:
        """The run record of the output directory ``path``, or None for a directory that holds none."""
        record = Path(path) / RUN_RECORD
        if not record.is_file():
            return None
        try:
            values = json.loads(record.read_text())
        except ValueError:
            raise TuneforgeError(
                f"'{record}' is not valid JSON; restore it from the run, or train again into a new --output-dir."
            ) from None
        return cls.from_dict(values, source=f"'{record}'")

    @classmethod
    def load(cls, path: str | os.PathLike) -> RunRecord:
        """The run record of the output directory ``path``; an error when it holds none."""
        record = cls.find(path)
        if record is None:
            raise TuneforgeError(
                f"'{path}' is not a tuneforge output dir (it has no {RUN_RECORD}); pass the --output-dir of a training run."
            )
        return record

    def write(self, path: str | os.PathLike) -> Path:
        """Write the record into the output directory ``path`` atomically (a reader never sees half of it)."""
        target = Path(path) / RUN_RECORD
        tmp = target.with_name(f".{target.name}.tmp")
        tmp.write_text(json.dumps(self.to_dict(), indent=2, default=str) + "\n")
        os.replace(tmp, target)
        return target
