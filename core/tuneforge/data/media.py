"""The images and videos dataset rows refer to: found, fetched and checked before any weights load.

An ``image_url`` or ``video_url`` part of a row (written by the row, or made by a dataset
format from an ``<image>`` placeholder and an ``images`` list) names its picture as

- a file path: absolute, ``~/...``, or relative to the folder of the dataset file the
  row comes from (not the directory tuneforge runs in), so a dataset moved together
  with its images keeps working;
- a ``file://`` URL (``file:///abs/path``; percent-escapes are decoded);
- a ``data:...;base64,...`` URL;
- an ``http://`` or ``https://`` URL, fetched once with the standard library
  (``FETCH_TIMEOUT`` seconds, at most ``FETCH_LIMIT`` bytes) into
  ``$TUNEFORGE_HOME/media`` and read from that copy afterwards.

``MediaCheck.resolve`` rewrites each reference to an absolute path (``data:`` URLs
stay), and opens the header of each image with Pillow (not its pixels): a missing
file, a folder, an unreachable URL, a file that is not an image, invalid base64 each
fail as one sentence that the caller prefixes with the row's file and line. It runs
while the rows are converted, before any tokenization and before the model loads; a
picture named by many rows is checked once. It costs about 0.8 ms a picture: 1,000
rows naming different JPEG files convert in 1.0 s instead of 0.2 s (docs/data.md). Videos are checked to be readable files, directories
holding frame images, or JSON lists of frame images (each checked as an image); decoding them is the family's.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import json
import os
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any, Mapping

from ..errors import DataError
from ..home import tuneforge_home
from .text import brief

MEDIA_PARTS = {"image_url": "image", "video_url": "video"}
FETCH_TIMEOUT = 30  # seconds without an answer before a fetch gives up
FETCH_LIMIT = 64 * 2**20  # bytes: a larger download is refused
_REMOTE = ("http://", "https://")


def media_cache() -> Path:
    """Where fetched images and videos are kept: ``$TUNEFORGE_HOME/media``."""
    return tuneforge_home() / "media"


def _quoted(url: str) -> str:
    return brief(url) if url.startswith("data:") else repr(url)


class MediaCheck:
    """Resolves and checks the media parts of converted rows, remembering what it already checked."""

    def __init__(self) -> None:
        self._checked: dict[tuple[str, str], str | None] = {}  # (kind, path or data URL) -> problem
        self._fetched: dict[str, str] = {}  # URL -> local copy

    def resolve(self, data: dict, folder: str | None) -> dict:
        """``data`` with every media part's reference made absolute (or fetched), each checked.

        Looks at the message lists of ``data`` (``messages``, or a preference pair's
        ``prompt``/``chosen``/``rejected``/``completion``); returns ``data`` itself when
        no message has media parts.
        """
        changed: dict[str, Any] = {}
        for key, value in data.items():
            if isinstance(value, list) and any(self._has_media(m) for m in value):
                changed[key] = [self._message(m, folder) if self._has_media(m) else m for m in value]
        return {**data, **changed} if changed else data

    @staticmethod
    def _has_media(message: Any) -> bool:
        content = message.get("content") if isinstance(message, Mapping) else None
        return isinstance(content, list) and any(isinstance(p, Mapping) and p.get("type") in MEDIA_PARTS for p in content)

    def _message(self, message: Mapping, folder: str | None) -> dict:
        parts = []
        for part in message["content"]:
            kind = part.get("type") if isinstance(part, Mapping) else None
            if kind in MEDIA_PARTS:
                payload = part.get(kind)
                if isinstance(payload, str):  # the short form {"image_url": "..."}
                    payload = {"url": payload}
                if not isinstance(payload, Mapping) or not isinstance(payload.get("url"), str) or not payload["url"]:
                    raise DataError(f"a {kind} part is {brief(part)}; give it as {{\"type\": \"{kind}\", \"{kind}\": {{\"url\": ...}}}}")
                part = {**part, kind: {**payload, "url": self.reference(payload["url"], MEDIA_PARTS[kind], folder)}}
            parts.append(part)
        return {**message, "content": parts}

    def reference(self, url: str, kind: str, folder: str | None) -> str:
        """The checked form of one reference: an absolute path, or the ``data:`` URL itself.

        A video may also be its frames: a JSON list of image references (each resolved and
        checked as an image; the list is given back as JSON), or a directory of frame images.
        """
        url = url.strip()
        if kind == "video" and url.startswith("["):
            return json.dumps([self.reference(frame, "image", folder) for frame in _frames(url)])
        if url.startswith("data:"):
            self._check(kind, url, url, None)
            return url
        if url.lower().startswith(_REMOTE):
            path = self._fetch(url, kind)
            self._check(kind, path, url, None)
            return path
        if "://" in url and not url.lower().startswith("file://"):
            scheme = url.split("://", 1)[0]
            raise DataError(
                f"the {kind} {_quoted(url)} uses the scheme '{scheme}', which tuneforge does not read; "
                f"give a file path, a file://, data: or http(s) URL, or download it and give its local path"
            )
        path = _local_path(url, folder)
        self._check(kind, str(path), url, folder)
        return str(path)

    # -- checks ------------------------------------------------------------------------------

    def _check(self, kind: str, target: str, url: str, folder: str | None) -> None:
        key = (kind, target)
        if key not in self._checked:
            self._checked[key] = _problem(kind, target)
        problem = self._checked[key]
        if problem is None:
            return
        if target.startswith("data:"):
            raise DataError(f"the {kind} data: URL {brief(url)} {problem}")
        named = f"the {kind} file '{target}'"
        if url != target and not url.lower().startswith(_REMOTE):
            where = f"the dataset file's folder {folder}" if folder else f"the current directory {os.getcwd()}"
            named += f" (the row's '{url}', read from {where})"
        elif url != target:
            named = f"the {kind} fetched from {url!r} (kept as '{target}')"
        raise DataError(f"{named} {problem}")

    # -- fetching ----------------------------------------------------------------------------

    def _fetch(self, url: str, kind: str) -> str:
        if url in self._fetched:
            return self._fetched[url]
        suffix = Path(urllib.parse.urlsplit(url).path).suffix.lower()
        suffix = suffix if suffix[1:].isalnum() and len(suffix) <= 6 else ""
        target = media_cache() / (hashlib.sha256(url.encode()).hexdigest()[:32] + suffix)
        if not target.is_file():
            raw = _download(url, kind)
            target.parent.mkdir(parents=True, exist_ok=True)
            partial = target.with_name(f".{target.name}.{os.getpid()}.part")
            partial.write_bytes(raw)
            os.replace(partial, target)
        self._fetched[url] = str(target)
        return str(target)


def _frames(url: str) -> list[str]:
    """The entries of a video given as a JSON list of frame images."""
    try:
        frames = json.loads(url)
    except ValueError:
        frames = None
    if not isinstance(frames, list) or not frames or not all(isinstance(f, str) and f.strip() for f in frames):
        raise DataError(f"the video {_quoted(url)} is not a JSON list of frame paths; give a video file, a directory of frames, or a list such as [\"f1.png\", \"f2.png\"]")
    return frames


_FRAME_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")


def _local_path(url: str, folder: str | None) -> Path:
    """A path or ``file://`` URL as an absolute path; relative ones are read from ``folder``."""
    if url.lower().startswith("file://"):
        rest = url[len("file://"):]
        if rest.startswith("localhost/"):
            rest = rest[len("localhost"):]
        url = urllib.parse.unquote(rest)
    path = Path(url).expanduser()
    if not path.is_absolute():
        path = Path(folder or os.getcwd()) / path
    return Path(os.path.normpath(path))


