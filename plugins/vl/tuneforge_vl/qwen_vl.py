"""Qwen2-VL, Qwen2.5-VL and Qwen3-VL: model families and chat templates, through transformers' native classes.

Families: ``qwen2-vl`` (Qwen2VLForConditionalGeneration), ``qwen2.5-vl``
(Qwen2_5_VLForConditionalGeneration), ``qwen3-vl`` (Qwen3VLForConditionalGeneration) and
``qwen3-vl-moe`` (Qwen3VLMoeForConditionalGeneration, LoRA on attention: its experts are
fused weights); each loads the checkpoint's processor (``--max-pixels``/``--min-pixels`` set its image
processor's size bounds), names its parts (``model.language_model``, ``model.visual``
whose ``merger`` is the aligner) and adapts the language model's linear layers with LoRA.

Templates, each following the model's official Jinja template character for character
(this plugin's tests render both):

- ``qwen2_vl`` (Qwen2-VL and Qwen2.5-VL, whose templates are the same): ChatML, the
  default system prompt "You are a helpful assistant." when a conversation has none;
  an ``image_url`` part becomes ``<|vision_start|><|image_pad|><|vision_end|>``. The
  official template ignores tools, so a conversation with tools or tool calls is refused.
- ``qwen3_vl`` (Qwen3-VL Instruct): ChatML without a default system prompt, tools in
  the system turn (``<tools>``), ``<tool_call>`` blocks, tool results (images too) in a
  user turn; system and assistant messages are text (the official template drops their
  images, so they are refused), a system message after the first is refused (dropped
  there too).
- ``qwen3_vl_thinking`` (Qwen3-VL Thinking): as Qwen3-VL Instruct for tools, but every
  message may hold images, the reasoning of the answer to the latest query is in a
  ``<think>`` block (dropped from earlier turns), and the generation prompt opens the
  ``<think>`` block.

Encoding: the rendered text holds one ``<|image_pad|>`` per image; after tokenizing, each
becomes as many ``<|image_pad|>`` tokens as the image processor's ``image_grid_thw``
gives after merging (never learned), and the image's patches go to
``Encoded.extras`` (``pixel_values``, ``image_grid_thw``). The model's M-RoPE needs
``mm_token_type_ids`` beside the ids; ``load_model`` makes the loaded model derive them
from the ids, so the extras stay per-sample tensors the collator concatenates.

Videos (every template): a ``video_url`` part renders as
``<|vision_start|><|video_pad|><|vision_end|>``, as the official template renders a
``{"type": "video"}`` part; ``tuneforge_vl.videos`` reads and samples its frames
(``--video-fps``, ``--max-frames``) and the checkpoint's video processor (transformers' own,
which needs torchvision) makes ``pixel_values_videos`` and ``video_grid_thw`` (Qwen2.5-VL:
``second_per_grid_ts`` too, as its processor adds it). Each ``<|video_pad|>`` then becomes
what the checkpoint's processor makes of it (``QwenVLTemplate.video_placeholders``): for
Qwen2-VL and Qwen2.5-VL ``t x h x w / merge**2`` pads; for Qwen3-VL, for each temporal patch,
its time as text (``<0.2 seconds>``) and ``<|vision_start|>``, the patch's pads and
``<|vision_end|>``. None of them is learned.

Packing (``--packing``): the templates say their extras pack (``packs_extras``), so
samples with images go back to back in one row like text ones, their patches and grids
joined in order. In such a row (1D ``position_ids`` restarting per sample, no mask) the
model loaded by ``load_model`` computes each sample's M-RoPE positions with its own
``get_rope_index`` and passes ``(4, 1, L)`` position ids: the text positions (from which
transformers keeps each sample's attention to itself) and the three M-RoPE rows.
"""

from __future__ import annotations

import json
from typing import Any, Mapping, Sequence

from tuneforge.api import (
    IGNORE_INDEX,
    ChatTemplate,
    Encoded,
    ModelFamily,
    ModelParts,
    SegmentTemplate,
    TemplateError,
    TuneforgeError,
    hermes_tools_prompt,
    images_of,
    jinja_string,
    load_image,
    parse_hermes_tool_calls,
    single_token_id,
)

from .options import ImageOptions, processor_kwargs_from, set_image_settings
from .videos import VideoSampling, load_video, videos_of

IM_START, IM_END = "<|im_start|>", "<|im_end|>"
VISION_START, VISION_END, IMAGE_PAD, VIDEO_PAD = "<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"
IMAGE = VISION_START + IMAGE_PAD + VISION_END  # what an image part renders as, before its pad is expanded
VIDEO = VISION_START + VIDEO_PAD + VISION_END  # what a video part renders as (Qwen2-VL, Qwen2.5-VL), before its pad is expanded
THINK_START, THINK_END = "<think>", "</think>"
DEFAULT_SYSTEM = "You are a helpful assistant."

# The language model's linear layers (attention and MLP); the vision tower's have other names (qkv, proj, fc1, ...).
LANGUAGE_LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
# Qwen3-VL-MoE keeps its experts as fused parameters, not linear layers: LoRA adapts attention.
MOE_ATTENTION = ("q_proj", "k_proj", "v_proj", "o_proj")
PARTS = ModelParts(language_model="model.language_model", vision_tower="model.visual", aligner="model.visual.merger")

PROCESSORS = {  # model type: the processor class (images only without torchvision: see tuneforge_vl.processors)
    "qwen2_vl": "Qwen2VLProcessor",
    "qwen2_5_vl": "Qwen2_5_VLProcessor",
    "qwen3_vl": "Qwen3VLProcessor",
    "qwen3_vl_moe": "Qwen3VLProcessor",
}


# -- the processor ----------------------------------------------------------------------------


