"""Conversations with and without images, and what the official chat template plus the processor make of them.

``official_ids`` does what ``processor.apply_chat_template(..., tokenize=True)`` does:
render the conversation with the checkpoint's own Jinja (image parts as ``image``
parts), then call the processor on that text and the images, which expands each
image placeholder into the image's tokens. (SmolVLM's processor reads its video
processor's settings in ``apply_chat_template``, so the two steps are spelled out.)
"""

from __future__ import annotations

from pathlib import Path

from tuneforge.api import images_of, load_image
from tuneforge.testing.vlm import image_file

REFERENCE = Path(__file__).parent / "reference"

RED, BLUE, GREEN = (220, 20, 20), (20, 20, 220), (20, 200, 20)


def reference_template(name: str) -> str:
    return (REFERENCE / name).read_text()


def image(text: str) -> dict:
    return {"type": "image_url", "image_url": {"url": text}}


def text(value: str) -> dict:
    return {"type": "text", "text": value}


def conversations(folder: Path) -> dict[str, list[dict]]:
    """Probe conversations: text only, a system prompt, several images, an image first and last, several turns."""
    wide = image_file(folder / "wide.png", RED, (64, 32))
    tall = image_file(folder / "tall.png", BLUE, (24, 60))
    small = image_file(folder / "small.png", GREEN, (20, 20))
    return {
        "text only": [
            {"role": "user", "content": "What is the capital of France?"},
            {"role": "assistant", "content": "Paris."},
        ],
        "system prompt and an image": [
            {"role": "system", "content": "You read whiteboards."},
            {"role": "user", "content": [text("What colour is this?"), image(wide)]},
            {"role": "assistant", "content": "Red."},
        ],
        "an image first, then text": [
            {"role": "user", "content": [image(tall), text("Describe it.")]},
            {"role": "assistant", "content": [text("A tall blue box.")]},
        ],
        "several images over several turns": [
            {"role": "user", "content": [text("Compare "), image(wide), text(" and "), image(small)]},
            {"role": "assistant", "content": "The first is red, the second green."},
            {"role": "user", "content": [image(tall), text("And this one?")]},
            {"role": "assistant", "content": "Blue."},
            {"role": "user", "content": "Thanks!"},
            {"role": "assistant", "content": "You are welcome."},
        ],
    }


def as_parts(messages: list[dict]) -> list[dict]:
    """Messages as processors' templates take them: text parts, and image parts in place of image_url parts."""
    out = []
    for message in messages:
        content = message["content"]
        if isinstance(content, str):
            content = [text(content)]
        content = [{"type": "image"} if part["type"] == "image_url" else part for part in content]
        out.append({**message, "content": content})
    return out


def official_ids(processor, messages: list[dict], *, generation_prompt: bool, nested: bool) -> tuple[list[int], dict]:
    """The ids (and pixel tensors) of the checkpoint's own template rendered through its processor."""
    rendered = processor.tokenizer.apply_chat_template(as_parts(messages), tokenize=False, add_generation_prompt=generation_prompt)
    images = [load_image(url) for url in images_of(messages)]
    bos = processor.tokenizer.bos_token
    out = processor(
        text=[rendered], images=([images] if nested else images) if images else None, return_tensors="pt",
        add_special_tokens=not (bos and rendered.startswith(bos)),
    )
    extras = {k: v for k, v in out.items() if k not in ("input_ids", "attention_mask")}
    return out["input_ids"][0].tolist(), extras
