"""InternVL3 through transformers' native classes: the "-hf" checkpoints (``InternVLForConditionalGeneration``).

The model: an InternViT vision tower (``model.vision_tower``), a two-layer MLP projector
(``model.multi_modal_projector``, the aligner) and a Qwen2/Qwen3 language model
(``model.language_model``). The processor cuts an image into tiles of the vision tower's
size (448x448 in the released checkpoints; between ``min_patches`` and ``max_patches``
tiles, picked by aspect ratio, plus a thumbnail when there is more than one), and each
tile becomes ``image_seq_length`` (256) ``<IMG_CONTEXT>`` tokens between ``<img>`` and
``</img>``.

The template ``internvl3`` renders what the checkpoints' own chat template renders:
ChatML without a default system prompt, an image part as ``<IMG_CONTEXT>\\n`` (which the
processor expands into the image's tiles), no tools. ``--max-pixels`` and
``--min-pixels`` set the processor's ``max_patches`` and ``min_patches``: the number of
whole tiles that fit in that area (see ``load_processor``).
"""

from __future__ import annotations

import math
from typing import Mapping

from tuneforge.api import ChatTemplate, ModelFamily, ModelParts, TemplateError, TuneforgeError

from .imagechat import ImagePartsTemplate, ImagePiece
from .options import ImageOptions, processor_kwargs_from, set_image_settings

FAMILY = TEMPLATE = "internvl3"
IM_START, IM_END = "<|im_start|>", "<|im_end|>"
IMAGE = "<IMG_CONTEXT>"
LANGUAGE_LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def _tile_size(image_processor) -> tuple[int, int]:
    size = image_processor.size
    get = size.get if isinstance(size, Mapping) else lambda key: getattr(size, key, None)
    return int(get("height")), int(get("width"))


def image_settings(images, options: ImageOptions | None) -> dict:
    """The tile counts --max-pixels/--min-pixels give: whole tiles within that area (empty where neither is given).

    An image is cut into between ``min_patches`` and ``max_patches`` tiles (a thumbnail
    is added when there is more than one), so ``max_patches`` = max_pixels // tile area
    and ``min_patches`` = min_pixels / tile area, rounded up. What ``load_processor`` sets
    and what vLLM is given (``processor_kwargs``).
    """
    if options is None or (options.max_pixels is None and options.min_pixels is None):
        return {}
    height, width = _tile_size(images)
    tile = height * width
    settings = {}
    if options.max_pixels is not None:
        if options.max_pixels < tile:
            raise TuneforgeError(
                f"--max-pixels is {options.max_pixels}, less than one InternVL tile ({height}x{width} = {tile} pixels); "
                f"give at least {tile}."
            )
        settings["max_patches"] = options.max_pixels // tile
    if options.min_pixels is not None:
        settings["min_patches"] = max(1, math.ceil(options.min_pixels / tile))
    smallest, largest = settings.get("min_patches", images.min_patches), settings.get("max_patches", images.max_patches)
    if smallest > largest:
        raise TuneforgeError(
            f"--min-pixels {options.min_pixels} asks for at least {smallest} tiles of {height}x{width}, more than "
            f"the {largest} that --max-pixels or the checkpoint allows; lower --min-pixels."
        )
    return settings


def apply_image_options(processor, options: ImageOptions | None) -> None:
    """Set the processor's tile counts from --max-pixels/--min-pixels (see ``image_settings``)."""
    set_image_settings(processor.image_processor, image_settings(processor.image_processor, options))


def load_processor(path: str, trust_remote_code: bool = False, options: ImageOptions | None = None):
    from transformers import InternVLProcessor

    from .processors import load_images_processor

    processor = load_images_processor(path, InternVLProcessor, trust_remote_code)
    apply_image_options(processor, options)
    return processor


def load_model(path: str, trust_remote_code: bool = False, options: ImageOptions | None = None, **kwargs):
    """The model (``options``, the family's image options, concern only the processor)."""
    from transformers import AutoModelForImageTextToText

    return AutoModelForImageTextToText.from_pretrained(path, trust_remote_code=trust_remote_code, **kwargs)


class InternVLTemplate(ImagePartsTemplate):
    """InternVL3's ChatML layout with image parts (see the module docstring)."""

    placeholder = IMAGE
    layout_keys = ("num_patches",)

    def __init__(self, processor) -> None:
        super().__init__(processor, name=TEMPLATE, stop_strings=[IM_END], special_tokens=[IM_START, IM_END])

    def render(self, messages, tools=None, add_generation_prompt=False):
        self.refuse_tools(messages, tools)
        pieces: list = []
        for number, message in enumerate(messages, start=1):
            role = message.get("role")
            if role not in ("system", "user", "assistant"):
                raise TemplateError(
                    f"Template '{self.name}' cannot render a message with role {role!r}; use system, user or assistant."
                )
            content = self.content_pieces(message, number)
            pieces.append((f"{IM_START}{role}\n", False))
            for piece in content:
                if isinstance(piece, ImagePiece):
                    pieces += [(piece, False), ("\n", role == "assistant")]
                else:
                    pieces.append((piece, role == "assistant"))
            pieces.append((IM_END, role == "assistant"))
            pieces.append(("\n", False))
        if add_generation_prompt:
            pieces.append((f"{IM_START}assistant\n", False))
        return pieces

    def jinja(self) -> str:
        """The official template, taking ``image_url`` parts as it takes ``image`` parts."""
        return JINJA


JINJA = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' }}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] in ['image', 'image_url'] %}{{ '<IMG_CONTEXT>\\n' }}"
    "{% elif content['type'] == 'text' %}{{ content['text'] }}"
    "{% endif %}{% endfor %}{% endif %}"
    "{{ '<|im_end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def model_families():
    yield ModelFamily(
        name=FAMILY,
        description="InternVL3 (transformers' InternVLForConditionalGeneration, the -hf checkpoints)",
        architectures=["InternVLForConditionalGeneration"],
        model_types=["internvl"],
        default_template=TEMPLATE,
        lora_target_modules=LANGUAGE_LORA_TARGETS,
        load_processor=load_processor,
        load_model=load_model,
        parts=ModelParts(language_model="model.language_model", vision_tower="model.vision_tower", aligner="model.multi_modal_projector"),
        options=ImageOptions,
        processor_kwargs=processor_kwargs_from(image_settings),
    )


def chat_templates():
    yield ChatTemplate(name=TEMPLATE, description="InternVL3: ChatML with <img><IMG_CONTEXT>...</img> image tiles", build=InternVLTemplate)
