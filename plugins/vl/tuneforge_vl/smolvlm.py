"""SmolVLM and Idefics3 through transformers' native classes.

SmolVLM2 checkpoints are ``SmolVLMForConditionalGeneration``; SmolVLM (v1) and
Idefics3 checkpoints are ``Idefics3ForConditionalGeneration``. Both have a SigLIP-style
vision tower (``model.vision_model``), a pixel-shuffle connector (``model.connector``,
the aligner) and a Llama text model (``model.text_model``). The processor scales an
image so its longest edge is ``size["longest_edge"]`` pixels, splits it into
``max_image_size`` tiles (rows x cols, each ``<fake_token_around_image><row_r_col_c>``
and ``image_seq_len`` ``<image>`` tokens, a newline after each row) and adds the whole
image shrunk to one tile (``<fake_token_around_image><global-img>`` and its tokens).

The template ``smolvlm`` renders what the checkpoints' own chat template renders:
``<|im_start|>`` once, then each turn as ``User:``/``Assistant:``/``System:`` (a colon
and a space, or only a colon when the turn starts with an image), its parts, and
``<end_of_utterance>\\n``; the generation prompt is ``Assistant:``. The official template
reads only lists of parts (a string content renders as nothing there); this template
takes a string as one text part, which is what the template-parity check compares.

``--max-pixels`` sets the processor's ``size["longest_edge"]`` to the largest multiple of
the tile edge whose square fits in that area (so an image has at most that many
pixels before it is tiled); ``--min-pixels`` cannot be honoured (every image is scaled
to that longest edge, up or down) and is refused.
"""

from __future__ import annotations

import math

from tuneforge.api import ChatTemplate, ModelFamily, ModelParts, TemplateError, TuneforgeError

from .imagechat import ImagePartsTemplate, ImagePiece
from .options import ImageOptions, processor_kwargs_from, set_image_settings

TEMPLATE = "smolvlm"
IM_START, END = "<|im_start|>", "<end_of_utterance>"
IMAGE = "<image>"
LANGUAGE_LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
PARTS = ModelParts(language_model="model.text_model", vision_tower="model.vision_model", aligner="model.connector")


def image_settings(images, options: ImageOptions | None) -> dict:
    """``{"size": {"longest_edge": ...}}`` from --max-pixels (whole tiles; empty without it); --min-pixels refused
    (see the module docstring). What ``load_processor`` sets and what vLLM is given (``processor_kwargs``)."""
    if options is None:
        return {}
    if options.min_pixels is not None:
        raise TuneforgeError(
            f"--min-pixels is {options.min_pixels}, but SmolVLM/Idefics3 processors scale every image to one longest "
            f"edge (up or down), so there is no smallest size to set; leave --min-pixels out (--max-pixels sets that edge)."
        )
    if options.max_pixels is None:
        return {}
    tile = int(images.max_image_size["longest_edge"])
    edge = math.isqrt(options.max_pixels) // tile * tile
    if edge < tile:
        raise TuneforgeError(
            f"--max-pixels is {options.max_pixels}, less than one SmolVLM tile ({tile}x{tile} = {tile * tile} pixels); "
            f"give at least {tile * tile}."
        )
    return {"size": {"longest_edge": edge}}


def apply_image_options(processor, options: ImageOptions | None) -> None:
    """Map --max-pixels to ``size["longest_edge"]`` (whole tiles); refuse --min-pixels (see ``image_settings``)."""
    set_image_settings(processor.image_processor, image_settings(processor.image_processor, options))


def _loader(class_name: str):
    def load_processor(path: str, trust_remote_code: bool = False, options: ImageOptions | None = None):
        import transformers

        from .processors import load_images_processor

        processor = load_images_processor(path, getattr(transformers, class_name), trust_remote_code)
        apply_image_options(processor, options)
        return processor

    return load_processor


def load_model(path: str, trust_remote_code: bool = False, options: ImageOptions | None = None, **kwargs):
    """The model (``options``, the family's image options, concern only the processor)."""
    from transformers import AutoModelForImageTextToText

    return AutoModelForImageTextToText.from_pretrained(path, trust_remote_code=trust_remote_code, **kwargs)


class SmolVLMTemplate(ImagePartsTemplate):
    """SmolVLM's and Idefics3's layout with image parts (see the module docstring)."""

    placeholder = IMAGE
    nested_images = True
    layout_keys = ("rows", "cols")

    def __init__(self, processor) -> None:
        super().__init__(processor, name=TEMPLATE, stop_strings=[END], special_tokens=[IM_START, END])

    def render(self, messages, tools=None, add_generation_prompt=False):
        self.refuse_tools(messages, tools)
        pieces: list = [(IM_START, False)]
        for number, message in enumerate(messages, start=1):
            role = message.get("role")
            if role not in ("system", "user", "assistant"):
                raise TemplateError(
                    f"Template '{self.name}' cannot render a message with role {role!r}; use system, user or assistant."
                )
            content = self.content_pieces(message, number)
            learned = role == "assistant"
            starts_with_image = bool(content) and isinstance(content[0], ImagePiece)
            # "Assistant:" is the generation prompt: what follows it is the answer.
            pieces.append((role.capitalize() + ":", False))
            if not starts_with_image:
                pieces.append((" ", learned))
            pieces += [(piece, learned and not isinstance(piece, ImagePiece)) for piece in content]
            pieces += [(END, learned), ("\n", False)]
        if add_generation_prompt:
            pieces.append(("Assistant:", False))
        return pieces

    def jinja(self) -> str:
        """The official template, taking a string content as one text part and ``image_url`` parts as ``image`` parts."""
        return JINJA


JINJA = (
    "<|im_start|>{% for message in messages %}"
    "{% if message['content'] is string %}{% set content = [{'type': 'text', 'text': message['content']}] %}"
    "{% else %}{% set content = message['content'] %}{% endif %}"
    "{{ message['role'] | capitalize }}"
    "{% if content and content[0]['type'] in ['image', 'image_url'] %}{{ ':' }}{% else %}{{ ': ' }}{% endif %}"
    "{% for line in content %}{% if line['type'] == 'text' %}{{ line['text'] }}"
    "{% elif line['type'] in ['image', 'image_url'] %}{{ '<image>' }}{% endif %}{% endfor %}"
    "<end_of_utterance>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)


def model_families():
    common = dict(
        default_template=TEMPLATE, lora_target_modules=LANGUAGE_LORA_TARGETS, load_model=load_model, parts=PARTS, options=ImageOptions,
        processor_kwargs=processor_kwargs_from(image_settings),
    )
    yield ModelFamily(
        name="smolvlm",
        description="SmolVLM2 (transformers' SmolVLMForConditionalGeneration)",
        architectures=["SmolVLMForConditionalGeneration"],
        model_types=["smolvlm"],
        load_processor=_loader("SmolVLMProcessor"),
        **common,
    )
    yield ModelFamily(
        name="idefics3",
        description="SmolVLM (v1) and Idefics3 (transformers' Idefics3ForConditionalGeneration)",
        architectures=["Idefics3ForConditionalGeneration"],
        model_types=["idefics3"],
        load_processor=_loader("Idefics3Processor"),
        **common,
    )


def chat_templates():
    yield ChatTemplate(
        name=TEMPLATE,
        description="SmolVLM/Idefics3: User:/Assistant: turns, images split into <row_r_col_c> tiles and a <global-img>",
        build=SmolVLMTemplate,
    )
