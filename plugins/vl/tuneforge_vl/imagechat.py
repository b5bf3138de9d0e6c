"""Chat templates whose messages may hold ``image_url`` parts, laid out by the model's processor.

A template here renders a conversation the way the checkpoint's own Jinja template
renders it with ``{"type": "image"}`` parts (one placeholder per image: InternVL's
``<IMG_CONTEXT>``, SmolVLM's ``<image>``), then, to encode, replaces each placeholder
with what the processor itself writes for that image (``processor.replace_image_token``
after its image processor has tiled it) and tokenizes the whole text once, as the
processor does. So the ids equal ``processor(text=official_rendering, images=...)``;
the pixel tensors go to ``Encoded.extras``. Only assistant text is learned: image
tokens never are, not even with ``train_on_prompt``.

Their samples pack (``packs_extras``): these models' language sides take 1D positions,
and they put a batch's images, in order, on its image tokens in order, so one packed
row with the samples' pixels joined in order is the padded batch without its padding.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from tuneforge.api import IGNORE_INDEX, Encoded, SegmentTemplate, TemplateError, concat_extras, images_of, load_image, tokenize_spans


class ImagePiece(str):
    """The placeholder an image part renders as (its text is the official template's)."""


class ImagePartsTemplate(SegmentTemplate):
    """A ``SegmentTemplate`` whose image parts become the processor's image token layout (see the module docstring).

    Subclasses implement ``render`` (with ``self.content_pieces`` for each message) and
    ``jinja``, and set ``placeholder``; ``nested_images``: the processor takes one list
    of images per sample (Idefics3, SmolVLM) rather than a flat list (InternVL);
    ``layout_keys``: what the image processor returns that is not a model input.
    """

    modalities = ("text", "image")
    packs_extras = True  # images fill the row's image tokens in order; positions are 1D (see the module docstring)
    placeholder = "<image>"
    nested_images = False
    layout_keys: tuple[str, ...] = ()
    # The checkpoint's template reads contents as lists of parts, as processors take them: the
    # template-parity check gives it text as a text part and image_url parts as image parts.
    chat_template_parts = True

    def __init__(self, processor, *, name: str, stop_strings: Sequence[str], special_tokens: Sequence[str]) -> None:
        if not hasattr(processor, "image_processor"):
            raise TemplateError(
                f"Template '{name}' needs the model's processor (with its image processor), but it was given "
                f"{type(processor).__name__}; use it with a model whose family loads a processor."
            )
        self.processor = processor
        super().__init__(processor.tokenizer, name=name, stop_strings=stop_strings, special_tokens=[*special_tokens, self.placeholder])
        self._last: tuple[tuple[str, ...], list[str], dict] | None = None

    # -- rendering -----------------------------------------------------------------------

    def content_pieces(self, message: Mapping, number: int) -> list[str]:
        """A message's content as text pieces and ``ImagePiece`` placeholders, in order."""
        content = message.get("content")
        if isinstance(content, str):
            return [content]
        if not isinstance(content, list):
            raise TemplateError(
                f"Message {number} ({message.get('role')}) has content {content!r}, which template '{self.name}' cannot "
                f"render (the official template fails on it too); give it text or a list of text and image_url parts."
            )
        pieces: list[str] = []
        for part in content:
            kind = part.get("type") if isinstance(part, Mapping) else None
            if kind == "text":
                pieces.append(part.get("text") or "")
            elif kind == "image_url":
                pieces.append(ImagePiece(self.placeholder))
            else:
                raise TemplateError(
                    f"Message {number} has a {kind!r} part, which template '{self.name}' does not encode; send text "
                    f"and image_url parts."
                )
        return pieces

    def refuse_tools(self, messages: Sequence[Mapping], tools) -> None:
        """The official templates of these models have no tool layout (they render tools as nothing)."""
        calls = any(m.get("tool_calls") or m.get("role") == "tool" for m in messages)
        if tools or calls:
            raise TemplateError(
                f"Template '{self.name}' has no layout for tools or tool calls (the model's own template leaves them "
                f"out); send the conversation without tools."
            )

    # -- images --------------------------------------------------------------------------

    def _images(self, urls: Sequence[str]) -> tuple[list[str], dict]:
        """(the text each image becomes, the model's pixel inputs) for these images, from the processor."""
        key = tuple(urls)
        if self._last is not None and self._last[0] == key:
            return self._last[1], self._last[2]
        import torch

        images = [load_image(url) for url in urls]
        # The processor's kwargs class given explicitly: transformers before 5.20 has no default for it.
        merge = self.processor._merge_kwargs
        kwargs = merge(self.processor.valid_processor_kwargs, tokenizer_init_kwargs=self.tokenizer.init_kwargs, return_tensors="pt")["images_kwargs"]
        processed, texts = self.processor._process_images([images] if self.nested_images else images, **kwargs)
        extras = {k: torch.as_tensor(v) for k, v in processed.items() if k not in self.layout_keys}
        self._last = (key, list(texts), extras)
        return list(texts), extras

    def _expanded(self, pieces, messages) -> tuple[str, list[tuple[int, int]], list[tuple[int, int]]]:
        """The rendering with each image placeholder replaced; learned and image character spans."""
        urls = images_of(messages)
        texts = self._images(urls)[0] if urls else []
        placeholders = sum(isinstance(piece, ImagePiece) for piece, _ in pieces)
        if placeholders != len(texts):
            raise TemplateError(
                f"Template '{self.name}' rendered {placeholders} image placeholders for {len(texts)} images; put each "
                f"image in an image_url part."
            )
        images = iter(texts)
        text, learned, image_spans = "", [], []
        for piece, is_learned in pieces:
            if isinstance(piece, ImagePiece):
                piece = next(images)
                image_spans.append((len(text), len(text) + len(piece)))
            elif is_learned and piece:
                learned.append((len(text), len(text) + len(piece)))
            text += piece
        return text, learned, image_spans

    def encode(self, messages, tools=None, train_on_prompt=False) -> Encoded:
        messages = list(messages)
        text, learned, image_spans = self._expanded(self.render(messages, tools, False), messages)
        ids, flags = tokenize_spans(self.tokenizer, text, learned)
        if train_on_prompt:
            in_image = tokenize_spans(self.tokenizer, text, image_spans)[1] if image_spans else [False] * len(ids)
            flags = [not image for image in in_image]
        labels = [token if flag else IGNORE_INDEX for token, flag in zip(ids, flags)]
        return Encoded(ids, labels, self.prompt_extras(messages))

    def prompt(self, messages, tools=None) -> list[int]:
        messages = list(messages)
        text = self._expanded(self.render(messages, tools, True), messages)[0]
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def unexpanded_prompt(self, messages, tools=None) -> list[int]:
        """The prompt with each image as its one placeholder, as the official template renders it (vLLM expands them)."""
        text = "".join(piece for piece, _ in self.render(list(messages), tools, True))
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def prompt_extras(self, messages, tools=None) -> dict[str, Any]:
        urls = images_of(messages)
        return dict(self._images(urls)[1]) if urls else {}

    def collate_extras(self, extras):
        # Idefics3-style models take (batch, images, 3, H, W) pixels and skip all-zero (padding)
        # images; the pixel attention mask marks the real pixels.
        return concat_extras(extras, pad=True)
