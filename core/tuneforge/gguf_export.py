"""``tuneforge export --format gguf``: one GGUF file for llama.cpp and Ollama.

The exporter lives in the core's internal plugin (``builtin/exporters.py``) rather than
in a plugin of its own: the ``gguf`` package it writes with is already a core
dependency (transformers reads GGUF files through it), it adds no heavy import, and it
reuses the core's merge (``export.load_merged``) and template code, which a plugin could
only reach through ``tuneforge.api``. Nothing in it depends on a family plugin: the GGUF
layout is chosen by the checkpoint's ``model_type`` (a transformers fact), not by a
tuneforge family name.

What it writes, into the export's folder:

- ``NAME-QUANT.gguf``: the merged weights under llama.cpp's tensor names
  (``gguf.get_tensor_name_map``), the architecture's hyperparameters, the byte-level
  BPE tokenizer (tokens, token types, merges, special ids, whether it adds a BOS) and
  the chat template the model was trained with (the run template's Jinja);
- ``Modelfile`` (with ``--ollama``): ``FROM`` the file, the template in Ollama's Go
  template syntax where the run's template is a role-header layout (else the raw
  prompt format) and a ``PARAMETER stop`` for each of its end-of-turn markers;
- ``tuneforge_export.json``: where it came from, as the merged export's record.

Quantization: ``f16`` (matrices in float16, norms in float32), ``q8_0`` (matrices
whose rows split into blocks of 32 in Q8_0, the gguf package's numpy quantizer; the
others in float16) and ``q4_k_m`` (llama.cpp's mix of Q4_K and Q6_K per tensor; the
gguf package reads those types but cannot write them, so ``gguf_kquants`` does, in
the layout that package reads).

Everything the export can refuse (a model type without a GGUF
layout, a tokenizer that is not byte-level BPE, a RoPE scaling llama.cpp does not take)
is checked by ``check_gguf`` before the weights are read.
"""

from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Mapping

from .errors import TuneforgeError
from .options import option

QUANTIZATIONS = ("f16", "q8_0", "q4_k_m")


@dataclass
class GgufOptions:
    """The gguf exporter's own options (``--format gguf --help``)."""

    quantization: Literal["f16", "q8_0", "q4_k_m"] = option(
        "f16", "Weight type of the GGUF file: f16 (float16), q8_0 (8-bit blocks, about half the size of f16) or q4_k_m (llama.cpp's 4- and 6-bit mix, about 30% of f16).", group="export"
    )
    ollama: bool = option(False, "Also write an Ollama Modelfile (template and stop tokens) beside the GGUF file.", group="export")


@dataclass(frozen=True)
class Layout:
    """How a transformers model type is written: llama.cpp's architecture, and whether q/k rows are permuted."""

    architecture: str  # a gguf.MODEL_ARCH member name
    permute_qk: bool  # llama.cpp's Llama graph expects the rotary halves interleaved


# model_type -> layout; InternLM3 is a Llama graph in llama.cpp (its converter writes it as one).
LAYOUTS = {
    "llama": Layout("LLAMA", permute_qk=True),
    "mistral": Layout("LLAMA", permute_qk=True),
    "internlm3": Layout("LLAMA", permute_qk=True),
    "qwen2": Layout("QWEN2", permute_qk=False),
    "qwen3": Layout("QWEN3", permute_qk=False),
}

_ROPE_TYPES = ("default", "linear", "llama3")


def _rope(config) -> dict:
    parameters = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {}
    parameters = dict(parameters)
    parameters.setdefault("rope_theta", getattr(config, "rope_theta", None) or 10000.0)
    parameters["rope_type"] = parameters.get("rope_type") or parameters.get("type") or "default"
    return parameters


def check_gguf(bundle, options: Mapping[str, Any]) -> tuple[Layout, str]:
    """Refuse, in one sentence, what cannot become a GGUF file; return the layout and the pre-tokenizer name."""
    quantization = options.get("quantization") or "f16"
    if quantization not in QUANTIZATIONS:
        raise TuneforgeError(f"--quantization '{quantization}' is not one the gguf exporter writes; use f16, q8_0 or q4_k_m.")
    config = bundle.hf_config
    model_type = getattr(config, "model_type", None)
    if model_type not in LAYOUTS:
        raise TuneforgeError(
            f"'{bundle.spec}' is a {model_type!r} model, which the gguf exporter has no llama.cpp layout for; "
            f"it writes {', '.join(sorted(LAYOUTS))} models (use --format merged for the others)."
        )
    rope = _rope(config)
    if rope["rope_type"] not in _ROPE_TYPES:
        raise TuneforgeError(
            f"'{bundle.spec}' uses RoPE scaling {rope['rope_type']!r}, which the gguf exporter does not write; "
            f"it writes {', '.join(_ROPE_TYPES)} (use --format merged for this model)."
        )
    return LAYOUTS[model_type], _pre_tokenizer(bundle)


