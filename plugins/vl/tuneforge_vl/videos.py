"""Videos of ``video_url`` parts: read as frames and sampled, before a family's video processor encodes them.

A video is given as

- a list of frame images: a JSON list of paths or ``file://`` URLs as the part's URL
  (``'["clip/0001.png", "clip/0002.png"]'``; a ShareGPT ``videos`` entry may be that list
  itself), or a directory whose image files are the frames in name order: every frame
  is kept, taken as shot at ``--video-fps`` (more than ``--max-frames`` are thinned
  evenly);
- a video file (mp4, webm, mov ...), or a ``data:`` URL holding one, decoded with the first
  decoder importable of OpenCV (``cv2``), PyAV (``av``) and ``torchvision.io``: frames are
  sampled at ``--video-fps`` (Qwen's default 2 per second), at most ``--max-frames``, their
  count rounded to the temporal patch size (2), evenly over the whole video.

A missing or unreadable video, or a video file where no decoder is installed, raises
``TemplateError`` as one sentence naming the fix (the data layer prefixes the row's file
and line). Decoding is this module's; resizing, patching and the grid are the family's
video processor's (transformers' own).
"""

from __future__ import annotations

import base64
import json
import math
import os
import tempfile
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from tuneforge.api import TemplateError, load_image

DEFAULT_FPS = 2.0  # frames a second Qwen samples (qwen-vl-utils' FPS)
DEFAULT_MAX_FRAMES = 768  # Qwen's FPS_MAX_FRAMES
TEMPORAL_PATCH = 2  # frames one temporal patch spans (Qwen2-VL's temporal_patch_size)
MIN_FRAMES = 4  # fewest frames sampled from a video file (qwen-vl-utils' FPS_MIN_FRAMES), where it has them
FRAME_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")
DECODERS = ("cv2", "av", "torchvision")
INSTALL = "pip install opencv-python-headless"


@dataclass(frozen=True)
class VideoSampling:
    """How videos are sampled: ``fps`` frames a second, at most ``max_frames``."""

    fps: float = DEFAULT_FPS
    max_frames: int = DEFAULT_MAX_FRAMES


@dataclass
class Video:
    """The frames of one video (PIL images, in order) and the rate they stand for (frames a second)."""

    frames: list
    fps: float


def _path(url: str) -> str:
    if url.lower().startswith("file://"):
        rest = url[len("file://"):]
        return urllib.parse.unquote(rest[len("localhost"):] if rest.startswith("localhost/") else rest)
    return url


def _quoted(url: str) -> str:
    return repr(url) if len(url) <= 80 else repr(url[:60] + "...")


def frame_list(url: str) -> list[str] | None:
    """The frame files a video reference names (a JSON list, or a directory's images in name order); None for a video file."""
    text = url.strip()
    if text.startswith("["):
        try:
            entries = json.loads(text)
        except ValueError:
            raise TemplateError(f"The video {_quoted(url)} is not a valid JSON list of frames; give a list of frame image paths such as [\"f1.png\", \"f2.png\"].") from None
        if not entries or not all(isinstance(e, str) and e.strip() for e in entries):
            raise TemplateError(f"The video {_quoted(url)} is not a list of frame paths; give at least one frame image path, as text.")
        return [_path(e.strip()) for e in entries]
    if text.startswith("data:"):
        return None
    path = Path(_path(text)).expanduser()
    if path.is_dir():
        frames = sorted(str(p) for p in path.iterdir() if p.suffix.lower() in FRAME_SUFFIXES and p.is_file())
        if not frames:
            raise TemplateError(f"The video directory '{path}' holds no frame images ({', '.join(FRAME_SUFFIXES)}); put the frames there, or give a video file.")
        return frames
    return None


def decoder() -> str | None:
    """The first video decoder importable here (``cv2``, ``av``, ``torchvision``), or None."""
    for name in DECODERS:
        try:
            if name == "torchvision":
                import torchvision.io  # noqa: F401  (fails beside a torch it was not built for)
            else:
                __import__(name)
        except Exception:
            continue
        return name
    return None


