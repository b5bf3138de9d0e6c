"""InternLM2 / InternLM2.5 checkpoints to the Llama layout, without running their remote code.

InternLM2 fuses the query, key and value projections into one ``wqkv`` matrix laid
out per key/value head: ``[q_1 .. q_g, k, v]`` for each of the ``num_key_value_heads``
groups (``g`` query heads per group). transformers has no InternLM2 class, so such a
checkpoint needs its own modeling code; splitting ``wqkv`` and renaming the other
weights gives a plain ``LlamaForCausalLM`` with the same outputs, which loads, trains
(LoRA on ``q_proj`` ... ``down_proj``) and serves like any Llama.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

from tuneforge.api import TuneforgeError

_RENAMES = (
    (r"^model\.tok_embeddings\.", "model.embed_tokens."),
    (r"^output\.", "lm_head."),
    (r"\.attention\.wo\.", ".self_attn.o_proj."),
    (r"\.feed_forward\.w1\.", ".mlp.gate_proj."),
    (r"\.feed_forward\.w3\.", ".mlp.up_proj."),
    (r"\.feed_forward\.w2\.", ".mlp.down_proj."),
    (r"\.attention_norm\.", ".input_layernorm."),
    (r"\.ffn_norm\.", ".post_attention_layernorm."),
)

_CONFIG_KEYS = (
    "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
    "num_key_value_heads", "hidden_act", "max_position_embeddings", "initializer_range", "rms_norm_eps",
    "rope_theta", "rope_scaling", "tie_word_embeddings", "bos_token_id", "eos_token_id", "pad_token_id",
)

_TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json", "special_tokens_map.json",
                    "added_tokens.json", "generation_config.json", "vocab.json", "merges.txt")


def read_internlm2_config(src: Path) -> dict:
    path = src / "config.json"
    if not path.is_file():
        raise TuneforgeError(f"'{src}' has no config.json; point at the directory of an InternLM2 checkpoint.")
    config = json.loads(path.read_text())
    if config.get("model_type") != "internlm2":
        raise TuneforgeError(
            f"'{src}' holds a {config.get('model_type')!r} checkpoint, not an InternLM2 one (model_type 'internlm2'); "
            f"other checkpoints need no conversion."
        )
    return config


def llama_config(config: dict) -> dict:
    """The LlamaConfig fields of an InternLM2 config (``bias`` becomes ``attention_bias``)."""
    out = {key: config[key] for key in _CONFIG_KEYS if key in config}
    out.setdefault("num_key_value_heads", out.get("num_attention_heads"))
    out["attention_bias"] = bool(config.get("bias", False))
    out["mlp_bias"] = False
    return out


def split_wqkv(wqkv, num_heads: int, num_kv_heads: int, head_dim: int):
    """(q, k, v) of a fused ``wqkv`` weight (rows) or bias."""
    groups = num_heads // num_kv_heads
    rest = wqkv.shape[1:]
    fused = wqkv.reshape(num_kv_heads, groups + 2, head_dim, *rest)
    q = fused[:, :groups].reshape(num_heads * head_dim, *rest)
    k = fused[:, -2].reshape(num_kv_heads * head_dim, *rest)
    v = fused[:, -1].reshape(num_kv_heads * head_dim, *rest)
    return q.contiguous(), k.contiguous(), v.contiguous()


def convert_state_dict(state: dict, config: dict) -> dict:
    num_heads = config["num_attention_heads"]
    num_kv_heads = config.get("num_key_value_heads") or num_heads
    head_dim = config["hidden_size"] // num_heads
    out = {}
    for name, tensor in state.items():
        fused = re.match(r"^(.*)\.attention\.wqkv\.(weight|bias)$", name)
        if fused:
            prefix, kind = fused.groups()
            q, k, v = split_wqkv(tensor, num_heads, num_kv_heads, head_dim)
            for proj, part in (("q_proj", q), ("k_proj", k), ("v_proj", v)):
                out[f"{prefix}.self_attn.{proj}.{kind}"] = part
            continue
        for pattern, replacement in _RENAMES:
            name = re.sub(pattern, replacement, name)
        out[name] = tensor
    return out


def _load_weights(src: Path) -> dict:
    from safetensors.torch import load_file

    shards = sorted(src.glob("*.safetensors"))
    if shards:
        state = {}
        for shard in shards:
            state.update(load_file(shard))
        return state
    bins = sorted(src.glob("pytorch_model*.bin"))
    if bins:
        import torch

        state = {}
        for shard in bins:
            state.update(torch.load(shard, map_location="cpu", weights_only=True))
        return state
    raise TuneforgeError(f"'{src}' has no *.safetensors or pytorch_model*.bin weights; point at a complete checkpoint.")


def internlm2_to_llama(src: str, dst: str) -> list[str]:
    """Write a Llama-layout copy of the InternLM2 checkpoint ``src`` to ``dst``; returns notes for the user."""
    from transformers import LlamaConfig, LlamaForCausalLM

    src_path, dst_path = Path(src).expanduser(), Path(dst).expanduser()
    config = read_internlm2_config(src_path)
    if dst_path.exists() and any(dst_path.iterdir()):
        raise TuneforgeError(f"The output directory '{dst}' is not empty; pass a new directory.")
    state = convert_state_dict(_load_weights(src_path), config)
    llama = LlamaConfig(**llama_config(config))
    llama.architectures = ["LlamaForCausalLM"]
    import torch

    with torch.device("meta"):
        model = LlamaForCausalLM(llama)
    expected = set(model.state_dict())
    if llama.tie_word_embeddings:
        state.pop("lm_head.weight", None)
        expected.discard("lm_head.weight")
    missing, unexpected = expected - set(state), set(state) - expected
    if missing or unexpected:
        raise TuneforgeError(
            f"The weights of '{src}' do not fit the InternLM2 layout (missing {sorted(missing)[:3]}, unexpected "
            f"{sorted(unexpected)[:3]}); check that it is an InternLM2 checkpoint."
        )
    model.load_state_dict(state, assign=True)
    dst_path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(dst_path)

    notes = []
    for name in _TOKENIZER_FILES:
        if (src_path / name).is_file():
            shutil.copy2(src_path / name, dst_path / name)
    tokenizer_config = dst_path / "tokenizer_config.json"
    if tokenizer_config.is_file() and "auto_map" in json.loads(tokenizer_config.read_text()):
        notes.append(
            "The tokenizer was copied as it is and still names its own code (auto_map); if it does not load, "
            "replace it with a tokenizer.json of the same vocabulary."
        )
    return notes
