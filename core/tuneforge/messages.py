"""The one message type: a chat message's content is text or a list of parts.

Parts have the OpenAI shape, the one vLLM accepts too::

    {"type": "text", "text": "What is in the picture?"}
    {"type": "image_url", "image_url": {"url": "data:image/png;base64,..."}}   # or a file path in a dataset
    {"type": "input_audio", "input_audio": {"data": "<base64>", "format": "wav"}}
    {"type": "video_url", "video_url": {"url": "..."}}

``check_content`` is the one place content is validated: dataset formats, the
conversation check, the server's request schema and the engines all call it, so a bad
part gets the same sentence wherever it comes from. Content that is only text parts
becomes a string, so text-only templates never see a list. A template says which part
types it encodes (``Template.modalities``); ``refuse_parts`` rejects the others with a
sentence naming the model. ``load_image`` decodes an ``image_url`` part (a ``data:``
URL or a local file) with Pillow, imported only then.
"""

from __future__ import annotations

import base64
import binascii
import io
from pathlib import Path
from typing import Any, Mapping, Sequence

from .errors import TuneforgeError

# part type -> (the key holding its payload, the payload field that must be text, the modality it carries)
PART_TYPES: dict[str, tuple[str, str, str]] = {
    "text": ("text", "", "text"),
    "image_url": ("image_url", "url", "image"),
    "input_audio": ("input_audio", "data", "audio"),
    "video_url": ("video_url", "url", "video"),
}
TEXT_ONLY = ("text",)


class ContentError(TuneforgeError, ValueError):
    """Message content that is not text or a list of well-formed parts."""


def _brief(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def check_part(part: Any, label: str) -> dict:
    """One part, checked: a ``{"type": ..., <type>: ...}`` object of a known type; returns a clean copy."""
    kind = part.get("type") if isinstance(part, Mapping) else None
    if not isinstance(kind, str) or kind not in PART_TYPES:
        raise ContentError(
            f"{label} is {_brief(part)}; a part must be an object whose 'type' is one of {', '.join(PART_TYPES)}."
        )
    key, field, _ = PART_TYPES[kind]
    payload = part.get(key)
    if kind == "text":
        if not isinstance(payload, str):
            raise ContentError(f"{label} is a text part whose 'text' is a {type(payload).__name__}; it must be text.")
        return {"type": "text", "text": payload}
    if isinstance(payload, str) and kind != "input_audio":  # {"image_url": "..."}: the short form some tools write
        payload = {field: payload}
    if not isinstance(payload, Mapping) or not isinstance(payload.get(field), str) or not payload.get(field):
        raise ContentError(
            f"{label} is a {kind} part without a '{key}.{field}' string; give it as "
            f"{{\"type\": \"{kind}\", \"{key}\": {{\"{field}\": ...}}}}."
        )
    return {"type": kind, key: dict(payload)}


def check_content(content: Any, label: str) -> str | list[dict]:
    """A message's content, checked: a string, or a list of parts (a list of text parts only is joined into a string).

    ``label`` names the message in the sentence ("message 2 (user)", "messages[1].content").
    Numbers are text (a csv column).
    """
    if isinstance(content, str):
        return content
    if isinstance(content, (int, float)) and not isinstance(content, bool):
        return str(content)
    if isinstance(content, list):
        parts = [check_part(part, f"{label} part {k}") for k, part in enumerate(content, start=1)]
        if all(part["type"] == "text" for part in parts):
            return "".join(part["text"] for part in parts)
        return parts
    raise ContentError(
        f"{label} has content of type {type(content).__name__}; it must be text or a list of parts such as "
        f"{{\"type\": \"text\", \"text\": ...}}."
    )


def has_parts(messages: Sequence[Mapping]) -> bool:
    """Whether any message carries non-text parts."""
    return any(isinstance(m.get("content"), list) for m in messages)


def text_of(content: Any) -> str:
    """The text of content: a string as is, the text parts of a list joined (other parts left out)."""
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, Mapping) and p.get("type") == "text")
    return "" if content is None else str(content)


def modalities_of(messages: Sequence[Mapping]) -> list[tuple[int, str, str]]:
    """``(message number, part type, modality)`` of every non-text part, in order."""
    found = []
    for n, message in enumerate(messages, start=1):
        content = message.get("content")
        if isinstance(content, list):
            for part in content:
                kind = part.get("type")
                if kind != "text":
                    found.append((n, kind, PART_TYPES.get(kind, ("", "", kind))[2]))
    return found


def refuse_parts(messages: Sequence[Mapping], accepted: Sequence[str], model: str) -> None:
    """Raise where a message has a part whose modality ``model`` does not take (``accepted``: e.g. ("text", "image"))."""
    for n, kind, modality in modalities_of(messages):
        if modality not in accepted:
            raise ContentError(
                f"Message {n} has a '{kind}' part, but {model} takes {' and '.join(accepted)} only; "
                f"send text, or use a model whose family handles {modality} (a vision-language plugin such as tuneforge-vl)."
            )


def template_modalities(template: Any) -> tuple[str, ...]:
    """What a template encodes: its ``modalities`` (text only unless it says more)."""
    return tuple(getattr(template, "modalities", TEXT_ONLY) or TEXT_ONLY)


def template_label(template: Any) -> str:
    """How a refusal names the model a template belongs to: its tokenizer's checkpoint and the template."""
    tokenizer = getattr(template, "tokenizer", None)
    path = getattr(tokenizer, "name_or_path", None)
    name = getattr(template, "name", type(template).__name__)
    return f"the model '{path}' (template '{name}')" if path else f"the template '{name}'"


def images_of(messages: Sequence[Mapping]) -> list[str]:
    """The ``image_url`` URLs (or paths) of a conversation, in order."""
    return [
        p["image_url"]["url"]
        for m in messages
        if isinstance(m.get("content"), list)
        for p in m["content"]
        if p.get("type") == "image_url"
    ]


def load_image(url: str, base_dir: str | None = None):
    """A PIL image from a ``data:`` URL or a local file path (relative to ``base_dir``); remote URLs are refused."""
    try:
        from PIL import Image
    except ImportError:
        raise ContentError("Decoding an image part needs the 'pillow' package; install it with pip install pillow.") from None
    if url.startswith("data:"):
        header, _, data = url.partition(",")
        if ";base64" not in header:
            raise ContentError(f"The image URL {_brief(url)} is a data: URL without ';base64'; encode the image as base64.")
        try:
            raw = base64.b64decode(data, validate=True)
        except (binascii.Error, ValueError):
            raise ContentError(f"The image data: URL {_brief(url)} holds invalid base64; encode the image bytes again.") from None
        source: Any = io.BytesIO(raw)
    elif "://" in url:
        raise ContentError(
            f"The image URL {_brief(url)} is remote, and tuneforge fetches nothing; send it as a data:image/...;base64 URL."
        )
    else:
        path = Path(url.removeprefix("file://")).expanduser()
        if not path.is_absolute() and base_dir:
            path = Path(base_dir) / path
        if not path.is_file():
            raise ContentError(f"The image file '{path}' does not exist; fix the path in the row.")
        source = path
    try:
        image = Image.open(source)
        image.load()
    except Exception as exc:  # Pillow raises several types for undecodable bytes
        raise ContentError(f"The image {_brief(url)} could not be decoded ({type(exc).__name__}); give a PNG, JPEG or WebP image.") from None
    return image.convert("RGB")
