"""A test-only vision-language plugin: the tiny Idefics3 of ``tuneforge.testing.vlm``.

It uses only public extension points, the way a real vision-language plugin would:
a ``ModelFamily`` that loads a processor, names its parts and declares an option
(``--image-size``, applied to its processor), and a ``ChatTemplate``
built on that processor whose template encodes ``image_url`` parts into image tokens
(in the ids) and pixel values (in ``Encoded.extras``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Optional, Sequence

from tuneforge.api import (
    CHATML, IGNORE_INDEX, ChatTemplate, Encoded, ModelFamily, ModelParts, Template, TuneforgeError, concat_extras, hookimpl, images_of,
    load_image, option,
)

TUNEFORGE_API = "1.0"
FAMILY = "tiny-vlm"
PATCH_SIZE, SCALE_FACTOR = 8, 2  # the tiny model's (tuneforge.testing.vlm): an image of edge E becomes ((E / 8) / 2)^2 tokens


@dataclass
class TinyImageOptions:
    image_size: Optional[int] = option(
        None, "Edge in pixels the processor resizes images to (a multiple of 16); default: the checkpoint's (32).", group="images"
    )


def _load_processor(path: str, trust_remote_code: bool = False, options: TinyImageOptions | None = None):
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(path, trust_remote_code=trust_remote_code)
    edge = options.image_size if options is not None else None
    if edge is not None:
        step = PATCH_SIZE * SCALE_FACTOR
        if edge < step or edge % step:
            raise TuneforgeError(f"--image-size is {edge}; give a multiple of {step}, such as 16 or 32.")
        processor.image_processor.size = {"longest_edge": edge}
        processor.image_processor.max_image_size = {"longest_edge": edge}
        processor.image_seq_len = (edge // step) ** 2
    return processor


def _load_model(path: str, trust_remote_code: bool = False, options: TinyImageOptions | None = None, **kwargs):
    from transformers import AutoModelForImageTextToText

    return AutoModelForImageTextToText.from_pretrained(path, trust_remote_code=trust_remote_code, **kwargs)


class ImageChatTemplate(Template):
    """ChatML whose user turns may hold images: each ``image_url`` part becomes the processor's
    image token sequence (never learned), its pixels go to ``extras``."""

    modalities = ("text", "image")

    def __init__(self, processor) -> None:
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.text_template = CHATML.build(self.tokenizer)
        self.name = FAMILY
        self.stop_strings = self.text_template.stop_strings
        self.stop_token_ids = self.text_template.stop_token_ids
        self.image_id = self.tokenizer.convert_tokens_to_ids(processor.image_token)
        self.image_ids = self.tokenizer(
            processor.fake_image_token + processor.global_image_tag + processor.image_token * processor.image_seq_len + processor.fake_image_token,
            add_special_tokens=False,
        )["input_ids"]

    def _as_text(self, messages: Sequence[Mapping]) -> list[dict]:
        """Image parts become one image token each, expanded after tokenizing."""
        out = []
        for message in messages:
            content = message.get("content")
            if isinstance(content, list):
                content = "".join(p["text"] if p["type"] == "text" else self.processor.image_token for p in content)
            out.append({**message, "content": content})
        return out

    def _expand(self, ids: list[int], labels: list[int]) -> tuple[list[int], list[int]]:
        out_ids: list[int] = []
        out_labels: list[int] = []
        for token, label in zip(ids, labels):
            if token == self.image_id:
                out_ids += self.image_ids
                out_labels += [IGNORE_INDEX] * len(self.image_ids)
            else:
                out_ids.append(token)
                out_labels.append(label)
        return out_ids, out_labels

    def encode(self, messages, tools=None, train_on_prompt=False) -> Encoded:
        encoded = self.text_template.encode(self._as_text(messages), tools, train_on_prompt)
        ids, labels = self._expand(encoded.input_ids, encoded.labels)
        return Encoded(ids, labels, self.prompt_extras(messages))

    def prompt(self, messages, tools=None) -> list[int]:
        ids = self.text_template.prompt(self._as_text(messages), tools)
        return self._expand(ids, ids)[0]

    def unexpanded_prompt(self, messages, tools=None) -> list[int]:
        """One image token per image, as the processor (and vLLM) expands it."""
        return self.text_template.prompt(self._as_text(messages), tools)

    def prompt_extras(self, messages, tools=None) -> dict[str, Any]:
        urls = images_of(messages)
        if not urls:
            return {}
        from transformers.utils import TensorType

        images = [load_image(url) for url in urls]
        pixels = self.processor.image_processor(images=[images], return_tensors=TensorType.PYTORCH)
        return {"pixel_values": pixels["pixel_values"], "pixel_attention_mask": pixels["pixel_attention_mask"]}

    def collate_extras(self, extras):
        """Prompts with fewer images than others get all-zero images (which Idefics3 skips): ``(rows, images, ...)``."""
        return concat_extras(extras, pad=True)


@hookimpl
def tuneforge_model_families():
    yield ModelFamily(
        name=FAMILY,
        description="Tiny Idefics3 vision-language model (tests only)",
        architectures=["Idefics3ForConditionalGeneration"],
        default_template=FAMILY,
        load_processor=_load_processor,
        load_model=_load_model,
        parts=ModelParts(language_model="model.text_model", vision_tower="model.vision_model", aligner="model.connector"),
        torch_dtype="float32",
        priority=10,
        options=TinyImageOptions,
    )


@hookimpl
def tuneforge_chat_templates():
    yield ChatTemplate(name=FAMILY, description="ChatML with image parts (tests only)", build=ImageChatTemplate)