# -- the tokenizer -----------------------------------------------------------------


def _tokenizer_json(tokenizer) -> dict:
    backend = getattr(tokenizer, "backend_tokenizer", None) or getattr(tokenizer, "_tokenizer", None)
    if backend is None:
        return {}
    return json.loads(backend.to_str())


def _pre_tokenizer(bundle) -> str:
    """llama.cpp's name for how the tokenizer splits text before BPE (``tokenizer.ggml.pre``)."""
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX as QWEN2_SPLIT

    data = _tokenizer_json(bundle.tokenizer)
    model = data.get("model") or {}
    if model.get("type") != "BPE" or (data.get("decoder") or {}).get("type") != "ByteLevel":
        raise TuneforgeError(
            f"The tokenizer of '{bundle.spec}' is not a byte-level BPE tokenizer (tokenizer.json model "
            f"{model.get('type')!r}); the gguf exporter writes only those (Llama 3, Qwen, SmolLM2 style): use --format merged."
        )
    pre = data.get("pre_tokenizer") or {}
    steps = pre.get("pretokenizers", [pre]) if pre.get("type") == "Sequence" else [pre]
    kinds = [step.get("type") for step in steps]
    if kinds == ["ByteLevel"] and steps[0].get("use_regex", True):
        return "gpt-2"
    if kinds == ["Split", "ByteLevel"] and not steps[1].get("use_regex", True):
        pattern = (steps[0].get("pattern") or {}).get("Regex")
        known = {QWEN2_SPLIT: "qwen2", LLAMA3_SPLIT: "llama-bpe"}
        if pattern in known:
            return known[pattern]
    raise TuneforgeError(
        f"The tokenizer of '{bundle.spec}' splits text in a way the gguf exporter cannot name for llama.cpp "
        f"(pre-tokenizer {json.dumps(pre)[:120]}); it knows the GPT-2, Llama 3 and Qwen2 splits: use --format merged."
    )


LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)


def _add_tokenizer(writer, tokenizer, vocab_size: int, pre: str, template) -> dict:
    """The vocabulary, merges, special ids and chat template as metadata; returns what was written about it."""
    import gguf

    data = _tokenizer_json(tokenizer)
    added = {entry["id"]: entry for entry in data.get("added_tokens", [])}
    by_id = {index: token for token, index in tokenizer.get_vocab().items()}
    tokens, types = [], []
    for index in range(vocab_size):
        token = by_id.get(index)
        if token is None:
            tokens.append(f"[PAD{index}]")
            types.append(gguf.TokenType.UNUSED)
        elif index in added:
            tokens.append(added[index]["content"])
            types.append(gguf.TokenType.CONTROL if added[index].get("special") else gguf.TokenType.USER_DEFINED)
        else:
            tokens.append(token)
            types.append(gguf.TokenType.NORMAL)
    merges = [merge if isinstance(merge, str) else " ".join(merge) for merge in data["model"].get("merges", [])]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    for token_id, add in (
        (tokenizer.bos_token_id, writer.add_bos_token_id),
        (tokenizer.eos_token_id, writer.add_eos_token_id),
        (tokenizer.unk_token_id, writer.add_unk_token_id),
        (tokenizer.pad_token_id, writer.add_pad_token_id),
    ):
        if token_id is not None:
            add(token_id)
    stops = [i for i in (getattr(template, "stop_token_ids", None) or []) if i != tokenizer.eos_token_id]
    if stops:
        writer.add_eot_token_id(stops[0])  # llama.cpp ends a turn there, as the template does
    probe = tokenizer("a", add_special_tokens=True)["input_ids"]
    adds_bos = tokenizer.bos_token_id is not None and bool(probe) and probe[0] == tokenizer.bos_token_id
    writer.add_add_bos_token(adds_bos)
    writer.add_add_space_prefix(False)
    chat_template = template.jinja() if hasattr(template, "jinja") else None
    if chat_template:
        writer.add_chat_template(chat_template)
    elif getattr(tokenizer, "chat_template", None):
        writer.add_chat_template(tokenizer.chat_template)
    return {"adds_bos": adds_bos, "trained_template_written": bool(chat_template)}


