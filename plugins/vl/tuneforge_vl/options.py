"""The options every vision-language family of this plugin declares (one class, so a command
composes them once whichever family the model belongs to)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from tuneforge.api import option


@dataclass
class ImageOptions:
    max_pixels: Optional[int] = option(
        None,
        "Largest image area in pixels the processor resizes to (larger images are scaled down, keeping the aspect ratio); "
        "default: the checkpoint's processor setting. Fewer pixels: fewer image tokens, less memory.",
        group="images",
    )
    min_pixels: Optional[int] = option(
        None,
        "Smallest image area in pixels the processor resizes to (smaller images are scaled up); default: the checkpoint's processor setting.",
        group="images",
    )
