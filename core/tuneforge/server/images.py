"""The image parts of server requests: which forms the server takes, and how large.

- ``data:image/...;base64,...`` URLs. The decoded size is known from the base64
  length, so an image over ``max_bytes`` is refused before anything is decoded.
- Local file paths (or ``file://`` URLs), only under the directory the operator
  allows (``--allowed-image-dir``): a relative path is taken from there, the path
  is resolved (symlinks too) and refused when it leads outside; the part then
  names the resolved file. Without that option a path is refused: a server must
  not read the files a client names.
- Any other URL (``http://``, ``https://``, ...) is refused: the server fetches
  nothing.

Each image's header is read (Pillow opens lazily, so the pixels are not decoded;
for a ``data:`` URL only the first ``HEADER_BYTES`` are decoded when they hold the
header) to refuse an image over ``max_pixels`` before the engine decodes it, and a
request may carry at most ``max_images``. Sizes are 413s, the rest 400s, each with
a sentence naming the part and the option.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from ..inference import ChatRequest
from .errors import APIError, bad_request

DEFAULT_MAX_IMAGE_BYTES = 4 * 1024 * 1024  # a 4-megapixel JPEG, or a whiteboard photo as PNG
DEFAULT_MAX_IMAGE_PIXELS = 4096 * 4096
DEFAULT_MAX_IMAGES = 8
HEADER_BYTES = 64 * 1024  # enough for the header of a PNG, a WebP or a JPEG with modest EXIF data


@dataclass(frozen=True)
class ImageLimits:
    """What the server takes in ``image_url`` parts (the ``tuneforge deploy`` options of the same names)."""

    allowed_image_dir: str | None = None
    max_image_bytes: int = DEFAULT_MAX_IMAGE_BYTES
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS
    max_images: int = DEFAULT_MAX_IMAGES

    def body_bytes(self) -> int:
        """Room in a request body for ``max_images`` images as base64, and 1 MiB of text besides."""
        return self.max_images * (-(-self.max_image_bytes // 3) * 4) + 1024 * 1024


def has_images(requests: Sequence[ChatRequest]) -> bool:
    """Whether any request has ``image_url`` parts (or ``video_url`` parts, which ``check_images`` refuses)."""
    return any(_image_parts(request) or _video_parts(request) for request in requests)


def _video_parts(request: ChatRequest) -> list[tuple[int, int]]:
    return [
        (i, k)
        for i, message in enumerate(request.messages)
        if isinstance(message.get("content"), list)
        for k, part in enumerate(message["content"], start=1)
        if part.get("type") == "video_url"
    ]


def check_images(requests: Sequence[ChatRequest], limits: ImageLimits) -> list[ChatRequest]:
    """``requests`` with their image parts checked; a file path part names the resolved file afterwards."""
    checked = []
    for request in requests:
        for i, k in _video_parts(request):  # a video names files and decodes them: not checked here, so not taken
            raise bad_request(
                f"'messages[{i}].content' part {k} is a video_url part, which this server does not take (it serves images "
                f"only); send the video's frames as image_url parts.",
                param=f"messages[{i}].content", code="video_url_not_supported",
            )
        parts = _image_parts(request)
        if len(parts) > limits.max_images:
            raise bad_request(
                f"The request has {len(parts)} images, above this server's limit of {limits.max_images} (--max-images); "
                f"send at most {limits.max_images} images in one request.",
                param="messages", code="too_many_images",
            )
        messages = [dict(m) for m in request.messages]
        for i, k, url in parts:
            resolved = _check_image(url, f"messages[{i}].content", k, limits)
            if resolved != url:
                content = list(messages[i]["content"])
                content[k - 1] = {"type": "image_url", "image_url": {**content[k - 1]["image_url"], "url": resolved}}
                messages[i] = {**messages[i], "content": content}
        checked.append(dataclasses.replace(request, messages=messages) if parts else request)
    return checked


def _image_parts(request: ChatRequest) -> list[tuple[int, int, str]]:
    """(message index, part number from 1, URL) of every ``image_url`` part."""
    return [
        (i, k, part["image_url"]["url"])
        for i, message in enumerate(request.messages)
        if isinstance(message.get("content"), list)
        for k, part in enumerate(message["content"], start=1)
        if part.get("type") == "image_url"
    ]


def _brief(text: str) -> str:
    return repr(text) if len(text) <= 60 else repr(text[:57] + "...")


def _check_image(url: str, field: str, k: int, limits: ImageLimits) -> str:
    where = f"'{field}' part {k}"
    if url.startswith("data:"):
        return _check_data_url(url, where, field, limits)
    if "://" in url and not url.startswith("file://"):
        raise bad_request(
            f"{where} is the image URL {_brief(url)}, and this server fetches nothing; send the image as a data:image/...;base64 URL.",
            param=field, code="image_url_not_supported",
        )
    return _check_file(url, where, field, limits)


def _check_data_url(url: str, where: str, field: str, limits: ImageLimits) -> str:
    header, _, data = url.partition(",")
    if ";base64" not in header:
        raise bad_request(f"{where} is a data: URL without ';base64'; send the image bytes base64-encoded (data:image/png;base64,...).", param=field)
    size = len(data) // 4 * 3 - data[-2:].count("=") if data else 0
    if size > limits.max_image_bytes:
        raise _too_large(f"{where} is an image of about {size} bytes, above this server's limit of {limits.max_image_bytes} (--max-image-bytes); send a smaller image.", field)
    try:
        head = base64.b64decode(data[: HEADER_BYTES // 3 * 4], validate=True)
    except (binascii.Error, ValueError):
        head = None
    pixels = _pixels(io.BytesIO(head)) if head else None
    if pixels is None:  # the header is not in the first bytes (or they are not base64): decode it all
        try:
            raw = base64.b64decode(data, validate=True)
        except (binascii.Error, ValueError):
            raise bad_request(f"{where} holds invalid base64; encode the image bytes again (standard base64, no line breaks).", param=field) from None
        pixels = _pixels(io.BytesIO(raw))
    _check_pixels(pixels, where, field, limits)
    return url


def _check_file(url: str, where: str, field: str, limits: ImageLimits) -> str:
    if limits.allowed_image_dir is None:
        raise bad_request(
            f"{where} is the file path {_brief(url)}, and this server reads no image files unless started with --allowed-image-dir; "
            f"send the image as a data:image/...;base64 URL.",
            param=field, code="image_path_not_allowed",
        )
    root = Path(limits.allowed_image_dir).resolve()
    path = (root / url.removeprefix("file://")).resolve()  # an absolute path stays itself
    if not path.is_relative_to(root):
        raise bad_request(
            f"{where} is the file path {_brief(url)}, which is outside the directory this server reads images from (--allowed-image-dir); "
            f"give a path under it, or send the image as a data:image/...;base64 URL.",
            param=field, code="image_path_not_allowed",
        )
    if not path.is_file():
        raise bad_request(f"{where} is the file path {_brief(url)}, and there is no such file under --allowed-image-dir; give the path of an image file there.", param=field)
    size = path.stat().st_size
    if size > limits.max_image_bytes:
        raise _too_large(f"{where} is an image file of {size} bytes, above this server's limit of {limits.max_image_bytes} (--max-image-bytes); send a smaller image.", field)
    with path.open("rb") as file:
        _check_pixels(_pixels(file), where, field, limits)
    return str(path)


def _pixels(source: Any) -> tuple[int, int] | int | None:
    """(width, height) from the image's header; an int (pixels, a lower bound) for an image too large to open; None: no header."""
    import warnings

    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # the limit here decides
            with Image.open(source) as image:  # reads the header only
                return image.size
    except Image.DecompressionBombError:  # over twice Pillow's own limit: larger than any limit here
        return 2 * (Image.MAX_IMAGE_PIXELS or 0) + 1
    except Exception:  # not an image, or cut before the end of its header
        return None


def _check_pixels(pixels: tuple[int, int] | int | None, where: str, field: str, limits: ImageLimits) -> None:
    if pixels is None:
        raise bad_request(f"{where} is not an image this server can read; send a PNG, JPEG or WebP image.", param=field, code="invalid_image")
    count = pixels if isinstance(pixels, int) else pixels[0] * pixels[1]
    if count > limits.max_image_pixels:
        size = f"{pixels[0]}x{pixels[1]} = {count} pixels" if isinstance(pixels, tuple) else f"more than {count} pixels"
        raise _too_large(f"{where} is an image of {size}, above this server's limit of {limits.max_image_pixels} (--max-image-pixels); send a smaller image.", field)


def _too_large(message: str, field: str) -> APIError:
    return APIError(413, message, param=field, code="image_too_large")