def _check_pixels(options: ImageOptions | None, patch: int, merge: int) -> None:
    if options is None:
        return
    smallest = (patch * merge) ** 2
    for flag, value in (("--max-pixels", options.max_pixels), ("--min-pixels", options.min_pixels)):
        if value is not None and value < smallest:
            raise TuneforgeError(
                f"{flag} is {value}, smaller than one image token's area ({patch * merge} x {patch * merge} = {smallest} "
                f"pixels); give at least {smallest}."
            )
    if options.max_pixels is not None and options.min_pixels is not None and options.min_pixels > options.max_pixels:
        raise TuneforgeError(
            f"--min-pixels is {options.min_pixels}, more than --max-pixels {options.max_pixels}; give a --min-pixels "
            f"no larger than --max-pixels."
        )


def image_settings(images, options: ImageOptions | None) -> dict:
    """The image processor's settings ``--max-pixels``/``--min-pixels`` give (``{"size": ...}``, its size bounds;
    empty where neither is given): what ``load_processor`` sets and what vLLM is given (``processor_kwargs``)."""
    if options is None or (options.max_pixels is None and options.min_pixels is None):
        return {}
    _check_pixels(options, images.patch_size, images.merge_size)
    size = dict(images.size) if getattr(images, "size", None) is not None else {}
    size = {key: value for key, value in size.items() if value is not None}
    if options.max_pixels is not None:
        size["longest_edge"] = options.max_pixels
    if options.min_pixels is not None:
        size["shortest_edge"] = options.min_pixels
    if size.get("shortest_edge", 0) > size.get("longest_edge", float("inf")):
        raise TuneforgeError(
            f"--max-pixels is {size['longest_edge']}, less than the checkpoint's smallest image area "
            f"({size['shortest_edge']} pixels); give a larger --max-pixels or a --min-pixels no larger than it."
        )
    return {"size": size}


def apply_image_options(processor, options: ImageOptions | None):
    """Set the image processor's size bounds from ``--max-pixels``/``--min-pixels`` (where given)."""
    images = getattr(processor, "image_processor", None)
    if images is not None:
        set_image_settings(images, image_settings(images, options))
    videos = getattr(processor, "video_processor", None)
    if videos is not None:  # each frame under the images' bounds
        set_image_settings(videos, image_settings(videos, options))
    if options is not None:
        if not options.video_fps > 0 or options.max_frames < 1:
            bad = ("--video-fps", options.video_fps) if not options.video_fps > 0 else ("--max-frames", options.max_frames)
            raise TuneforgeError(f"{bad[0]} is {bad[1]}; give a positive number (Qwen's defaults: --video-fps 2, --max-frames 768).")
        processor.tuneforge_video_sampling = VideoSampling(float(options.video_fps), int(options.max_frames))
    return processor


def _loader(class_name: str):
    def load_processor(path: str, trust_remote_code: bool = False, options: ImageOptions | None = None):
        """The checkpoint's processor (images only where transformers cannot build its video processor), its size bounds from ``options``."""
        import transformers

        from .processors import load_images_processor

        processor = load_images_processor(path, getattr(transformers, class_name), trust_remote_code=trust_remote_code)
        return apply_image_options(processor, options)

    return load_processor


def _processor_class(path: str) -> str:
    """The Qwen-VL processor class a directory's files name (its processor config, else its model type)."""
    from pathlib import Path

    def read(name: str) -> dict:
        try:
            value = json.loads((Path(path) / name).read_text())
        except (OSError, ValueError):
            return {}
        return value if isinstance(value, dict) else {}

    for name in ("processor_config.json", "preprocessor_config.json", "tokenizer_config.json"):
        if (named := read(name).get("processor_class")) in PROCESSORS.values():
            return named
    model_type = read("config.json").get("model_type")
    if model_type not in PROCESSORS:
        raise TuneforgeError(
            f"'{path}' names no Qwen-VL processor (processor_config.json) nor model type (config.json); give the "
            f"directory of a Qwen2-VL, Qwen2.5-VL or Qwen3-VL checkpoint or run."
        )
    return PROCESSORS[model_type]


def load_processor(path: str, trust_remote_code: bool = False, options: ImageOptions | None = None):
    """The processor of any Qwen-VL checkpoint or run directory (the class its files name)."""
    return _loader(_processor_class(path))(path, trust_remote_code=trust_remote_code, options=options)


# -- the model ---------------------------------------------------------------------------------


def _token_types(input_ids, config):
    """``mm_token_type_ids`` as the processor makes them: 1 on image pads, 2 on video pads, 0 elsewhere."""
    import torch

    types = torch.zeros_like(input_ids, dtype=torch.int)
    types[input_ids == config.image_token_id] = 1
    types[input_ids == config.video_token_id] = 2
    return types


def _needs_types(kwargs: Mapping) -> bool:
    return (
        kwargs.get("mm_token_type_ids") is None
        and kwargs.get("input_ids") is not None
        and (kwargs.get("image_grid_thw") is not None or kwargs.get("video_grid_thw") is not None)
    )


def _is_packed(kwargs: Mapping) -> bool:
    """A packed row (tuneforge's ``PackingCollator``): one row of ids, 1D positions restarting per sample, no mask."""
    position_ids, input_ids = kwargs.get("position_ids"), kwargs.get("input_ids")
    return (
        position_ids is not None
        and position_ids.dim() == 2
        and input_ids is not None
        and input_ids.shape[0] == 1
        and position_ids.shape == input_ids.shape
        and kwargs.get("attention_mask") is None
        and kwargs.get("inputs_embeds") is None
        and (kwargs.get("past_key_values") is None or kwargs["past_key_values"].get_seq_length() == 0)
    )