def _download(url: str, kind: str) -> bytes:
    def refused(reason: str) -> DataError:
        return DataError(
            f"the {kind} URL {url!r} could not be fetched ({reason}); download it and give its local path in the row "
            f"(a relative path is read from the dataset file's folder)"
        )

    from .. import __version__

    request = urllib.request.Request(url, headers={"User-Agent": f"tuneforge/{__version__}"})
    try:
        with urllib.request.urlopen(request, timeout=FETCH_TIMEOUT) as response:
            length = response.headers.get("Content-Length")
            if length and length.isdigit() and int(length) > FETCH_LIMIT:
                raise refused(f"it is {int(length):,} bytes, more than the {FETCH_LIMIT:,} tuneforge fetches")
            raw = response.read(FETCH_LIMIT + 1)
    except urllib.error.HTTPError as exc:
        raise refused(f"HTTP {exc.code} {exc.reason}") from None
    except urllib.error.URLError as exc:
        raise refused(getattr(exc.reason, "strerror", None) or str(exc.reason)) from None
    except TimeoutError:
        raise refused(f"no answer within {FETCH_TIMEOUT} s") from None
    except OSError as exc:
        raise refused(exc.strerror or type(exc).__name__) from None
    if len(raw) > FETCH_LIMIT:
        raise refused(f"it is more than the {FETCH_LIMIT:,} bytes tuneforge fetches")
    return raw


def _problem(kind: str, target: str) -> str | None:
    """What is wrong with one picture (a path or a ``data:`` URL), as the end of a sentence; None if nothing."""
    if target.startswith("data:"):
        header, _, payload = target.partition(",")
        if ";base64" not in header:
            return f"is not base64 (no ';base64' before the comma); encode the {kind} bytes as base64"
        try:
            raw = base64.b64decode(payload, validate=True)
        except (binascii.Error, ValueError):
            return f"holds invalid base64; encode the {kind} bytes again"
        return _image_problem(io.BytesIO(raw)) if kind == "image" else None
    path = Path(target)
    if not path.exists():
        return "does not exist; fix the path in the row, or copy the file there"
    if kind == "video" and path.is_dir():  # a video given as its frames, in name order
        if not any(p.suffix.lower() in _FRAME_SUFFIXES for p in path.iterdir()):
            return f"is a directory without frame images ({', '.join(_FRAME_SUFFIXES)}); put the video's frames there, or give the video file"
        return None
    if not path.is_file():
        return "is not a file (a directory?); give the path of the file itself"
    try:
        with open(path, "rb") as handle:
            head = handle.read(1)
    except OSError as exc:
        return f"cannot be read ({exc.strerror or type(exc).__name__}); check its permissions"
    if not head:
        return "is empty; write the file again, or remove the row"
    return _image_problem(path) if kind == "image" else None


def _image_problem(source) -> str | None:
    try:
        from PIL import Image, UnidentifiedImageError
    except ImportError:
        raise DataError("Reading image rows needs the 'pillow' package; install it with pip install pillow") from None
    try:
        with Image.open(source) as image:  # reads the header only
            width, height = image.size
    except UnidentifiedImageError:
        return "is not an image Pillow can read; give a PNG, JPEG, WebP or GIF image"
    except Exception as exc:  # Pillow raises several types for broken headers and decompression bombs
        return f"could not be read as an image ({type(exc).__name__}: {exc}); give a PNG, JPEG, WebP or GIF image"
    if not width or not height:
        return f"is {width}x{height} pixels; give an image with pixels"
    return None
