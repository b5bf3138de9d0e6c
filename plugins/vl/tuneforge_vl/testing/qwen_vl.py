"""Tiny random-weight Qwen2-VL, Qwen2.5-VL and Qwen3-VL checkpoints, with their processors.

``tiny_qwen_vl_dir(path, "qwen2_vl" | "qwen2_5_vl" | "qwen3_vl")`` writes a checkpoint of
that architecture built from its transformers config classes (a one-layer vision tower, a
two-layer language model), a tokenizer with Qwen's chat and vision tokens (SmolLM2's real
byte-level BPE vocabulary plus ``<|vision_start|>``, ``<|image_pad|>``, ... as special
tokens, ``<|im_end|>`` as end of turn) and the family's processor, resizing images to at
most ``MAX_PIXELS`` so a picture is a handful of tokens. ``chat_template`` gives the
checkpoint a chat template (the official ones are this plugin's test fixtures); by default
it carries none. Builds in about a second on a CPU.
"""

from __future__ import annotations

import os
from pathlib import Path

# The vision tokens of the Qwen-VL tokenizers (special: a processor counts them as single tokens).
VISION_TOKENS = ("<|vision_start|>", "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>")
# Added tokens that chat with tools and reasoning use (not special: they stay in decoded text).
CHAT_TOKENS = ("<think>", "</think>", "<tool_call>", "</tool_call>", "<tool_response>", "</tool_response>")

MODEL_TYPES = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl", "qwen3_vl_moe")
PATCH = {"qwen2_vl": 14, "qwen2_5_vl": 14, "qwen3_vl": 16, "qwen3_vl_moe": 16}  # pixels of a patch's side
MERGE = 2  # patches merged along each side into one image token
# An image is resized to at most this many pixels: a 4 x 4 grid of patches, 2 x 2 = 4 image tokens.
MAX_PIXELS = {name: (4 * patch) ** 2 for name, patch in PATCH.items()}
MIN_PIXELS = {name: (2 * patch) ** 2 for name, patch in PATCH.items()}


def qwen_vl_tokenizer(base_tokenizer_dir: str | None = None):
    """SmolLM2's tokenizer with Qwen's vision and chat tokens, ``<|im_end|>`` as its end of turn."""
    from transformers import AddedToken, AutoTokenizer

    if base_tokenizer_dir is None:
        from tuneforge.testing import smollm2_dir

        base_tokenizer_dir = smollm2_dir()
    tokenizer = AutoTokenizer.from_pretrained(base_tokenizer_dir, trust_remote_code=False)
    tokenizer.add_special_tokens({"additional_special_tokens": list(VISION_TOKENS)})
    tokenizer.add_tokens([AddedToken(t, special=False, normalized=False) for t in CHAT_TOKENS])
    tokenizer.eos_token = "<|im_end|>"
    tokenizer.pad_token = "<|endoftext|>"
    tokenizer.chat_template = None
    return tokenizer