def packed_position_ids(model, kwargs: Mapping):
    """The ``(4, 1, L)`` position ids of a packed row: its text positions, then each sample's M-RoPE positions.

    The packed row is viewed as one padded row per sample (cut where the text positions
    restart at 0) and handed, with a mask over the padding, to the model's own
    ``get_rope_index``, which takes the images' grids in order across rows: each sample
    gets the positions it would get alone. transformers reads row 0 (the text positions)
    to keep every sample's attention to itself, rows 1..3 to rotate (``...TextModel.forward``).
    """
    import torch

    input_ids, text_positions = kwargs["input_ids"], kwargs["position_ids"]
    starts = torch.nonzero(text_positions[0] == 0).reshape(-1).tolist()
    if not starts or starts[0] != 0:
        starts = [0, *starts]
    bounds = [*starts, input_ids.shape[1]]
    lengths = [end - start for start, end in zip(bounds, bounds[1:])]
    mask = torch.zeros((len(lengths), max(lengths)), dtype=torch.long, device=input_ids.device)
    for row, length in enumerate(lengths):
        mask[row, :length] = 1
    keep = mask.bool()
    ids = input_ids.new_zeros(mask.shape)
    ids[keep] = input_ids[0]
    types = kwargs.get("mm_token_type_ids")
    types = _token_types(input_ids, model.config) if types is None else types
    row_types = types.new_zeros(mask.shape)
    row_types[keep] = types[0]
    extra = {key: kwargs[key] for key in ("image_grid_thw", "video_grid_thw", "second_per_grid_ts") if kwargs.get(key) is not None}
    rope, _ = model.model.get_rope_index(ids, mm_token_type_ids=row_types, attention_mask=mask, **extra)
    rope = rope[:, keep].to(text_positions.device, text_positions.dtype)  # (3, L): the rows read back in order
    return torch.cat([text_positions[None], rope[:, None]], dim=0)


def derive_token_types(model):
    """Make ``model`` (a Qwen-VL ``...ForConditionalGeneration``) derive ``mm_token_type_ids`` from its ids, and
    its M-RoPE positions in packed rows.

    The model's 3D positions (M-RoPE) need them beside ``image_grid_thw``; tuneforge passes
    the ids and the image extras, as it does for every vision-language model. A packed row
    (``--packing``: 1D positions restarting per sample, no mask) gets ``packed_position_ids``.
    """
    config = model.config

    def fill(module, args, kwargs):
        if _needs_types(kwargs):
            kwargs["mm_token_type_ids"] = _token_types(kwargs["input_ids"], config)
        if _is_packed(kwargs):
            kwargs["position_ids"] = packed_position_ids(model, kwargs)
        return args, kwargs

    model.model.register_forward_pre_hook(fill, with_kwargs=True)
    generate = model.generate

    def generate_with_types(*args, **kwargs):
        if _needs_types(kwargs):
            kwargs["mm_token_type_ids"] = _token_types(kwargs["input_ids"], config)
        return generate(*args, **kwargs)

    model.generate = generate_with_types
    return model


def batch_vision_windows(model):
    """Give the vision tower of ``model`` the core's variable-length attention where it runs (CUDA).

    With sdpa, transformers' Qwen-VL vision attention makes one call a window (Qwen2.5-VL's
    112-pixel windows: thousands of small calls a forward pass for a few large images);
    with the core's kernel (``use_varlen_vision_attention``) all windows of a layer go in
    one call. Elsewhere the tower keeps sdpa. The language model's sample bounds of a packed
    batch (``cu_seq_lens_q`` ...) never reach the tower: some transformers versions hand the
    model's keyword arguments on to it, where they would clash with its windows' own bounds.
    Returns ``model``.
    """
    from tuneforge.api import use_varlen_vision_attention

    vision_config = getattr(model.config, "vision_config", None)
    if vision_config is not None:
        use_varlen_vision_attention(vision_config)
    tower = getattr(getattr(model, "model", model), "visual", None)
    if tower is not None and not getattr(tower, "_tuneforge_drops_bounds", False):
        tower.register_forward_pre_hook(_drop_sequence_bounds, with_kwargs=True)
        tower._tuneforge_drops_bounds = True
    return model


_SEQUENCE_BOUNDS = ("cu_seq_lens_q", "cu_seq_lens_k", "max_length_q", "max_length_k")


def _drop_sequence_bounds(module, args, kwargs):
    """A forward pre-hook of the vision tower: the packed batch's sample bounds are the language model's."""
    if any(key in kwargs for key in _SEQUENCE_BOUNDS):
        return args, {key: value for key, value in kwargs.items() if key not in _SEQUENCE_BOUNDS}
    return None


def load_model(path: str, trust_remote_code: bool = False, options: ImageOptions | None = None, **kwargs):
    """The model, deriving its ``mm_token_type_ids``, its vision windows in one attention call on CUDA
    (``batch_vision_windows``); ``options``, the family's image options, concern only the processor."""
    from transformers import AutoModelForImageTextToText

    model = AutoModelForImageTextToText.from_pretrained(path, trust_remote_code=trust_remote_code, **kwargs)
    return batch_vision_windows(derive_token_types(model))


# -- the templates -----------------------------------------------------------------------------


