"""The output directory: refuse to clobber work, write the self-describing run record."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
import shutil
import time
import uuid
from pathlib import Path

from tuneforge import __version__
from tuneforge.errors import TuneforgeError
from tuneforge.runrecord import RUN_RECORD, RunRecord

RUN_RECORD_NAME = RUN_RECORD

STARTED_RECORD = "tuneforge_started.json"
CHECKPOINT_RECORD = "tuneforge_checkpoint.json"  # in each checkpoint: the id of the run that wrote it
CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")
STAGING_DIRS = (".staging", ".final")  # a checkpoint and the final weights, while they are written
REPLACED = ".replaced"  # an overwritten run's files, between being moved aside and deleted
LOCK = ".tuneforge.lock"  # locked by the process that trains into the directory, while it does (``claimed``)
# What tuneforge itself writes into a directory that has no run record yet (a run killed early).
OWN_NAMES = {STARTED_RECORD, RUN_RECORD, *STAGING_DIRS, REPLACED, LOCK, f".{STARTED_RECORD}.tmp", f".{RUN_RECORD}.tmp"}
_HELD: dict[str, object] = {}  # the locks this process holds, by directory


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


def new_run_id() -> str:
    return uuid.uuid4().hex


def is_run_dir(root: Path) -> bool:
    """True when ``root`` holds a tuneforge run (its start or run record), finished or not."""
    return (root / STARTED_RECORD).is_file() or (root / RUN_RECORD).is_file()


def checkpoint_run_id(checkpoint: Path) -> str | None:
    """The id of the run that wrote ``checkpoint`` (None: written before runs had ids, or not by tuneforge)."""
    path = checkpoint / CHECKPOINT_RECORD
    try:
        return json.loads(path.read_text()).get("run_id") if path.is_file() else None
    except (OSError, ValueError, AttributeError):
        return None


def read_checkpoint_record(checkpoint: Path) -> dict:
    """``tuneforge_checkpoint.json`` of ``checkpoint`` ({} when it has none or it is unreadable)."""
    try:
        record = json.loads((checkpoint / CHECKPOINT_RECORD).read_text())
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def _plural(count: int) -> str:
    return f"{count} process" if count == 1 else f"{count} processes"


def check_resume_layout(checkpoint: Path, config, backend, processes: int, shards) -> None:
    """Refuse, before any weights load, to resume ``checkpoint`` on a layout it cannot continue on.

    ``processes``: how many processes this run has; ``backend``: its parallel backend
    record; ``shards(name)``: whether the backend of that name writes its own checkpoint
    format (``ParallelBackend.shards_parameters``; None when it is not installed).
    A checkpoint holds whole weights and optimizer state (``single``, ``ddp``) or the
    state a sharding backend wrote (``fsdp``); it resumes on any number of processes of
    the backend that wrote it (``single`` and ``ddp`` share one format), as long as the
    global batch stays the same, so each step trains on the rows it would have had.
    A checkpoint written before checkpoints recorded their layout is not checked.
    """
    record = read_checkpoint_record(checkpoint)
    saved_processes = record.get("world_size")
    if not isinstance(saved_processes, int):
        return
    where = f"{checkpoint.name} in '{checkpoint.parent}'"
    saved_backend = record.get("parallel_backend")
    if saved_backend and saved_backend != backend.name and (shards(saved_backend) is not False or backend.shards_parameters):
        raise TuneforgeError(
            f"{where} was written by --parallel-backend {saved_backend} on {_plural(saved_processes)}, whose checkpoints "
            f"--parallel-backend {backend.name} cannot read; resume with --parallel-backend {saved_backend}."
        )
    if processes != saved_processes and not getattr(backend, "resumes_on_other_process_counts", True):
        raise TuneforgeError(
            f"{where} was written by --parallel-backend {backend.name} on {_plural(saved_processes)}, whose checkpoints "
            f"hold state partitioned for exactly that many, and this run has {_plural(processes)}; "
            f"resume on {_plural(saved_processes)} (--nproc-per-node times --nnodes)."
        )
    per_device, accumulation = record.get("per_device_batch_size"), record.get("gradient_accumulation_steps")
    if not (isinstance(per_device, int) and isinstance(accumulation, int)):
        return
    # Under sequence parallelism the processes of a group share their rows: only the groups count.
    saved_groups = saved_processes // max(int(record.get("sequence_parallel_size") or 1), 1)
    groups = max(processes // max(int(getattr(config, "sequence_parallel_size", 1) or 1), 1), 1)
    saved_batch = saved_groups * per_device * accumulation
    batch = groups * config.per_device_batch_size * config.gradient_accumulation_steps
    if batch == saved_batch:
        return
    keep = []
    if saved_batch % (groups * config.gradient_accumulation_steps) == 0:
        keep.append(f"--per-device-batch-size {saved_batch // (groups * config.gradient_accumulation_steps)}")
    if saved_batch % (groups * config.per_device_batch_size) == 0:
        keep.append(f"--gradient-accumulation-steps {saved_batch // (groups * config.per_device_batch_size)}")
    fixes = [f"keep the global batch at {saved_batch} rows with " + " or ".join(keep)] if keep else []
    if processes != saved_processes:
        fixes.append(f"resume on {_plural(saved_processes)}")
    elif not keep:
        fixes.append(
            f"resume with --per-device-batch-size {per_device} and --gradient-accumulation-steps {accumulation}"
        )
    raise TuneforgeError(
        f"{where} was written by {_plural(saved_processes)} with a global batch of {saved_batch} rows "
        f"({saved_groups} x {per_device} per device x {accumulation} accumulation steps), but this run has "
        f"{_plural(processes)} and a global batch of {batch}, so resuming would not skip exactly the rows already trained; "
        f"{', or '.join(fixes)}."
    )


def _lies_in(path: str, root: Path) -> bool:
    """True when the file or directory ``path`` (a model or data spec, maybe ``NAME:SPLIT``) is ``root`` or inside it."""
    candidate = Path(path)
    if not candidate.exists():
        candidate = Path(path.rsplit(":", 1)[0])
    if not candidate.exists():
        return False
    resolved, top = candidate.resolve(), root.resolve()
    return resolved == top or top in resolved.parents


def check_output_dir(output_dir: str, *, resume: bool, overwrite: bool, inputs: tuple[str, ...] = ()) -> Path | None:
    """Decide what a run may do with ``output_dir``; return the checkpoint to resume from.

    Runs before any expensive work, so a mistake costs nothing. A directory that is
    not a tuneforge run is never written into unless it is empty (or holds only what
    a tuneforge run killed early leaves); a run is replaced only with
    ``overwrite``; a resumed checkpoint must carry the id of the run recorded beside
    it. ``inputs``: the model and data paths of the run, which an overwrite must not
    delete.
    """
    root = Path(output_dir)
    if root.exists() and not root.is_dir():
        raise TuneforgeError(f"--output-dir '{output_dir}' is a file; pass a directory.")
    if resume and overwrite:
        raise TuneforgeError(
            "--resume continues the run in --output-dir and --overwrite-output-dir replaces it; pass only one of them."
        )
    if not root.is_dir():
        return None
    if not is_run_dir(root):
        foreign = sorted(p.name for p in root.iterdir() if p.name not in OWN_NAMES)
        if foreign:
            shown = ", ".join(f"'{name}'" for name in foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
            raise TuneforgeError(
                f"--output-dir '{output_dir}' is not empty and holds no tuneforge run ({shown}), so nothing in it "
                f"is written over; choose a new or empty --output-dir."
            )
        return None
    finished = (root / RUN_RECORD).is_file()
    found = checkpoints(root)
    if overwrite:
        inside = [path for path in inputs if _lies_in(path, root)]
        if inside:
            raise TuneforgeError(
                f"--overwrite-output-dir would delete '{inside[0]}', which this run reads, because it lies in "
                f"--output-dir '{output_dir}'; choose another --output-dir."
            )
        return None
    if finished and not resume:
        raise TuneforgeError(
            f"--output-dir '{output_dir}' already holds a finished run; choose a new --output-dir "
            f"or pass --overwrite-output-dir to replace it."
        )
    if found and not resume:
        raise TuneforgeError(
            f"--output-dir '{output_dir}' holds checkpoints of an unfinished run (last: {found[-1].name}); "
            f"pass --resume to continue it, or choose a new --output-dir."
        )
    if not resume:
        return None  # only the start of a run killed before its first checkpoint: started again
    if not found:
        if finished:
            raise TuneforgeError(
                f"--output-dir '{output_dir}' holds a finished run whose checkpoints are gone, so there is nothing "
                f"to resume; pass --overwrite-output-dir to train it again or choose a new --output-dir."
            )
        return None
    last = found[-1]
    run_id, written_by = (read_started(output_dir) or {}).get("run_id"), checkpoint_run_id(last)
    if run_id != written_by:
        raise TuneforgeError(
            f"{last.name} in '{output_dir}' was written by another run than the one recorded in {STARTED_RECORD} "
            f"(run {written_by or 'unknown'}, not {run_id or 'unknown'}), so it is not resumed; "
            f"pass --overwrite-output-dir to start again or choose a new --output-dir."
        )
    return last


def clear_run(root: Path) -> None:
    """Delete everything a previous run left in ``root``, before a new run writes there.

    Each entry is first renamed into one hidden folder, then that folder is deleted:
    a kill at any moment leaves no half-deleted ``checkpoint-N`` or record under the
    name a run reads, only the hidden folder, which the next run deletes. Renaming
    rather than deleting in place costs nothing extra, and the folder is deleted at
    once, so a run never needs the disk of two.
    """
    if not root.is_dir():
        return
    trash = root / REPLACED
    shutil.rmtree(trash, ignore_errors=True)  # left by a run killed while it cleared
    entries = [entry for entry in root.iterdir() if entry.name not in (REPLACED, LOCK)]
    if not entries:
        return
    trash.mkdir()
    for entry in entries:
        os.replace(entry, trash / entry.name)
    shutil.rmtree(trash)


@contextlib.contextmanager
def claimed(output_dir: str | os.PathLike):
    """Hold ``output_dir``'s lock while the body runs: one run at a time trains into a directory.

    A second run started on the same directory while the first is alive (a resume, an
    overwrite) is refused here, before it reads a checkpoint or deletes a file; two runs
    writing the same checkpoints would leave a mix of both. The lock is the operating
    system's (``flock``), so a killed run holds it no more: the next run takes it. Where
    there is no ``flock`` (not POSIX) nothing is locked. A process that holds it may take it
    again inside (``flock`` would refuse a second open of the file even in the same process);
    it is released when the outer hold ends, so runs one after another in a process each take it.
    """
    try:
        import fcntl
    except ImportError:
        yield
        return
    root = Path(output_dir)
    key = str(root.resolve())
    if key in _HELD:
        yield
        return
    created = not root.exists()
    root.mkdir(parents=True, exist_ok=True)
    handle = open(root / LOCK, "a+", encoding="utf-8")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.seek(0)
        holder = handle.read().strip() or "unknown"
        handle.close()
        raise TuneforgeError(
            f"--output-dir '{output_dir}' is being written by another tuneforge run that is still running "
            f"(process {holder}); wait for it to end or stop it (--resume then continues it), or choose another --output-dir."
        ) from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"{os.getpid()}\n")
    handle.flush()
    _HELD[key] = handle
    try:
        yield
    finally:
        del _HELD[key]
        try:
            os.unlink(root / LOCK)  # unlinked while still locked: the directory keeps only the run's files
        except OSError:
            pass
        handle.close()
        if created and not any(root.iterdir()):
            root.rmdir()  # a run that wrote nothing leaves no directory behind


def read_started(output_dir: str | os.PathLike) -> dict | None:
    path = Path(output_dir) / STARTED_RECORD
    if not path.is_file():
        return None
    try:
        started = json.loads(path.read_text())
    except ValueError:
        started = None
    if not isinstance(started, dict):
        raise TuneforgeError(
            f"'{path}' is not a tuneforge start record (not a JSON object); restore it, or pass "
            f"--overwrite-output-dir to replace the run."
        )
    return started


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


def run_record(config, *, method: str, base_model: str, family: str, template: str, tuner, dtype: str, data: dict, train_metrics: dict, base_adapters: list[str] = (), run_id: str | None = None, template_parity: dict | None = None, family_options=None, fast_path_off: dict | None = None) -> RunRecord:
    """What a run leaves beside its weights. ``base_adapters``: the adapter runs merged into
    ``base_model``, in order, before this run's adapter applies (a run continued from another).
    ``run_id``: the id its start record and checkpoints carry. ``template_parity``: the
    outcome of the template parity check (``ModelBundle.template_parity``). ``family_options``:
    the model family's options the weights and processor loaded with (``ModelBundle.family_options``),
    recorded under ``model_families`` even where the command's flags could not select the family.
    ``fast_path_off``: the fast-path options the parallel backend turned off, each with why."""
    from tuneforge.options import selected_options

    options = selected_options(config)
    if family_options is not None:
        options["model_families"] = {"name": family, "options": dataclasses.asdict(family_options)}

    return RunRecord(
        tuneforge_version=__version__,
        run_id=run_id,
        method=method,
        base_model=base_model,
        base_adapters=tuple(base_adapters),
        model_family=family,
        template=template,
        tuner=tuner.name,
        saves_adapter=tuner.saves_adapter,
        torch_dtype=dtype,
        plugins=plugin_versions(),
        libraries=library_versions(),
        data=data,
        train_metrics=train_metrics,
        config=dataclasses.asdict(config),
        options=options,
        template_parity=dict(template_parity or {}),
        fast_path_off=dict(fast_path_off or {}),
        created=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    )


def publish_final(staging: Path, output_dir: Path) -> None:
    """Move the final weights and tokenizer from ``staging`` into ``output_dir``."""
    for entry in staging.iterdir():
        target = output_dir / entry.name
        if target.is_dir():
            shutil.rmtree(target)
        os.replace(entry, target)
    staging.rmdir()