def sample_indices(total: int, source_fps: float, fps: float, max_frames: int) -> list[int]:
    """Which of ``total`` frames shot at ``source_fps`` to keep at ``fps`` frames a second (qwen-vl-utils' rule).

    ``total / source_fps * fps`` frames, at least ``MIN_FRAMES`` and at most ``max_frames`` and
    ``total``, rounded to a multiple of ``TEMPORAL_PATCH``, spread evenly from the first frame
    to the last. A video of one frame keeps it (the processor repeats it to fill the patch).
    """
    if total < TEMPORAL_PATCH:
        return list(range(total))
    wanted = total / source_fps * fps if source_fps > 0 else total
    top = max(TEMPORAL_PATCH, min(max_frames, total) // TEMPORAL_PATCH * TEMPORAL_PATCH)
    count = min(max(round(wanted / TEMPORAL_PATCH) * TEMPORAL_PATCH, MIN_FRAMES), top)
    return [round(i * (total - 1) / (count - 1)) for i in range(count)]


def _thin(count: int, max_frames: int) -> list[int]:
    if count <= max_frames:
        return list(range(count))
    return [math.floor(i * count / max_frames) for i in range(max_frames)]


def load_video(url: str, sampling: VideoSampling = VideoSampling()) -> Video:
    """The sampled frames of the video ``url`` names (see the module's docstring)."""
    frames = frame_list(url)
    if frames is not None:
        images = []
        for frame in (frames[i] for i in _thin(len(frames), sampling.max_frames)):
            if not Path(frame).is_file():
                raise TemplateError(f"The video frame '{frame}' does not exist; fix the frame's path, or copy the frame there.")
            try:
                images.append(load_image(frame).convert("RGB"))
            except Exception as exc:
                raise TemplateError(f"The video frame '{frame}' could not be read as an image ({type(exc).__name__}); give a PNG, JPEG or WebP frame.") from None
        return Video(images, sampling.fps)
    return _decode(url, sampling)


def _decode(url: str, sampling: VideoSampling) -> Video:
    name = decoder()
    if name is None:
        raise TemplateError(
            f"The video {_quoted(url)} is a video file, and no video decoder (OpenCV, PyAV or torchvision) is installed; "
            f"{INSTALL}, or give the video as its frames (a directory of images or a JSON list of image paths)."
        )
    if url.startswith("data:"):
        header, _, payload = url.partition(",")
        try:
            raw = base64.b64decode(payload, validate=True)
        except ValueError:
            raise TemplateError(f"The video data: URL {_quoted(url)} holds invalid base64; encode the video bytes again.") from None
        handle, temporary = tempfile.mkstemp(suffix=".video")
        try:
            with os.fdopen(handle, "wb") as out:
                out.write(raw)
            return _decode_file(name, temporary, url, sampling)
        finally:
            os.unlink(temporary)
    path = _path(url)
    if not Path(path).is_file():
        raise TemplateError(f"The video file '{path}' does not exist; fix the path in the row, or copy the file there.")
    return _decode_file(name, path, url, sampling)


def _unreadable(url: str, name: str) -> TemplateError:
    return TemplateError(f"The video {_quoted(url)} could not be decoded with {name}; give an mp4/webm/mov file it reads, or the video's frames as images.")


def _decode_file(name: str, path: str, url: str, sampling: VideoSampling) -> Video:
    from PIL import Image

    if name == "cv2":
        import cv2

        capture = cv2.VideoCapture(path)
        try:
            if not capture.isOpened():
                raise _unreadable(url, "OpenCV")
            source_fps = capture.get(cv2.CAP_PROP_FPS) or 0.0
            decoded = []
            while True:
                ok, frame = capture.read()
                if not ok:
                    break
                decoded.append(frame)
        finally:
            capture.release()
        arrays = [cv2.cvtColor(frame, cv2.COLOR_BGR2RGB) for frame in decoded]
    elif name == "av":
        import av

        try:
            with av.open(path) as container:
                stream = container.streams.video[0]
                source_fps = float(stream.average_rate or 0.0)
                arrays = [frame.to_ndarray(format="rgb24") for frame in container.decode(stream)]
        except Exception:
            raise _unreadable(url, "PyAV") from None
    else:
        import torchvision.io

        try:
            video, _, info = torchvision.io.read_video(path, pts_unit="sec", output_format="THWC")
        except Exception:
            raise _unreadable(url, "torchvision") from None
        source_fps = float(info.get("video_fps") or 0.0)
        arrays = [frame.numpy() for frame in video]
    if not arrays:
        raise _unreadable(url, name)
    keep = sample_indices(len(arrays), source_fps, sampling.fps, sampling.max_frames)
    rate = sampling.fps if source_fps > 0 else DEFAULT_FPS
    if source_fps > 0 and len(keep) > 1:
        rate = len(keep) / (len(arrays) / source_fps)  # the rate the kept frames stand for
    return Video([Image.fromarray(arrays[i]) for i in keep], rate)


def videos_of(messages) -> list[str]:
    """The ``video_url`` URLs of a conversation, in order."""
    return [
        part["video_url"]["url"]
        for message in messages
        if isinstance(message.get("content"), list)
        for part in message["content"]
        if isinstance(part, Mapping) and part.get("type") == "video_url"
    ]
