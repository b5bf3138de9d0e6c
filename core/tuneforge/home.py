"""Where tuneforge keeps what it downloads and converts once (models, wheels)."""

from __future__ import annotations

import os
from pathlib import Path

HOME_ENV = "TUNEFORGE_HOME"
DEFAULT_HOME = "~/.cache/tuneforge"


def tuneforge_home() -> Path:
    """``$TUNEFORGE_HOME``, or ``~/.cache/tuneforge`` when it is unset or empty."""
    return Path(os.environ.get(HOME_ENV) or DEFAULT_HOME).expanduser()
