"""A tiny random-weight InternVL3 checkpoint (transformers' native ``InternVLForConditionalGeneration``).

A one-layer vision tower on 32-pixel tiles, the two-layer MLP projector and a two-layer
Qwen2 text side with SmolLM2's real tokenizer (ChatML) plus ``<img>``, ``</img>``,
``<IMG_CONTEXT>`` and ``<video>``; each 32x32 tile becomes ``IMAGE_SEQ_LENGTH``
context tokens, an image up to ``MAX_PATCHES`` tiles (and a thumbnail when it has more
than one), as the InternVL3 "-hf" checkpoints lay them out. Written in about a second.
"""

from __future__ import annotations

import os
from pathlib import Path

IMAGE_TOKENS = {"start_image_token": "<img>", "end_image_token": "</img>", "context_image_token": "<IMG_CONTEXT>", "video_token": "<video>"}
TILE = 32  # pixels on each side of a tile
IMAGE_SEQ_LENGTH = 4  # context tokens per tile: (32 / 8)^2 patches * 0.5^2
MAX_PATCHES = 4


def tiny_internvl_dir(path: str | os.PathLike, *, chat_template: str | None = None, tokenizer_dir: str | None = None, seed: int = 0) -> str:
    """Write a random-weight InternVL checkpoint and its processor to ``path`` (once; later calls reuse it).

    ``chat_template``: the Jinja its tokenizer and processor carry (the official InternVL3-hf
    one in the plugin's tests); None: none.
    """
    import torch
    from transformers import AutoTokenizer, InternVLConfig, InternVLForConditionalGeneration, InternVLProcessor
    from transformers.models.got_ocr2.image_processing_pil_got_ocr2 import GotOcr2ImageProcessorPil

    from tuneforge.testing import smollm2_dir

    from ..processors import images_only

    path = Path(path)
    if (path / "config.json").exists():
        return str(path)
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir or smollm2_dir(), extra_special_tokens=dict(IMAGE_TOKENS), trust_remote_code=False)
    tokenizer.chat_template = chat_template
    images = GotOcr2ImageProcessorPil(size={"height": TILE, "width": TILE}, crop_to_patches=True, min_patches=1, max_patches=MAX_PATCHES)
    processor = images_only(InternVLProcessor)(images, tokenizer, None, image_seq_length=IMAGE_SEQ_LENGTH, chat_template=chat_template)
    config = InternVLConfig(
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, image_size=TILE, patch_size=8),
        text_config=dict(
            model_type="qwen2", vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False,
            eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        ),
        image_token_id=tokenizer.context_image_token_id,
        image_seq_length=IMAGE_SEQ_LENGTH,
        downsample_ratio=0.5,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = InternVLForConditionalGeneration(config)
    model.config.architectures = ["InternVLForConditionalGeneration"]
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return str(path)