def grid_token_counts(grid_thw, merge_size: int) -> list[int]:
    """Tokens each row of an ``image_grid_thw``/``video_grid_thw`` becomes: ``t x h x w / merge_size**2``."""
    rows = grid_thw.tolist() if hasattr(grid_thw, "tolist") else list(grid_thw)
    return [int(t * h * w) // merge_size**2 for t, h, w in rows]


def frame_timestamps(frames: int, fps: float, temporal: int) -> list[float]:
    """Qwen3-VL's time of each temporal patch of ``frames`` frames shot at ``fps``: the mean of its first and
    last frame's time, the last patch filled with repeats of the last frame (``Qwen3VLProcessor._calculate_timestamps``)."""
    indices = list(range(frames)) + [frames - 1] * (-frames % temporal)
    return [(indices[i] / fps + indices[i + temporal - 1] / fps) / 2 for i in range(0, len(indices), temporal)]


def _arguments(arguments: Any) -> str:
    """A call's arguments as the official template writes them: a string as it is, else ``tojson``."""
    if isinstance(arguments, str):
        return arguments
    return json.dumps(arguments, ensure_ascii=False)


class QwenVLTemplate(SegmentTemplate):
    """A Qwen-VL ChatML template with image parts: ``variant`` "qwen2" (Qwen2-VL, Qwen2.5-VL), "instruct" or
    "thinking" (Qwen3-VL). Its samples pack (``--packing``): the model loaded by ``load_model`` computes each
    packed sample's M-RoPE positions (``packed_position_ids``)."""

    modalities = ("text", "image", "video")
    packs_extras = True

    def __init__(self, processor, *, name: str, variant: str) -> None:
        tokenizer = getattr(processor, "tokenizer", processor)
        self.processor = processor if tokenizer is not processor else None
        self.variant = variant
        thinking = self.thinking = variant == "thinking"
        self.default_system = DEFAULT_SYSTEM if variant == "qwen2" else None
        self.reasoning_markers = (THINK_START, THINK_END) if thinking else None
        special = [IM_START, IM_END, VISION_START, IMAGE_PAD, VISION_END, VIDEO_PAD]
        super().__init__(tokenizer, name=name, stop_strings=[IM_END], special_tokens=special)
        self.image_id = single_token_id(tokenizer, IMAGE_PAD)
        self.video_id = single_token_id(tokenizer, VIDEO_PAD)
        self.vision_ids = (single_token_id(tokenizer, VISION_START), single_token_id(tokenizer, VISION_END))
        self._cached: tuple[tuple[str, ...], dict, tuple] | None = None

    @property
    def tool_call_start(self) -> str | None:
        return "<tool_call>" if self.variant != "qwen2" else None

    # -- rendering ------------------------------------------------------------------------

    def _content(self, message: Mapping, number: int) -> str:
        content = message.get("content")
        if isinstance(content, str):
            return content
        if isinstance(content, list):
            out = []
            for index, part in enumerate(content, start=1):
                kind = part.get("type") if isinstance(part, Mapping) else None
                if kind == "image_url":
                    out.append(IMAGE)
                elif kind == "video_url":
                    out.append(VIDEO)
                elif kind == "text":
                    out.append(part.get("text") or "")
                else:
                    raise TemplateError(
                        f"Message {number} part {index} is of type {kind!r}, which template '{self.name}' cannot "
                        f"render; send text, image_url and video_url parts."
                    )
            return "".join(out)
        raise TemplateError(
            f"Message {number} ({message.get('role')}) has content {content!r}, which template '{self.name}' cannot "
            f"render (the official template fails on it too); give it text, an empty string for none, or a list of parts."
        )

    def render(self, messages, tools=None, add_generation_prompt=False):
        messages = list(messages)
        render = {"qwen2": self._render_plain, "instruct": self._render_instruct, "thinking": self._render_thinking}[self.variant]
        pieces = render(messages, tools)
        if add_generation_prompt:
            pieces.append((f"{IM_START}assistant\n" + (f"{THINK_START}\n" if self.thinking else ""), False))
        return pieces

    def _render_plain(self, messages: list, tools) -> list:
        if tools:
            raise TemplateError(
                f"Template '{self.name}' has no place for tools (the official Qwen2-VL template leaves them out); "
                f"send the conversation without tools, or use a template that describes them."
            )
        pieces: list = []
        for number, message in enumerate(messages, start=1):
            role = message.get("role")
            if number == 1 and role != "system":
                pieces.append((f"{IM_START}system\n{DEFAULT_SYSTEM}{IM_END}\n", False))
            if message.get("tool_calls"):
                raise TemplateError(
                    f"Message {number} (assistant) has tool calls, which template '{self.name}' has no place for (the "
                    f"official Qwen2-VL template leaves them out); send the conversation without tool calls."
                )
            content = self._content(message, number)
            if role == "assistant":
                pieces += [(f"{IM_START}{role}\n", False), (content + IM_END, True), ("\n", False)]
            else:
                pieces.append((f"{IM_START}{role}\n{content}{IM_END}\n", False))
        return pieces

    def _text_only(self, message: Mapping, number: int) -> str:
        """A system or assistant message's text: the Qwen3-VL Instruct template renders only their text parts."""
        content = message.get("content")
        if isinstance(content, list):
            for index, part in enumerate(content, start=1):
                if not (isinstance(part, Mapping) and part.get("type") == "text"):
                    kind = part.get("type") if isinstance(part, Mapping) else None
                    raise TemplateError(
                        f"Message {number} ({message.get('role')}) part {index} is of type {kind!r}, which template "
                        f"'{self.name}' has no place for (the official template drops it); send text only in system "
                        f"and assistant messages."
                    )
        return self._content(message, number)

    def _tool_calls(self, calls: Sequence[Mapping], opens_line: bool) -> str:
        """``<tool_call>`` blocks as the Qwen3-VL templates write them; ``opens_line``: a newline before the first."""
        blocks = []
        for number, call in enumerate(calls):
            function = call.get("function") or call
            separator = "\n" if opens_line or number > 0 else ""
            blocks.append(
                f'{separator}<tool_call>\n{{"name": "{function.get("name")}", "arguments": '
                f'{_arguments(function.get("arguments"))}}}\n</tool_call>'
            )
        return "".join(blocks)

    def _tool_turn(self, messages: list, index: int, content: str) -> tuple[str, bool]:
        opens = index == 0 or messages[index - 1].get("role") != "tool"
        closes = index == len(messages) - 1 or messages[index + 1].get("role") != "tool"
        text = (f"{IM_START}user" if opens else "") + f"\n<tool_response>\n{content}\n</tool_response>"
        return (text + (f"{IM_END}\n" if closes else ""), False)

    def _render_instruct(self, messages: list, tools) -> list:
        pieces: list = []
        first_system = bool(messages) and messages[0].get("role") == "system"
        if tools:
            system = self._text_only(messages[0], 1) + "\n\n" if first_system else ""
            pieces.append((f"{IM_START}system\n{system}{hermes_tools_prompt(tools)}{IM_END}\n", False))
        elif first_system:
            pieces.append((f"{IM_START}system\n{self._text_only(messages[0], 1)}{IM_END}\n", False))
        for index, message in enumerate(messages):
            number, role = index + 1, message.get("role")
            if role == "system" and index == 0:
                continue
            if role == "user":
                pieces.append((f"{IM_START}user\n{self._content(message, number)}{IM_END}\n", False))
            elif role == "assistant":
                content = self._text_only(message, number)
                calls = self._tool_calls(message.get("tool_calls") or [], bool(message.get("content")))
                pieces += [(f"{IM_START}assistant\n", False), (content + calls + IM_END, True), ("\n", False)]
            elif role == "tool":
                pieces.append(self._tool_turn(messages, index, self._content(message, number)))
            else:
                raise TemplateError(
                    f"Template '{self.name}' cannot render message {number}, of role {role!r} (the official template "
                    f"leaves it out); use one system message first, then user, assistant or tool."
                )
        return pieces

    def _last_query(self, messages: list) -> int:
        for index in range(len(messages) - 1, -1, -1):
            message = messages[index]
            if message.get("role") == "user":
                content = self._content(message, index + 1)
                if not (content.startswith("<tool_response>") and content.endswith("</tool_response>")):
                    return index
        return len(messages) - 1

    def _render_thinking(self, messages: list, tools) -> list:
        pieces: list = []
        first_system = bool(messages) and messages[0].get("role") == "system"
        if tools:
            system = self._content(messages[0], 1) + "\n\n" if first_system else ""
            pieces.append((f"{IM_START}system\n{system}{hermes_tools_prompt(tools)}{IM_END}\n", False))
        elif first_system:
            pieces.append((f"{IM_START}system\n{self._content(messages[0], 1)}{IM_END}\n", False))
        last_query = self._last_query(messages)
        for index, message in enumerate(messages):
            number, role = index + 1, message.get("role")
            content = self._content(message, number)
            if role == "user" or (role == "system" and index > 0):
                pieces.append((f"{IM_START}{role}\n{content}{IM_END}\n", False))
            elif role == "system":
                continue
            elif role == "assistant":
                pieces += self._assistant(message, content, index > last_query, index == len(messages) - 1)
            elif role == "tool":
                pieces.append(self._tool_turn(messages, index, content))
            else:
                raise TemplateError(
                    f"Template '{self.name}' cannot render message {number}, of role {role!r} (the official template "
                    f"leaves it out); use system, user, assistant or tool."
                )
        return pieces

    def _assistant(self, message: Mapping, content: str, after_query: bool, last: bool) -> list:
        reasoning = message.get("reasoning_content")
        if not isinstance(reasoning, str):
            reasoning = ""
            if THINK_END in content:
                reasoning = content.split(THINK_END)[0].rstrip("\n").split(THINK_START)[-1].lstrip("\n")
                content = content.split(THINK_END)[-1].lstrip("\n")
        pieces = [(f"{IM_START}assistant\n", False)]
        if after_query and (last or reasoning):
            # The generation prompt opens the <think> block: the model writes from the line after it.
            pieces += [(f"{THINK_START}\n", False), (f"{reasoning.strip(chr(10))}\n{THINK_END}\n\n{content.lstrip(chr(10))}", True)]
        else:
            pieces.append((content, True))
        pieces.append((self._tool_calls(message.get("tool_calls") or [], bool(content)) + IM_END, True))
        pieces.append(("\n", False))
        return pieces

    # -- images ---------------------------------------------------------------------------

    def prompt_extras(self, messages, tools=None) -> dict[str, Any]:
        return self._media(messages)[0]

    def _media(self, messages) -> tuple[dict[str, Any], tuple]:
        """The processors' tensors for the conversation's images and videos, and each video's (frames, fps)."""
        urls = tuple(images_of(messages))
        videos = tuple(videos_of(messages))
        if not urls and not videos:
            return {}, ()
        key = (urls, videos)
        if self._cached is not None and self._cached[0] == key:
            return dict(self._cached[1]), self._cached[2]
        loaded = [load_video(url, self.video_sampling) for url in videos]  # missing or undecodable videos fail first
        if self.processor is None or getattr(self.processor, "image_processor", None) is None:
            raise TemplateError(
                f"Template '{self.name}' was built on a tokenizer, not a Qwen-VL processor, so it cannot encode image "
                f"parts; use a Qwen-VL checkpoint (its family loads the processor) or send text."
            )
        extras: dict[str, Any] = {}
        if urls:
            images = [load_image(url) for url in urls]
            out = self.processor.image_processor(images=images, return_tensors="pt")
            extras.update(pixel_values=out["pixel_values"], image_grid_thw=out["image_grid_thw"])
        if loaded:
            extras.update(self._video_extras(loaded))
        timing = tuple((len(video.frames), video.fps) for video in loaded)
        self._cached = (key, extras, timing)
        return dict(extras), timing

    @property
    def video_sampling(self) -> VideoSampling:
        """How videos are sampled: ``--video-fps`` and ``--max-frames`` (set on the processor by ``load_processor``)."""
        return getattr(self.processor, "tuneforge_video_sampling", None) or VideoSampling()

    def _video_extras(self, videos) -> dict[str, Any]:
        """``pixel_values_videos`` and ``video_grid_thw`` from transformers' video processor (and Qwen2.5-VL's ``second_per_grid_ts``)."""
        import torch

        from .processors import has_video_processors

        video_processor = getattr(self.processor, "video_processor", None)
        if video_processor is None:
            reason = (
                "transformers builds video processors only where torchvision imports"
                if not has_video_processors()
                else "the checkpoint's processor has no video processor"
            )
            raise TemplateError(
                f"Template '{self.name}' cannot encode video_url parts here: {reason}; pip install torchvision (matching "
                f"your torch) and load a Qwen-VL checkpoint saved with its video processor, or send images instead of video."
            )
        out = video_processor(videos=[video.frames for video in videos], do_sample_frames=False, return_tensors="pt")
        extras = {"pixel_values_videos": out["pixel_values_videos"], "video_grid_thw": out["video_grid_thw"]}
        if type(self.processor).__name__.startswith("Qwen2_5"):  # as Qwen2_5_VLProcessor adds it
            temporal = video_processor.temporal_patch_size
            extras["second_per_grid_ts"] = torch.tensor([temporal / video.fps for video in videos], dtype=torch.float)
        return extras

    def image_token_counts(self, extras: Mapping[str, Any]) -> list[int]:
        """How many ``<|image_pad|>`` tokens each image of ``extras`` becomes (its grid, merged)."""
        return self._counts(extras, "image_grid_thw")

    def video_token_counts(self, extras: Mapping[str, Any]) -> list[int]:
        """How many ``<|video_pad|>`` tokens each video of ``extras`` becomes (its grid ``t x h x w``, merged in space)."""
        return self._counts(extras, "video_grid_thw")

    def _counts(self, extras: Mapping[str, Any], key: str) -> list[int]:
        if key not in extras:
            return []
        part = "video_processor" if key == "video_grid_thw" else "image_processor"
        merge = getattr(getattr(self.processor, part, None), "merge_size", 2)
        return grid_token_counts(extras[key], merge)

    def video_placeholders(self, extras: Mapping[str, Any], timing: Sequence[tuple[int, float]]) -> list[list[int]]:
        """The tokens each video's ``<|video_pad|>`` becomes, as the checkpoint's processor expands it.

        Qwen2-VL and Qwen2.5-VL: its grid's ``t x h x w / merge**2`` pads. Qwen3-VL: for each temporal
        patch, its time as text (``<0.2 seconds>``: the mean time of the frames it spans, each frame
        at its index over ``fps``) and then ``<|vision_start|>``, that patch's ``h x w / merge**2``
        pads and ``<|vision_end|>`` (``Qwen3VLProcessor.replace_video_token``)."""
        if self.variant == "qwen2" or "video_grid_thw" not in extras:
            return [[self.video_id] * n for n in self.video_token_counts(extras)]
        video_processor = getattr(self.processor, "video_processor", None)
        merge = getattr(video_processor, "merge_size", 2)
        temporal = getattr(video_processor, "temporal_patch_size", 2)
        start, end = self.vision_ids
        out = []
        for (t, h, w), (frames, fps) in zip(extras["video_grid_thw"].tolist(), timing):
            frame = [start] + [self.video_id] * (int(h * w) // merge**2) + [end]
            out.append([token for stamp in frame_timestamps(frames, fps, temporal)[: int(t)]
                        for token in self.tokenizer.encode(f"<{stamp:.1f} seconds>", add_special_tokens=False) + frame])
        return out

    def _expand(self, ids: list[int], labels: list[int], counts: list[int], videos: Sequence[int | list[int]] = ()) -> tuple[list[int], list[int]]:
        """Each image pad repeated its count; each video pad replaced by its placeholder (or repeated, given a count); none learned."""
        for pad, token, n, noun, part in (
            (IMAGE_PAD, self.image_id, len(counts), "images", "image_url"),
            (VIDEO_PAD, self.video_id, len(videos), "videos", "video_url"),
        ):
            found = ids.count(token)
            if found != n:
                raise TemplateError(
                    f"The conversation renders {found} {pad} tokens for {n} {noun} (a text part holds "
                    f"'{pad}'?); write {noun[:-1]} placeholders only as {part} parts."
                )
        if not counts and not videos:
            return ids, labels
        out_ids: list[int] = []
        out_labels: list[int] = []
        images, placeholders = iter(counts), iter(videos)
        for token, label in zip(ids, labels):
            if token == self.image_id or token == self.video_id:
                if token == self.image_id:
                    piece = [token] * next(images)
                else:
                    piece = next(placeholders)
                    piece = [token] * piece if isinstance(piece, int) else list(piece)
                out_ids += piece
                out_labels += [IGNORE_INDEX] * len(piece)
            else:
                out_ids.append(token)
                out_labels.append(label)
        return out_ids, out_labels

    def encode(self, messages, tools=None, train_on_prompt=False) -> Encoded:
        encoded = super().encode(messages, tools, train_on_prompt)
        extras, timing = self._media(messages)
        ids, labels = self._expand(encoded.input_ids, encoded.labels, self.image_token_counts(extras), self.video_placeholders(extras, timing))
        return Encoded(ids, labels, extras)

    def prompt(self, messages, tools=None) -> list[int]:
        ids = super().prompt(messages, tools)
        extras, timing = self._media(messages)
        return self._expand(ids, ids, self.image_token_counts(extras), self.video_placeholders(extras, timing))[0]

    def unexpanded_prompt(self, messages, tools=None) -> list[int]:
        """The prompt with one ``<|image_pad|>`` per image, as the official template renders it (vLLM expands them)."""
        return super().prompt(messages, tools)

    def collate_extras(self, extras: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        """Samples' patches and grids joined in order; samples without images add none (Qwen-VL batches mixed rows)."""
        import torch

        keys = sorted({key for e in extras for key in e})
        return {key: torch.cat([e[key] for e in extras if key in e], dim=0) for key in keys}

    # -- reading a model's output -------------------------------------------------------------

    def parse_tool_calls(self, text: str) -> tuple[str, list[dict]]:
        return parse_hermes_tool_calls(text) if self.variant != "qwen2" else (text, [])

    def parse_reasoning(self, text: str) -> tuple[str | None, str]:
        """(reasoning, answer): the generation prompt opened the ``<think>`` block, so the text holds its end."""
        if not self.thinking or THINK_END not in text:
            return None, text
        reasoning, answer = text.split(THINK_END, 1)
        return reasoning.split(THINK_START, 1)[-1].strip("\n"), answer.lstrip("\n")

    def jinja(self) -> str:
        return _jinja(self.name, self.variant)


# -- the Jinja forms ----------------------------------------------------------------------------
# Each renders what QwenVLTemplate.render renders, refusing what it refuses. Tags strip the
# whitespace before them, so the layout is for reading only.

_CONTENT = """
{%- macro render_content(content, number, role) %}
    {%- if content is string %}
        {{- content }}
    {%- elif content is iterable and content is not mapping %}
        {%- for part in content %}
            {%- if part.type == 'image_url' %}
                {{- '<|vision_start|><|image_pad|><|vision_end|>' }}@VIDEO_BRANCH@
            {%- elif part.type == 'text' %}
                {{- part.text if part.text else '' }}
            {%- else %}
                {{- raise_exception("Message " ~ number ~ " part " ~ loop.index ~ " is of type " ~ part.type ~ ", which template @NAME@ cannot render; send text and image_url@VIDEO_PARTS@ parts.") }}
            {%- endif %}
        {%- endfor %}
    {%- else %}
        {{- raise_exception("Message " ~ number ~ " (" ~ role ~ ") has no content, which template @NAME@ cannot render (the official template fails on it too); give it text, an empty string for none, or a list of parts.") }}
    {%- endif %}
{%- endmacro %}
"""

_VIDEO_BRANCH = """
            {%- elif part.type == 'video_url' %}
                {{- '<|vision_start|><|video_pad|><|vision_end|>' }}"""

_PLAIN = """
{%- if tools %}
    {{- raise_exception("Template @NAME@ has no place for tools (the official Qwen2-VL template leaves them out); send the conversation without tools, or use a template that describes them.") }}
{%- endif %}
{%- for message in messages %}
    {%- if loop.first and message.role != 'system' %}
        {{- '<|im_start|>system\\n' + @DEFAULT_SYSTEM@ + '<|im_end|>\\n' }}
    {%- endif %}
    {%- if message.tool_calls %}
        {{- raise_exception("Message " ~ loop.index ~ " (assistant) has tool calls, which template @NAME@ has no place for (the official Qwen2-VL template leaves them out); send the conversation without tool calls.") }}
    {%- endif %}
    {{- '<|im_start|>' + message.role + '\\n' + render_content(message.content, loop.index, message.role) + '<|im_end|>\\n' }}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\\n' }}
{%- endif %}
"""

_THINKING = """
@SYSTEM_AND_TOOLS@
{%- set ns = namespace(last_query=messages|length - 1, found=false) %}
{%- for message in messages[::-1] %}
    {%- set index = (messages|length - 1) - loop.index0 %}
    {%- if not ns.found and message.role == 'user' %}
        {%- set content = render_content(message.content, index + 1, 'user') %}
        {%- if not (content.startswith('<tool_response>') and content.endswith('</tool_response>')) %}
            {%- set ns.found = true %}
            {%- set ns.last_query = index %}
        {%- endif %}
    {%- endif %}
{%- endfor %}
{%- for message in messages %}
    {%- set content = render_content(message.content, loop.index, message.role) %}
    {%- if message.role == 'user' or (message.role == 'system' and not loop.first) %}
        {{- '<|im_start|>' + message.role + '\\n' + content + '<|im_end|>\\n' }}
    {%- elif message.role == 'system' %}
    {%- elif message.role == 'assistant' %}
        {%- set reasoning = '' %}
        {%- if message.reasoning_content is string %}
            {%- set reasoning = message.reasoning_content %}
        {%- elif '</think>' in content %}
            {%- set reasoning = content.split('</think>')[0].rstrip('\\n').split('<think>')[-1].lstrip('\\n') %}
            {%- set content = content.split('</think>')[-1].lstrip('\\n') %}
        {%- endif %}
        {%- if loop.index0 > ns.last_query and (loop.last or reasoning) %}
            {{- '<|im_start|>assistant\\n<think>\\n' + reasoning.strip('\\n') + '\\n</think>\\n\\n' + content.lstrip('\\n') }}
        {%- else %}
            {{- '<|im_start|>assistant\\n' + content }}
        {%- endif %}
        {%- if message.tool_calls %}
            {%- for call in message.tool_calls %}
                {%- if (loop.first and content) or not loop.first %}
                    {{- '\\n' }}
                {%- endif %}
                {%- set function = call.function if call.function else call %}
                {%- set arguments = function.arguments if function.arguments is string else (function.arguments | tojson) %}
                {{- '<tool_call>\\n{"name": "' ~ function.name ~ '", "arguments": ' ~ arguments ~ '}\\n</tool_call>' }}
            {%- endfor %}
        {%- endif %}
        {{- '<|im_end|>\\n' }}
    {%- elif message.role == 'tool' %}
        {%- if loop.first or messages[loop.index0 - 1].role != 'tool' %}
            {{- '<|im_start|>user' }}
        {%- endif %}
        {{- '\\n<tool_response>\\n' + content + '\\n</tool_response>' }}
        {%- if loop.last or messages[loop.index0 + 1].role != 'tool' %}
            {{- '<|im_end|>\\n' }}
        {%- endif %}
    {%- else %}
        {{- raise_exception("Template @NAME@ cannot render message " ~ loop.index ~ ", of role " ~ message.role ~ " (the official template leaves it out); use system, user, assistant or tool.") }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\\n<think>\\n' }}
{%- endif %}
"""


# The system turn of Qwen3-VL's templates, with the tools described in it; @SYSTEM_RENDER@: the
# macro that renders the system message's content (the Instruct template takes text only there).
_SYSTEM_AND_TOOLS = """
{%- if tools %}
    {{- '<|im_start|>system\\n' }}
    {%- if messages[0].role == 'system' %}
        {{- @SYSTEM_RENDER@(messages[0].content, 1, 'system') + '\\n\\n' }}
    {%- endif %}
    {{- @TOOLS_BEFORE@ }}
    {%- for tool in tools %}
        {{- ('\\n' if not loop.first else '') + (tool | tojson) }}
    {%- endfor %}
    {{- @TOOLS_AFTER@ + '<|im_end|>\\n' }}
{%- elif messages[0].role == 'system' %}
    {{- '<|im_start|>system\\n' + @SYSTEM_RENDER@(messages[0].content, 1, 'system') + '<|im_end|>\\n' }}
{%- endif %}
"""


_TEXT_ONLY = """
{%- macro render_text(content, number, role) %}
    {%- if content is iterable and content is not string and content is not mapping %}
        {%- for part in content %}
            {%- if part.type != 'text' %}
                {{- raise_exception("Message " ~ number ~ " (" ~ role ~ ") part " ~ loop.index ~ " is of type " ~ part.type ~ ", which template @NAME@ has no place for (the official template drops it); send text only in system and assistant messages.") }}
            {%- endif %}
        {%- endfor %}
    {%- endif %}
    {{- render_content(content, number, role) }}
{%- endmacro %}
"""

_INSTRUCT = """
@SYSTEM_AND_TOOLS@
{%- for message in messages %}
    {%- if message.role == 'system' and loop.first %}
    {%- elif message.role == 'user' %}
        {{- '<|im_start|>user\\n' + render_content(message.content, loop.index, 'user') + '<|im_end|>\\n' }}
    {%- elif message.role == 'assistant' %}
        {{- '<|im_start|>assistant\\n' + render_text(message.content, loop.index, 'assistant') }}
        {%- if message.tool_calls %}
            {%- set opens_line = message.content %}
            {%- for call in message.tool_calls %}
                {%- if (loop.first and opens_line) or not loop.first %}
                    {{- '\\n' }}
                {%- endif %}
                {%- set function = call.function if call.function else call %}
                {%- set arguments = function.arguments if function.arguments is string else (function.arguments | tojson) %}
                {{- '<tool_call>\\n{"name": "' ~ function.name ~ '", "arguments": ' ~ arguments ~ '}\\n</tool_call>' }}
            {%- endfor %}
        {%- endif %}
        {{- '<|im_end|>\\n' }}
    {%- elif message.role == 'tool' %}
        {%- if loop.first or messages[loop.index0 - 1].role != 'tool' %}
            {{- '<|im_start|>user' }}
        {%- endif %}
        {{- '\\n<tool_response>\\n' + render_content(message.content, loop.index, 'tool') + '\\n</tool_response>' }}
        {%- if loop.last or messages[loop.index0 + 1].role != 'tool' %}
            {{- '<|im_end|>\\n' }}
        {%- endif %}
    {%- else %}
        {{- raise_exception("Template @NAME@ cannot render message " ~ loop.index ~ ", of role " ~ message.role ~ " (the official template leaves it out); use one system message first, then user, assistant or tool.") }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\\n' }}
{%- endif %}
"""


def _jinja(name: str, variant: str) -> str:
    preamble = _SYSTEM_AND_TOOLS.strip("\n")
    body = {
        "qwen2": _PLAIN,
        "instruct": _TEXT_ONLY + _INSTRUCT.replace("@SYSTEM_AND_TOOLS@", preamble.replace("@SYSTEM_RENDER@", "render_text")),
        "thinking": _THINKING.replace("@SYSTEM_AND_TOOLS@", preamble.replace("@SYSTEM_RENDER@", "render_content")),
    }[variant]
    text = _CONTENT.strip("\n") + "\n" + body.strip("\n")
    before, after = hermes_tools_prompt([{}]).split("{}")
    replacements = {
        "@VIDEO_BRANCH@": _VIDEO_BRANCH,
        "@VIDEO_PARTS@": " and video_url",
        "@NAME@": jinja_string(repr(name)),
        "@DEFAULT_SYSTEM@": jinja_string(DEFAULT_SYSTEM),
        "@TOOLS_BEFORE@": jinja_string(before),
        "@TOOLS_AFTER@": jinja_string(after),
    }
    for key, value in replacements.items():
        text = text.replace(key, value)
    return text


def build_qwen2_vl(processor) -> QwenVLTemplate:
    return QwenVLTemplate(processor, name="qwen2_vl", variant="qwen2")


def build_qwen3_vl(processor) -> QwenVLTemplate:
    return QwenVLTemplate(processor, name="qwen3_vl", variant="instruct")


def build_qwen3_vl_thinking(processor) -> QwenVLTemplate:
    return QwenVLTemplate(processor, name="qwen3_vl_thinking", variant="thinking")


# -- the records ----------------------------------------------------------------------------------


def model_families():
    for name, architecture, model_type, template, title, targets in (
        ("qwen2-vl", "Qwen2VLForConditionalGeneration", "qwen2_vl", "qwen2_vl", "Qwen2-VL", LANGUAGE_LINEAR),
        ("qwen2.5-vl", "Qwen2_5_VLForConditionalGeneration", "qwen2_5_vl", "qwen2_vl", "Qwen2.5-VL", LANGUAGE_LINEAR),
        ("qwen3-vl", "Qwen3VLForConditionalGeneration", "qwen3_vl", "qwen3_vl", "Qwen3-VL", LANGUAGE_LINEAR),
        ("qwen3-vl-moe", "Qwen3VLMoeForConditionalGeneration", "qwen3_vl_moe", "qwen3_vl", "Qwen3-VL mixture-of-experts", MOE_ATTENTION),
    ):
        yield ModelFamily(
            name=name,
            description=f"{title} vision-language models ({architecture}): images through the checkpoint's processor",
            architectures=(architecture,),
            model_types=(model_type,),
            default_template=template,
            lora_target_modules=targets,
            load_processor=_loader(PROCESSORS[model_type]),
            load_model=load_model,
            parts=PARTS,
            options=ImageOptions,
            processor_kwargs=processor_kwargs_from(image_settings),
        )


def chat_templates():
    yield ChatTemplate(
        name="qwen2_vl",
        description="Qwen2-VL/Qwen2.5-VL ChatML with image parts, default system 'You are a helpful assistant.', no tools",
        build=build_qwen2_vl,
    )
    yield ChatTemplate(
        name="qwen3_vl",
        description="Qwen3-VL Instruct ChatML with image parts, <tool_call> tools, no default system prompt",
        build=build_qwen3_vl,
    )
    yield ChatTemplate(
        name="qwen3_vl_thinking",
        description="Qwen3-VL Thinking ChatML with image parts, <think> blocks, <tool_call> tools",
        build=build_qwen3_vl_thinking,
    )
