"""The installed versions of tuneforge's dependencies, checked before a command does any work.

pip can leave a set that does not work together: an environment made before the
ranges changed, a package upgraded or downgraded by hand, or a dependency whose own
ranges are looser than what it needs (transformers' adapter switching, for one,
refuses a peft older than the one it names in ``MIN_PEFT_VERSION``, and its Trainer
an accelerate older than ``ACCELERATE_MIN_VERSION``, which its package metadata does
not require). Without this check such a set fails much later,
as a traceback in the middle of training or as a 500 on every request of a server;
with it, the command stops at once with one sentence naming the package and what to
install.

Only package metadata and one source file are read (nothing is imported), so the
check costs a few milliseconds. ``packaging`` is there wherever transformers is.
"""

from __future__ import annotations

import functools
import importlib.metadata as metadata
import importlib.util
import re
from pathlib import Path

from .errors import TuneforgeError

PLUGIN_GROUP = "tuneforge"


def problems() -> list[str]:
    """One sentence for each installed package that tuneforge or an installed plugin cannot use."""
    found = []
    for owner, requirement in _requirements():
        sentence = _check(owner, requirement)
        if sentence and sentence not in found:
            found.append(sentence)
    found += _transformers_minimums()
    return found


@functools.lru_cache(maxsize=None)
def check_installed() -> None:
    """Refuse to go on when an installed version does not fit (the first problem, in one sentence)."""
    found = problems()
    if found:
        raise TuneforgeError(found[0])


def _requirements():
    """(who needs it, Requirement) for tuneforge's and each installed plugin's install requirements."""
    owners = ["tuneforge"]
    for entry_point in metadata.entry_points(group=PLUGIN_GROUP):
        dist = getattr(entry_point, "dist", None)
        name = dist.metadata["Name"] if dist is not None else None
        if name and name not in owners:
            owners.append(name)
    for owner in owners:
        for requirement in declared_requirements(owner):
            yield owner, requirement


def declared_requirements(distribution: str):
    """The Requirements ``distribution`` declares for its install (not its extras', nor another
    platform's); none where it is not installed (a source tree run without an install)."""
    from packaging.requirements import InvalidRequirement, Requirement

    try:
        lines = metadata.requires(distribution) or []
    except metadata.PackageNotFoundError:
        return
    for line in lines:
        try:
            requirement = Requirement(line)
        except InvalidRequirement:
            continue
        if requirement.marker is not None and not requirement.marker.evaluate({"extra": ""}):
            continue
        yield requirement


def _check(owner: str, requirement) -> str | None:
    wanted = f"{requirement.name}{requirement.specifier}"
    try:
        installed = metadata.version(requirement.name)
    except metadata.PackageNotFoundError:
        return f"{requirement.name} is not installed, but {owner} needs {wanted}; install it with pip install '{wanted}'."
    if not requirement.specifier or requirement.specifier.contains(installed, prereleases=True):
        return None
    return (
        f"{requirement.name} {installed} is installed, but {owner} needs {wanted}; "
        f"install a version that fits with pip install '{wanted}'."
    )


# Minimums that transformers checks in its source (when adapters load, when the
# Trainer starts) but does not declare in its package metadata.
TRANSFORMERS_MINIMUMS = {
    "peft": ("integrations/peft.py", "MIN_PEFT_VERSION", "loads and switches LoRA adapters"),
    "accelerate": ("utils/import_utils.py", "ACCELERATE_MIN_VERSION", "trains"),
}


def _transformers_minimums() -> list[str]:
    from packaging.version import InvalidVersion, Version

    found = []
    for package, (_, _, what) in TRANSFORMERS_MINIMUMS.items():
        needed = transformers_minimum(package)
        try:
            transformers, installed = metadata.version("transformers"), metadata.version(package)
            if needed is None or Version(installed) >= Version(needed):
                continue
        except (metadata.PackageNotFoundError, InvalidVersion):
            continue  # a missing one is named by the declared requirements
        found.append(
            f"transformers {transformers} {what} only with {package}>={needed}, but {package} {installed} is installed; "
            f"install a newer one with pip install '{package}>={needed}', or a transformers that works with it."
        )
    return found


def transformers_minimum(package: str) -> str | None:
    """The installed transformers' minimum version of ``package``, read from its source without importing it."""
    file, constant, _ = TRANSFORMERS_MINIMUMS[package]
    spec = importlib.util.find_spec("transformers")
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        source = Path(folder) / file
        if source.is_file():
            found = re.search(rf'^{constant}\s*=\s*["\']([^"\']+)["\']', source.read_text(encoding="utf-8"), re.MULTILINE)
            return found.group(1) if found else None
    return None
