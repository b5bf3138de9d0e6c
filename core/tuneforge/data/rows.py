"""A raw dataset row with its origin, and the tally of bad rows."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..errors import DataError


@dataclass
class Row:
    """One row as read from a file; ``where`` names its file and line (or row).

    ``folder`` is the dataset file's folder, from which the relative paths of its
    images and videos are read (None: the current directory).
    """

    data: Any
    where: str
    source: str  # the dataset spec it came from
    folder: str | None = None


@dataclass
class BadRows:
    """Bad rows either stop the run (the default) or are skipped and counted."""

    skip: bool = False
    count: int = 0
    examples: list[str] = field(default_factory=list)
    keep_examples: int = 5

    def report(self, where: str, reason: str) -> None:
        message = f"{where}: {reason}"
        if not message.endswith("."):
            message += "."
        if not self.skip:
            raise DataError(message)
        self.count += 1
        if len(self.examples) < self.keep_examples:
            self.examples.append(message)
