"""The plugin API's version, and the check a plugin passes when it loads.

A plugin's entry-point module declares the version of ``tuneforge.api`` it was
written for as ``TUNEFORGE_API = "MAJOR.MINOR"``. Within one major version a
minor release only adds, so a plugin written for 1.0 loads on every 1.x from 1.0
up; a plugin written for a newer minor, or for a major this tuneforge no longer
supports, is set aside with one sentence saying which side to upgrade. A module
without the attribute predates the declaration and is taken as written for 1.0.
"""

from __future__ import annotations

API_VERSION = "1.0"  # what tuneforge.api offers now
OLDEST_API_VERSION = "1.0"  # the oldest declaration still accepted
ATTRIBUTE = "TUNEFORGE_API"  # the entry-point module's declaration
UNDECLARED = "1.0"


def _parse(value) -> tuple[int, int] | None:
    if not isinstance(value, str):
        return None
    parts = value.strip().split(".")
    if len(parts) != 2 or not all(part.isdigit() for part in parts):
        return None
    return int(parts[0]), int(parts[1])


def declared_version(module) -> object:
    return getattr(module, ATTRIBUTE, UNDECLARED)


def version_problem(plugin: str, distribution: str, declared: object) -> tuple[str, str] | None:
    """None when a plugin declaring ``declared`` can load; else (short reason, one-sentence warning)."""
    wanted = _parse(declared)
    if wanted is None:
        reason = f"{ATTRIBUTE} = {declared!r} is not a version like \"{API_VERSION}\""
        return reason, (
            f"warning: plugin '{plugin}' from {distribution} declares {ATTRIBUTE} = {declared!r}, which is not "
            f"a plugin API version like \"{API_VERSION}\", and was skipped; fix the declaration in {distribution}."
        )
    if wanted > _parse(API_VERSION):
        return f"written for plugin API {declared}; this tuneforge offers {API_VERSION}", (
            f"warning: plugin '{plugin}' from {distribution} was written for tuneforge plugin API {declared}, "
            f"newer than this tuneforge's {API_VERSION}, and was skipped; upgrade tuneforge."
        )
    if wanted < _parse(OLDEST_API_VERSION):
        return f"written for plugin API {declared}; this tuneforge supports {OLDEST_API_VERSION} to {API_VERSION}", (
            f"warning: plugin '{plugin}' from {distribution} was written for tuneforge plugin API {declared}, "
            f"older than the oldest this tuneforge supports ({OLDEST_API_VERSION}; it offers {API_VERSION}), "
            f"and was skipped; upgrade {distribution}."
        )
    return None
