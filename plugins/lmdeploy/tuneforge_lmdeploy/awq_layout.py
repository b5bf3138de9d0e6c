"""A compressed-tensors 4-bit checkpoint repacked into AutoAWQ's layout, which LMDeploy serves.

``tuneforge export --format awq|gptq`` (tuneforge-awq) writes W4A16 weights in the
compressed-tensors ``pack-quantized`` format, which transformers and vLLM load. LMDeploy
0.18 reads that format's config but fails to build the model from it (its PyTorch
engine stops at the first fused projection: "compressed-tensors dispatch requires a
non-empty canonical module prefix"). The same numbers in AutoAWQ's GEMM layout
(``quant_method: awq``) load in its PyTorch engine and in TurboMind, so the lmdeploy
engine serves such a checkpoint through a repacked copy, built once into
``$TUNEFORGE_HOME/lmdeploy-awq/`` and reused while the checkpoint is unchanged. The
checkpoint itself is never written to.

The repacking is exact: a group's integers, zero point and scale are the same numbers.

- compressed-tensors keeps each layer as ``weight_packed`` (int32 ``[out, in/8]``, input
  ``8w + k`` in bits ``4k..4k+3`` of word ``w``, stored as ``q + 8`` for ``q`` in -8..7),
  ``weight_scale`` (``[out, in/group]``) and, for asymmetric groups, ``weight_zero_point``
  (``[out/8, in/group]``, packed the same way along the outputs). The weight is
  ``(q - zero) * scale``, the zero being 0 for symmetric groups.
- AutoAWQ keeps ``qweight`` (int32 ``[in, out/8]``), ``qzeros`` (int32
  ``[in/group, out/8]``), both with outputs ``8w + ORDER[k]`` in bits ``4k..4k+3``, and
  ``scales`` (float16 ``[in/group, out]``); the integers are unsigned (0..15), the weight
  ``(q - zero) * scale``. So ``q`` and ``zero`` each move up by 8.

Everything else (embeddings, norms, biases, the output head) is copied, in float16 as
AutoAWQ checkpoints are.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any, Mapping

from tuneforge.api import TuneforgeError, build_once, tuneforge_home

AWQ_ORDER = (0, 2, 4, 6, 1, 3, 5, 7)  # the output column packed in bits 4k..4k+3 of an AutoAWQ word
MARKER = "tuneforge_awq_layout.json"


def w4a16_groups(quantization: Mapping[str, Any] | None) -> int | None:
    """The group size of a compressed-tensors pack-quantized 4-bit weight-only config (None for any other config)."""
    if not quantization or quantization.get("quant_method") != "compressed-tensors":
        return None
    groups = list((quantization.get("config_groups") or {}).values())
    if len(groups) != 1 or groups[0].get("input_activations"):
        return None
    weights = groups[0].get("weights") or {}
    layout = groups[0].get("format") or quantization.get("format")
    if layout != "pack-quantized" or weights.get("num_bits") != 4 or weights.get("type") != "int" or weights.get("strategy") != "group":
        return None
    return int(weights["group_size"])


def unpack_int4(packed, count: int):
    """The 4-bit integers (0..15, int16) packed 8 to an int32 along the last dimension, ``count`` of them per row."""
    import torch

    shifts = torch.arange(0, 32, 4, dtype=torch.int32, device=packed.device)
    values = (packed.unsqueeze(-1) >> shifts) & 0xF
    return values.reshape(*packed.shape[:-1], -1)[..., :count].to(torch.int16)


def pack_awq(values):
    """AutoAWQ's int32 packing of 4-bit integers (0..15) along the last dimension, 8 to a word in AWQ_ORDER."""
    import torch

    rows, columns = values.shape
    words = values.to(torch.int64).reshape(rows, columns // 8, 8)[..., list(AWQ_ORDER)]
    packed = torch.zeros(rows, columns // 8, dtype=torch.int64)
    for k in range(8):
        packed |= words[..., k] << (4 * k)
    return (packed - ((packed >> 31) << 32)).to(torch.int32)  # the unsigned word as int32, two's complement


def write_awq_checkpoint(source: Path, target: Path, tensors: dict, config: dict, group_size: int) -> None:
    """Save ``tensors`` as an AutoAWQ GEMM checkpoint at ``target``: ``config`` marked so, and ``source``'s other files (tokenizer, ...) beside."""
    from safetensors.torch import save_file

    target.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(target / "model.safetensors"), metadata={"format": "pt"})
    config = dict(
        config, torch_dtype="float16", dtype="float16",
        quantization_config={"quant_method": "awq", "bits": 4, "group_size": group_size, "version": "gemm", "zero_point": True},
    )
    (target / "config.json").write_text(json.dumps(config, indent=2))
    for extra in source.iterdir():
        if extra.is_file() and extra.suffix != ".safetensors" and extra.name not in ("config.json", "model.safetensors.index.json"):
            shutil.copy2(extra, target / extra.name)


def convert(source: str | Path, target: str | Path) -> Path:
    """Write the AutoAWQ-layout copy of the compressed-tensors W4A16 checkpoint ``source`` to ``target``."""
    import torch
    from safetensors import safe_open

    source, target = Path(source), Path(target)
    config = json.loads((source / "config.json").read_text())
    group = w4a16_groups(config.get("quantization_config"))
    if group is None:
        raise TuneforgeError(
            f"'{source}' is not a compressed-tensors pack-quantized 4-bit weight-only checkpoint; "
            f"give one that `tuneforge export --format awq|gptq` wrote."
        )
    tensors: dict[str, Any] = {}
    for shard in sorted(source.glob("*.safetensors")):
        with safe_open(str(shard), framework="pt") as weights:
            tensors.update({name: weights.get_tensor(name) for name in weights.keys()})
    out: dict[str, Any] = {}
    quantized = sorted(name[: -len(".weight_packed")] for name in tensors if name.endswith(".weight_packed"))
    for base in quantized:
        out_features, in_features = (int(x) for x in tensors.pop(base + ".weight_shape").tolist())
        if in_features % group or out_features % 8:
            raise TuneforgeError(
                f"{base} is {out_features}x{in_features}, which AutoAWQ's layout cannot hold in groups of {group} "
                f"(inputs in whole groups, outputs in multiples of 8); serve '{source}' with --engine pt or vllm."
            )
        q = unpack_int4(tensors.pop(base + ".weight_packed"), in_features)  # [out, in], q + 8
        scale = tensors.pop(base + ".weight_scale")  # [out, groups]
        if base + ".weight_zero_point" in tensors:  # asymmetric: packed along the outputs
            zero = unpack_int4(tensors.pop(base + ".weight_zero_point").T.contiguous(), out_features).T  # [out, groups], zero + 8
        else:
            zero = torch.full(scale.shape, 8, dtype=torch.int16)
        out[base + ".qweight"] = pack_awq(q.T.contiguous())
        out[base + ".qzeros"] = pack_awq(zero.T.contiguous())
        out[base + ".scales"] = scale.T.contiguous().to(torch.float16)
    if not quantized:
        raise TuneforgeError(f"'{source}' has no packed 4-bit weights (no *.weight_packed tensors); export it again.")
    for name, tensor in tensors.items():
        out[name] = tensor.to(torch.float16) if tensor.is_floating_point() else tensor
    write_awq_checkpoint(source, target, out, config, group)
    (target / MARKER).write_text(json.dumps({"source": str(source.resolve()), "group_size": group}) + "\n")
    return target


def cached_copy(source: str | Path) -> Path:
    """The AutoAWQ-layout copy of ``source`` under ``$TUNEFORGE_HOME/lmdeploy-awq/``, built on first use."""
    source = Path(source).resolve()
    key = hashlib.sha256(str(source).encode())
    for path in sorted(source.iterdir()):  # a checkpoint written again is converted again
        if path.is_file():
            stat = path.stat()
            key.update(f"{path.name}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    target = tuneforge_home() / "lmdeploy-awq" / f"{source.name}-{key.hexdigest()[:12]}"
    return build_once(
        target, lambda staged: convert(source, staged), complete=lambda path: (path / MARKER).is_file(),
        name=f"AutoAWQ-layout copy of {source.name}", doing="repacking",
    )