# -- the weights -------------------------------------------------------------------


def _permute(weights, n_head: int, n_head_kv: int):
    """llama.cpp's q/k row order: each head's two rotary halves interleaved (its converter's ``permute``)."""
    if n_head != n_head_kv:
        n_head = n_head_kv
    return weights.reshape(n_head, 2, weights.shape[0] // n_head // 2, *weights.shape[1:]).swapaxes(1, 2).reshape(weights.shape)


def _llama3_rope_factors(rope: dict, head_dim: int):
    """The per-frequency factors llama.cpp reads from ``rope_freqs.weight`` for Llama 3.1-style RoPE."""
    import numpy as np

    base, factor = rope["rope_theta"], rope.get("factor", 8.0)
    low, high = rope.get("low_freq_factor", 1.0), rope.get("high_freq_factor", 4.0)
    old_context = rope.get("original_max_position_embeddings", 8192)
    factors = []
    for freq in 1.0 / (base ** (np.arange(0, head_dim, 2, dtype=np.float32) / head_dim)):
        wavelength = 2 * math.pi / freq
        if wavelength < old_context / high:
            factors.append(1.0)
        elif wavelength > old_context / low:
            factors.append(factor)
        else:
            smooth = (old_context / wavelength - low) / (high - low)
            factors.append(1 / ((1 - smooth) / factor + smooth))
    return np.asarray(factors, dtype=np.float32)


def _tensors(model, layout: Layout, quantization: str):
    """``(gguf name, data, ggml type)`` for each weight, quantized as asked."""
    import gguf
    import numpy as np
    import torch

    from . import gguf_kquants as kquants

    config = model.config
    arch = getattr(gguf.MODEL_ARCH, layout.architecture)
    names = gguf.get_tensor_name_map(arch, config.num_hidden_layers)
    tied = bool(getattr(config, "tie_word_embeddings", False))
    n_head, n_kv = config.num_attention_heads, getattr(config, "num_key_value_heads", None) or config.num_attention_heads
    for hf_name, tensor in model.state_dict().items():
        if tied and hf_name == "lm_head.weight":
            continue
        name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if name is None:
            raise TuneforgeError(f"The weight '{hf_name}' has no name in llama.cpp's {layout.architecture} layout; use --format merged.")
        data = tensor.detach().to(torch.float32).numpy()
        if layout.permute_qk and hf_name.endswith(("self_attn.q_proj.weight", "self_attn.q_proj.bias")):
            data = _permute(data, n_head, n_head)
        elif layout.permute_qk and hf_name.endswith(("self_attn.k_proj.weight", "self_attn.k_proj.bias")):
            data = _permute(data, n_head, n_kv)
        if data.ndim < 2:
            yield name, np.ascontiguousarray(data, dtype=np.float32), gguf.GGMLQuantizationType.F32
        elif quantization == "q4_k_m":
            qtype = kquants.q4_k_m_type(name, data.shape[-1], config.num_hidden_layers, tied)
            yield name, kquants.quantize(data, qtype), qtype
        elif quantization == "q8_0" and data.shape[-1] % gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType.Q8_0][0] == 0:
            yield name, gguf.quants.quantize(data, gguf.GGMLQuantizationType.Q8_0), gguf.GGMLQuantizationType.Q8_0
        else:
            yield name, np.ascontiguousarray(data, dtype=np.float16), gguf.GGMLQuantizationType.F16


def _add_hyperparameters(writer, config, layout: Layout, quantization: str) -> None:
    import gguf

    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    rope = _rope(config)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(getattr(config, "num_key_value_heads", None) or config.num_attention_heads)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_rope_freq_base(float(rope["rope_theta"]))
    writer.add_rope_dimension_count(head_dim)
    if head_dim != config.hidden_size // config.num_attention_heads or layout.architecture == "QWEN3":
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)
    if rope["rope_type"] == "linear":
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(float(rope["factor"]))
    writer.add_vocab_size(config.vocab_size)
    file_types = {"f16": "MOSTLY_F16", "q8_0": "MOSTLY_Q8_0", "q4_k_m": "MOSTLY_Q4_K_M"}
    writer.add_file_type(getattr(gguf.LlamaFileType, file_types[quantization]))
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)


# -- Ollama ------------------------------------------------------------------------


