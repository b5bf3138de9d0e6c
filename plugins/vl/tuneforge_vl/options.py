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
    video_fps: float = option(
        2.0,
        "Frames a second sampled from a video file of a video_url part (Qwen2-VL, Qwen2.5-VL and Qwen3-VL; Qwen's default 2), "
        "and the rate a video given as frames stands for.",
        group="images",
    )
    max_frames: int = option(
        768,
        "Most frames taken from one video (Qwen2-VL, Qwen2.5-VL and Qwen3-VL; Qwen's default 768); each frame is resized "
        "under the same --max-pixels/--min-pixels bounds as an image.",
        group="images",
    )


def set_image_settings(image_processor, settings: dict) -> None:
    """Set ``settings`` (attribute name: value, from a family's ``image_settings``) on ``image_processor``;
    a mapping replaces a dataclass-valued attribute (a ``SizeDict``) as an instance of that class."""
    for name, value in settings.items():
        current = getattr(image_processor, name, None)
        if isinstance(value, dict) and hasattr(current, "__dataclass_fields__"):
            value = type(current)(**value)
        setattr(image_processor, name, value)


def processor_kwargs_from(image_settings):
    """A ``ModelFamily.processor_kwargs`` from a family's ``image_settings(image_processor, options) -> dict``:
    the settings ``load_processor`` set, as the keyword arguments another program's processor of the
    checkpoint takes (vLLM's ``mm_processor_kwargs`` reach its image processor as these)."""

    def processor_kwargs(processor, options: ImageOptions | None) -> dict:
        images = getattr(processor, "image_processor", None)
        return image_settings(images, options) if images is not None else {}

    return processor_kwargs
