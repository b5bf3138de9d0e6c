"""Directories built once and kept: converted checkpoints, models trained on first use.

``build_once(target, make, complete=..., name=..., doing=...)`` returns ``target``
when it is already complete; otherwise it takes a lock beside it (so two processes
never build at once: the second waits, then finds the first one's result), lets
``make(staged)`` write the finished directory at ``staged`` (a path in a temporary
sibling folder; ``make`` creates it, marker file included), and renames it into
place. An interrupted build leaves only its temporary sibling, which the next
build removes; no directory looks finished before it is.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Iterator

from .errors import TuneforgeError
from .home import tuneforge_home


def build_once(
    target: str | os.PathLike,
    make: Callable[[Path], object],
    *,
    complete: Callable[[Path], bool],
    name: str,
    doing: str = "building",
) -> Path:
    """``target``, built by ``make`` into a staged sibling and renamed into place unless ``complete`` already."""
    target = Path(target)
    if complete(target):
        return target
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise TuneforgeError(
            f"Cannot create '{target.parent}' for the {name} checkpoint ({exc.strerror}); "
            f"set TUNEFORGE_HOME to a writable directory."
        ) from None
    try:
        with _lock(target, f"Waiting for another process that is {doing} {name} ...") as exclusive:
            if complete(target):  # another process finished while this one waited
                return target
            if exclusive:
                remove_leftovers(target)
            started = time.monotonic()
            work = Path(tempfile.mkdtemp(prefix=_work_prefix(target), dir=target.parent))
            try:
                staged = work / "checkpoint"
                make(staged)
                _install(staged, target, complete)
            finally:
                shutil.rmtree(work, ignore_errors=True)
            print(f"Saved {name} to {target} ({time.monotonic() - started:.0f} s)", file=sys.stderr, flush=True)
    except PermissionError as exc:
        raise TuneforgeError(
            f"Cannot write the {name} checkpoint under '{tuneforge_home()}' ({exc.strerror}: "
            f"'{exc.filename}'); set TUNEFORGE_HOME to a writable directory."
        ) from None
    return target


def remove_leftovers(target: Path) -> None:
    """Remove the temporary siblings of builds that were interrupted (only under the lock)."""
    for prefix in (_work_prefix(target), _aside_prefix(target)):
        for leftover in target.parent.glob(f"{prefix}*"):
            shutil.rmtree(leftover, ignore_errors=True)


def _work_prefix(target: Path) -> str:
    return f".{target.name}.tmp-"


def _aside_prefix(target: Path) -> str:
    return f".{target.name}.old-"


def _install(staged: Path, target: Path, complete: Callable[[Path], bool]) -> None:
    """Rename a finished directory into place, replacing only an unfinished one."""
    try:
        os.rename(staged, target)
        return
    except OSError:
        if not target.exists():
            raise
    if complete(target):  # another process got there first; keep its copy
        return
    aside = Path(tempfile.mkdtemp(prefix=_aside_prefix(target), dir=target.parent))
    os.rename(target, aside / target.name)
    os.rename(staged, target)
    shutil.rmtree(aside, ignore_errors=True)


@contextlib.contextmanager
def _lock(target: Path, waiting: str) -> Iterator[bool]:
    """Hold an exclusive lock beside ``target``; yields False where locks are not available."""
    try:
        import fcntl
    except ImportError:  # no advisory locks here: the atomic rename still protects the result
        yield False
        return
    with open(target.parent / f".{target.name}.lock", "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(waiting, file=sys.stderr, flush=True)
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield True
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