def _go_quote(text: str) -> str:
    return json.dumps(text)  # a Go string literal for these texts (JSON escapes are Go escapes)


def ollama_template(template, adds_bos: bool) -> str | None:
    """The run's template as an Ollama Go template, for a role-header layout (``TurnLayout``); else None."""
    layout = getattr(template, "layout", None)
    if layout is None or not hasattr(layout, "header"):
        return None
    before, after = layout.header.split("{role}", 1)
    role = "{{ .Role }}"
    for canonical, renamed in dict(layout.role_names).items():
        role = f'{{{{ if eq .Role {_go_quote(canonical)} }}}}{renamed}{{{{ else }}}}' + role + "{{ end }}"
    turn = f"{before}{role}{after}{{{{ .Content }}}}{layout.end}{layout.separator}"
    lines = [layout.begin if layout.begin and not adds_bos else ""]
    if layout.default_system:
        system = f"{before}system{after}{layout.default_system}{layout.end}{layout.separator}"
        lines.append('{{- if or (not .Messages) (ne (index .Messages 0).Role "system") }}' + system + "{{ end }}")
    lines.append("{{- range .Messages }}" + turn + "{{ end }}")
    lines.append(f"{before}assistant{after}")
    return "".join(lines)


def write_modelfile(directory: Path, gguf_name: str, template, adds_bos: bool) -> str:
    go = ollama_template(template, adds_bos)
    lines = [f"FROM ./{gguf_name}", ""]
    if go is None:
        lines += [
            f"# The '{getattr(template, 'name', 'run')}' template has no Go form here: send prompts rendered as that template does (raw).",
            'TEMPLATE """{{ .Prompt }}"""',
        ]
    else:
        lines.append(f'TEMPLATE """{go}"""')
    for stop in getattr(template, "stop_strings", None) or []:
        lines.append(f"PARAMETER stop {_go_quote(stop)}")
    text = "\n".join(lines) + "\n"
    (directory / "Modelfile").write_text(text)
    return text


# -- the exporter ------------------------------------------------------------------


def export_gguf(bundle, output_dir: str, options: Mapping[str, Any]) -> str:
    """Write the run ``bundle``, merged, as one GGUF file into ``output_dir``; return the folder."""
    import gguf

    from . import __version__
    from .export import EXPORT_RECORD, load_merged

    layout, pre = check_gguf(bundle, options)
    quantization = options.get("quantization") or "f16"
    model, loaded, how, dtype = load_merged(bundle, options)
    out = Path(output_dir)
    destination = Path(options.get("destination") or out)
    gguf_name = f"{destination.name}-{quantization}.gguf"
    arch_name = gguf.MODEL_ARCH_NAMES[getattr(gguf.MODEL_ARCH, layout.architecture)]
    writer = gguf.GGUFWriter(out / gguf_name, arch_name)
    writer.add_name(destination.name)
    _add_hyperparameters(writer, model.config, layout, quantization)
    written = _add_tokenizer(writer, loaded.tokenizer, model.config.vocab_size, pre, loaded.template)
    if layout.permute_qk and _rope(model.config)["rope_type"] == "llama3":
        head_dim = getattr(model.config, "head_dim", None) or model.config.hidden_size // model.config.num_attention_heads
        writer.add_tensor("rope_freqs.weight", _llama3_rope_factors(_rope(model.config), head_dim), raw_dtype=gguf.GGMLQuantizationType.F32)
    for name, data, qtype in _tensors(model, layout, quantization):
        writer.add_tensor(name, data, raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file(progress=sys.stderr.isatty())
    writer.close()
    if options.get("ollama"):
        write_modelfile(out, gguf_name, loaded.template, written["adds_bos"])
    record = {
        "exported_by": f"tuneforge {__version__}",
        "exporter": "gguf",
        "file": gguf_name,
        "quantization": quantization,
        "architecture": arch_name,
        "source": str(Path(bundle.spec).resolve()),
        "base_model": bundle.run.base_model,
        "tuner": bundle.run.tuner,
        "merged": how,
        "template": loaded.template_name,
        "chat_template": loaded.template_name if written["trained_template_written"] else None,
        "torch_dtype": dtype,
        "ollama_modelfile": bool(options.get("ollama")),
        "data_fingerprint": bundle.run.data.get("fingerprint"),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    (out / EXPORT_RECORD).write_text(json.dumps(record, indent=2, default=str) + "\n")
    print(f"Wrote {destination / gguf_name} ({quantization}, {how}).", file=sys.stderr)
    return str(out)
