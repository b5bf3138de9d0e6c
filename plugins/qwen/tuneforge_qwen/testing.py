"""Tiny random-weight Qwen checkpoints with a tokenizer that has Qwen's special tokens.

For tests (this plugin's, and a server's that needs a Qwen-family model): a real
byte-level BPE vocabulary (SmolLM2's, which already has ``<|im_start|>``,
``<|im_end|>`` and ``<|endoftext|>``) plus Qwen's added tokens, ``<|im_end|>`` as the
end of a turn, and a few-layer model of the family built from its transformers config.
"""

from __future__ import annotations

import os
from pathlib import Path

# Added tokens of the Qwen2.5/Qwen3 tokenizers that chat and tool calling use. They are
# not "special": they stay in decoded text, which is how a server sees a tool call.
QWEN_ADDED_TOKENS = ("<think>", "</think>", "<tool_call>", "</tool_call>", "<tool_response>", "</tool_response>")

MODEL_TYPES = {
    "qwen2": {},
    "qwen3": {"head_dim": 16},
    "qwen3_moe": {"head_dim": 16, "num_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 32},
}


def qwen_tokenizer_dir(path: str | os.PathLike, base_tokenizer_dir: str | None = None) -> str:
    """Write a tokenizer with Qwen's chat and tool tokens to ``path``."""
    from transformers import AddedToken, AutoTokenizer

    path = Path(path)
    if (path / "tokenizer_config.json").exists():
        return str(path)
    if base_tokenizer_dir is None:
        from tuneforge.testing import smollm2_dir

        base_tokenizer_dir = smollm2_dir()
    tokenizer = AutoTokenizer.from_pretrained(base_tokenizer_dir, trust_remote_code=False)
    tokenizer.add_tokens([AddedToken(t, special=False, normalized=False) for t in QWEN_ADDED_TOKENS])
    tokenizer.eos_token = "<|im_end|>"
    tokenizer.pad_token = "<|endoftext|>"
    tokenizer.chat_template = None
    path.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(path)
    return str(path)


def tiny_qwen_dir(path: str | os.PathLike, model_type: str = "qwen3", *, tokenizer_dir: str | None = None, **overrides) -> str:
    """A random-weight ``model_type`` (qwen2, qwen3, qwen3_moe) checkpoint with a Qwen tokenizer."""
    from tuneforge.testing import tiny_model_dir

    if model_type not in MODEL_TYPES:
        raise ValueError(f"model_type {model_type!r} is not a Qwen type this helper builds; use one of {', '.join(MODEL_TYPES)}.")
    path = Path(path)
    tokenizer_dir = tokenizer_dir or qwen_tokenizer_dir(path.parent / f"{path.name}-tokenizer")
    return tiny_model_dir(path, model_type=model_type, tokenizer_dir=tokenizer_dir, **{**MODEL_TYPES[model_type], **overrides})
