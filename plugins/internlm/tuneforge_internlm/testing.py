"""Tiny random-weight InternLM checkpoints with a tokenizer that has InternLM's special tokens.

For tests: a real byte-level BPE vocabulary (SmolLM2's, which already has
``<|im_start|>`` and ``<|im_end|>``) plus InternLM's ``<s>``/``</s>`` and the action
tokens (special, as in the InternLM2/3 tokenizers), and a few-layer model built from
transformers' ``InternLM3Config``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

INTERNLM_SPECIAL_TOKENS = ("<|action_start|>", "<|action_end|>", "<|interpreter|>", "<|plugin|>")


def internlm_tokenizer_dir(path: str | os.PathLike, base_tokenizer_dir: str | None = None) -> str:
    """Write a tokenizer with InternLM's chat and action tokens to ``path``."""
    from transformers import AutoTokenizer

    path = Path(path)
    if (path / "tokenizer_config.json").exists():
        return str(path)
    if base_tokenizer_dir is None:
        from tuneforge.testing import smollm2_dir

        base_tokenizer_dir = smollm2_dir()
    tokenizer = AutoTokenizer.from_pretrained(base_tokenizer_dir, trust_remote_code=False)
    tokenizer.add_special_tokens(
        {"bos_token": "<s>", "eos_token": "</s>", "additional_special_tokens": list(INTERNLM_SPECIAL_TOKENS)}
    )
    tokenizer.pad_token = "</s>"
    tokenizer.chat_template = None
    path.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(path)
    return str(path)


def tiny_internlm3_dir(path: str | os.PathLike, *, tokenizer_dir: str | None = None, **overrides) -> str:
    """A random-weight InternLM3 checkpoint whose config names ``InternLM3ForCausalLM``, as released ones do."""
    from tuneforge.testing import tiny_model_dir

    path = Path(path)
    tokenizer_dir = tokenizer_dir or internlm_tokenizer_dir(path.parent / f"{path.name}-tokenizer")
    done = (path / "config.json").exists()
    tiny_model_dir(path, model_type="internlm3", tokenizer_dir=tokenizer_dir, head_dim=16, **overrides)
    if not done:
        config = json.loads((path / "config.json").read_text())
        config["architectures"] = ["InternLM3ForCausalLM"]
        (path / "config.json").write_text(json.dumps(config, indent=2))
    return str(path)
