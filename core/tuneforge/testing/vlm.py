"""A tiny random-weight vision-language model and a test-only plugin for it.

What a vision-language plugin's tests reuse: ``tiny_vlm_dir`` writes an Idefics3
(SmolVLM architecture) checkpoint that transformers builds from its config classes
(a one-layer vision tower, a two-layer Llama text side, SmolLM2's real tokenizer plus
the image tokens) with its processor beside it, in about a second on a CPU.
``tuneforge.testing.vlm_plugin`` is a plugin registering its model family and a
template that encodes ``image_url`` parts; install it in a test with
``plugin_installed(tuneforge.testing.vlm_plugin, "tiny-vlm", "tuneforge-tiny-vlm")``.
``image_file`` and ``image_data_url`` make the images rows and requests refer to;
``collate`` batches encoded samples as ``sft`` does, packed or padded.
"""

from __future__ import annotations

import base64
import io
import os
from pathlib import Path

IMAGE_TOKENS = ("<fake_token_around_image>", "<image>", "<end_of_utterance>", "<global-img>")
IMAGE_SIZE = 32  # pixels on the longest edge the processor resizes to
IMAGE_SEQ_LEN = 4  # tokens an image becomes


def tiny_vlm_dir(
    path: str | os.PathLike, *, tokenizer_dir: str | None = None, seed: int = 0, head_dim: int = 16, initializer_range: float = 0.02
) -> str:
    """Write a random-weight Idefics3 checkpoint and its processor to ``path`` (once; later calls reuse it).

    ``head_dim``: the width of the attention heads of both towers (vLLM's CPU attention takes 64, no narrower).
    ``initializer_range``: the spread of the random weights; a wide one (0.2) gives peaked logits, whose
    greedy answers two engines' kernels agree on, and pictures that change the answer.
    """
    import torch
    from transformers import AutoTokenizer, Idefics3Config, Idefics3ForConditionalGeneration, Idefics3Processor
    from transformers.models.idefics3.image_processing_pil_idefics3 import Idefics3ImageProcessorPil

    from . import smollm2_dir

    path = Path(path)
    if (path / "config.json").exists():
        return str(path)
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir or smollm2_dir(), trust_remote_code=False)
    tokenizer.add_special_tokens({"additional_special_tokens": list(IMAGE_TOKENS)})
    tokenizer.chat_template = None  # the checkpoint carries no chat template: the test plugin's template is its layout
    size = {"longest_edge": IMAGE_SIZE}
    images = Idefics3ImageProcessorPil(do_image_splitting=False, size=size, max_image_size=size)
    processor = Idefics3Processor(image_processor=images, tokenizer=tokenizer, image_seq_len=IMAGE_SEQ_LEN)
    config = Idefics3Config(
        vision_config=dict(
            hidden_size=2 * head_dim, intermediate_size=4 * head_dim, num_hidden_layers=1, num_attention_heads=2, image_size=IMAGE_SIZE, patch_size=8,
            initializer_range=initializer_range,
        ),
        text_config=dict(
            model_type="llama", vocab_size=len(tokenizer), hidden_size=4 * head_dim, intermediate_size=8 * head_dim, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False, initializer_range=initializer_range,
        ),
        initializer_range=initializer_range,
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        scale_factor=2,  # (32 / 8)^2 patches / 2^2 = IMAGE_SEQ_LEN tokens
        pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(seed)
    model = Idefics3ForConditionalGeneration(config)
    model.config.architectures = ["Idefics3ForConditionalGeneration"]
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return str(path)


def _png(color: tuple[int, int, int], size: tuple[int, int]) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format="PNG")
    return buffer.getvalue()


def image_file(path: str | os.PathLike, color: tuple[int, int, int] = (200, 30, 30), size: tuple[int, int] = (40, 30)) -> str:
    """Write a one-colour PNG to ``path``; returns the path (for an ``image_url`` part of a dataset row)."""
    Path(path).write_bytes(_png(color, size))
    return str(path)


def image_data_url(color: tuple[int, int, int] = (200, 30, 30), size: tuple[int, int] = (40, 30)) -> str:
    """A one-colour PNG as a ``data:image/png;base64,...`` URL (for an ``image_url`` part of a request)."""
    return "data:image/png;base64," + base64.b64encode(_png(color, size)).decode()


def collate(template, samples, *, packing: bool, boundaries: bool = False) -> dict:
    """The batch ``sft`` hands the model for ``samples`` (``{"input_ids", "labels", "extras"}``) encoded by ``template``.

    Packed (``packing=True``: one row, restarting ``position_ids``, the extras joined by the
    template's ``collate_extras``) where the template says its extras pack
    (``packs_extras``), else right-padded; what a plugin's tests compare to show that
    packing its samples gives the padded batch's loss. ``boundaries``: a packed row also carries
    the samples' cumulative lengths, as ``sft`` adds them for its variable-length attention.
    """
    from tuneforge.data.collate import make_collator

    return make_collator(
        template.tokenizer,
        packing=packing,
        collate_extras=getattr(template, "collate_extras", None),
        packs_extras=getattr(template, "packs_extras", False),
        boundaries=boundaries,
    )(samples)
