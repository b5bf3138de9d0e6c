"""Tiny random-weight SmolVLM (``SmolVLMForConditionalGeneration``) and Idefics3 checkpoints.

The approach of the core's ``tuneforge.testing.vlm``: a one-layer vision tower on
32-pixel tiles, the pixel-shuffle connector and a two-layer Llama text side with
SmolLM2's real tokenizer plus the image tokens (``<fake_token_around_image>``,
``<image>``, ``<global-img>``, ``<row_r_col_c>``, ``<end_of_utterance>``). Images are
split, as the real checkpoints split them: the longest edge is scaled to
``LONGEST_EDGE`` pixels, cut into ``TILE``-pixel tiles (rows x cols) plus the whole
image shrunk to one tile, each tile ``IMAGE_SEQ_LEN`` image tokens.
"""

from __future__ import annotations

import os
from pathlib import Path

TILE = 32
LONGEST_EDGE = 64  # two tiles on the longest edge
IMAGE_SEQ_LEN = 4  # (32 / 8)^2 patches / 2^2
ROWS_COLS = 6  # the largest grid the tokenizer has <row_r_col_c> tokens for


def image_tokens() -> list[str]:
    grid = [f"<row_{r}_col_{c}>" for r in range(1, ROWS_COLS + 1) for c in range(1, ROWS_COLS + 1)]
    return ["<fake_token_around_image>", "<image>", "<end_of_utterance>", "<global-img>", *grid]


def tiny_smolvlm_dir(
    path: str | os.PathLike,
    *,
    architecture: str = "smolvlm",
    chat_template: str | None = None,
    tokenizer_dir: str | None = None,
    seed: int = 0,
    head_dim: int = 16,
    initializer_range: float = 0.02,
) -> str:
    """Write a random-weight SmolVLM (``architecture="smolvlm"``) or Idefics3 (``"idefics3"``) checkpoint to ``path``.

    Once; later calls reuse it. ``chat_template``: the Jinja its tokenizer and processor
    carry (the official SmolVLM one in the plugin's tests); None: none. ``head_dim``: the width of
    the attention heads of both towers (vLLM's CPU attention takes 64, no narrower);
    ``initializer_range``: the spread of the random weights (a wide one, 0.2, gives peaked logits,
    whose greedy answers two engines agree on).
    """
    import torch
    from transformers import AutoTokenizer

    from tuneforge.testing import smollm2_dir

    from ..processors import images_only

    if architecture == "smolvlm":
        from transformers import SmolVLMConfig as Config
        from transformers import SmolVLMForConditionalGeneration as Model
        from transformers import SmolVLMProcessor as Processor
        from transformers.models.smolvlm.image_processing_pil_smolvlm import SmolVLMImageProcessorPil as Images
    elif architecture == "idefics3":
        from transformers import Idefics3Config as Config
        from transformers import Idefics3ForConditionalGeneration as Model
        from transformers import Idefics3Processor as Processor
        from transformers.models.idefics3.image_processing_pil_idefics3 import Idefics3ImageProcessorPil as Images
    else:
        raise ValueError(f"architecture is {architecture!r}; give 'smolvlm' or 'idefics3'.")

    path = Path(path)
    if (path / "config.json").exists():
        return str(path)
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir or smollm2_dir(), trust_remote_code=False)
    tokenizer.add_special_tokens({"additional_special_tokens": image_tokens()})
    tokenizer.chat_template = chat_template
    images = Images(do_image_splitting=True, size={"longest_edge": LONGEST_EDGE}, max_image_size={"longest_edge": TILE})
    parts = (images, tokenizer, None) if architecture == "smolvlm" else (images, tokenizer)
    processor = images_only(Processor)(*parts, image_seq_len=IMAGE_SEQ_LEN, chat_template=chat_template)
    config = Config(
        vision_config=dict(
            hidden_size=2 * head_dim, intermediate_size=4 * head_dim, num_hidden_layers=1, num_attention_heads=2, image_size=TILE, patch_size=8,
            initializer_range=initializer_range,
        ),
        text_config=dict(
            model_type="llama", vocab_size=len(tokenizer), hidden_size=4 * head_dim, intermediate_size=8 * head_dim, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False, initializer_range=initializer_range,
        ),
        initializer_range=initializer_range,
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        scale_factor=2,
        pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(seed)
    model = Model(config)
    model.config.architectures = [Model.__name__]
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return str(path)