def _config(model_type: str, tokenizer, head_dim: int = 16, initializer_range: float = 0.02):
    ids = {name: tokenizer.convert_tokens_to_ids(token) for name, token in (
        ("image_token_id", "<|image_pad|>"), ("video_token_id", "<|video_pad|>"),
        ("vision_start_token_id", "<|vision_start|>"), ("vision_end_token_id", "<|vision_end|>"),
    )}
    text = dict(
        vocab_size=len(tokenizer), hidden_size=4 * head_dim, intermediate_size=8 * head_dim, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=2048, tie_word_embeddings=False, initializer_range=initializer_range,
        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.bos_token_id,
    )
    if model_type in ("qwen3_vl", "qwen3_vl_moe"):
        import transformers

        text.update(head_dim=16, rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3], "mrope_interleaved": True})
        vision = dict(
            depth=1, hidden_size=32, intermediate_size=64, num_heads=2, patch_size=PATCH[model_type],
            spatial_merge_size=MERGE, temporal_patch_size=2, out_hidden_size=64, num_position_embeddings=16,
            deepstack_visual_indexes=[0],
        )
        if model_type == "qwen3_vl_moe":
            text.update(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32)
        config_class = transformers.Qwen3VLMoeConfig if model_type == "qwen3_vl_moe" else transformers.Qwen3VLConfig
        return config_class(text_config=text, vision_config=vision, tie_word_embeddings=False, **ids)
    # M-RoPE splits half a head's width among time, height and width, as the released checkpoints do (16:24:24 of 128).
    section = [head_dim // 8, 3 * head_dim // 16, 3 * head_dim // 16]
    text.update(rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": section})
    vision_width = 2 * head_dim  # two vision heads of head_dim
    if model_type == "qwen2_vl":
        from transformers import Qwen2VLConfig

        vision = dict(
            depth=1, embed_dim=vision_width, hidden_size=4 * head_dim, num_heads=2, mlp_ratio=2, patch_size=PATCH[model_type],
            spatial_merge_size=MERGE, initializer_range=initializer_range,
        )
        return Qwen2VLConfig(text_config=text, vision_config=vision, tie_word_embeddings=False, initializer_range=initializer_range, **ids)
    from transformers import Qwen2_5_VLConfig

    vision = dict(
        depth=1, hidden_size=vision_width, intermediate_size=2 * vision_width, num_heads=2, out_hidden_size=4 * head_dim,
        patch_size=PATCH[model_type], spatial_merge_size=MERGE, window_size=56, fullatt_block_indexes=[0], initializer_range=initializer_range,
    )
    return Qwen2_5_VLConfig(text_config=text, vision_config=vision, tie_word_embeddings=False, initializer_range=initializer_range, **ids)


ARCHITECTURES = {
    "qwen2_vl": "Qwen2VLForConditionalGeneration",
    "qwen2_5_vl": "Qwen2_5_VLForConditionalGeneration",
    "qwen3_vl": "Qwen3VLForConditionalGeneration",
    "qwen3_vl_moe": "Qwen3VLMoeForConditionalGeneration",
}


def _processor(model_type: str, tokenizer, chat_template: str | None):
    """The family's processor with the PIL image processor; a video processor only where torchvision imports."""
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    import transformers

    from ..processors import has_video_processors, images_only
    from ..qwen_vl import PROCESSORS

    size = {"shortest_edge": MIN_PIXELS[model_type], "longest_edge": MAX_PIXELS[model_type]}
    images = Qwen2VLImageProcessorPil(size=size, patch_size=PATCH[model_type], merge_size=MERGE, temporal_patch_size=2)
    if has_video_processors():  # with torchvision: video too, frames under the images' bounds
        kind = transformers.Qwen2VLVideoProcessor if model_type in ("qwen2_vl", "qwen2_5_vl") else transformers.Qwen3VLVideoProcessor
        videos = kind(size=size, patch_size=PATCH[model_type], merge_size=MERGE, temporal_patch_size=2)
        return getattr(transformers, PROCESSORS[model_type])(images, tokenizer, videos, chat_template=chat_template)
    return images_only(getattr(transformers, PROCESSORS[model_type]))(images, tokenizer, None, chat_template=chat_template)


def tiny_qwen_vl_dir(
    path: str | os.PathLike,
    model_type: str = "qwen2_5_vl",
    *,
    chat_template: str | None = None,
    tokenizer_dir: str | None = None,
    seed: int = 0,
    head_dim: int = 16,
    initializer_range: float = 0.02,
) -> str:
    """Write a random-weight ``model_type`` checkpoint with its processor to ``path`` (once; later calls reuse it).

    ``head_dim`` (Qwen2-VL and Qwen2.5-VL): the width of every attention head, text and vision (the
    widths of both towers follow); vLLM's CPU attention takes 64-wide heads, not the default 16.
    ``initializer_range``: the spread of the random weights (wider: peaked logits, so two engines
    agree on greedy answers)."""
    import torch
    import transformers

    if model_type not in MODEL_TYPES:
        raise ValueError(f"model_type {model_type!r} is not one this helper builds; use one of {', '.join(MODEL_TYPES)}.")
    path = Path(path)
    if (path / "config.json").exists():
        return str(path)
    tokenizer = qwen_vl_tokenizer(tokenizer_dir)
    tokenizer.chat_template = chat_template
    processor = _processor(model_type, tokenizer, chat_template)
    if head_dim != 16 and model_type not in ("qwen2_vl", "qwen2_5_vl"):
        raise ValueError(f"head_dim {head_dim} is for qwen2_vl and qwen2_5_vl; {model_type} is built with 16-wide heads.")
    config = _config(model_type, tokenizer, head_dim, initializer_range)
    torch.manual_seed(seed)
    model = getattr(transformers, ARCHITECTURES[model_type])(config)
    model.config.architectures = [ARCHITECTURES[model_type]]
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return str(path)
