"""What the ``npu`` device asks torch_npu, imported here and only when the device is used.

torch_npu is never imported when the plugin registers (every ``tuneforge`` command
loads it): only when a command asks for ``--device npu``, when the best available
device is looked for, or when ``tuneforge doctor`` probes the devices. Where
torch_npu is not installed or does not load (no CANN toolkit, a build for another
torch), the device is simply not available, and ``unavailable()`` says why in one
sentence with the fix.

Ascend's fused operators (``kernels()``) take the place of tuneforge's compiled
formulas, each only where the installed torch_npu has it:

- ``torch_npu.npu_rms_norm`` for the Llama-style RMSNorm (``--fused-norm``);
- ``torch_npu.npu_swiglu`` for ``silu(gate) * up`` (``--fused-swiglu``): it takes the
  two halves concatenated along the last dimension;
- ``torch_npu.npu_rotary_mul`` for the rotary embedding (``--fused-rope``), in its
  default "half" layout, transformers' ``rotate_half``;
- ``torch_npu.npu_fusion_attention`` for the attention of packed rows (the varlen
  attention of the fast path), in its ``TND`` layout with the samples' cumulative
  lengths, causal through its compressed mask (``sparse_mode=3``).

An operator the installed torch_npu lacks is replaced by its plain formula (the
same as leaving the switch off), never by ``torch.compile``, whose kernels are
CUDA's.
"""

from __future__ import annotations

import importlib
import importlib.metadata as metadata
import importlib.util

CANN_ENV_SCRIPT = "/usr/local/Ascend/ascend-toolkit/set_env.sh"
# The compressed causal mask npu_fusion_attention takes with sparse_mode=3: 2048 x 2048, True above the diagonal.
_MASK_SIZE = 2048
_MASKS: dict = {}


# -- the runtime ------------------------------------------------------------------------


def _version(distribution: str) -> str | None:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def major_minor(version: str | None) -> str | None:
    """``"2.13"`` of ``"2.13.0+cpu"`` or ``"2.13.0.post1"``; None for None."""
    if not version:
        return None
    return ".".join(version.split("+")[0].split(".")[:2])


def torch_version() -> str | None:
    """The installed torch's version, read from its metadata (torch is not imported)."""
    return _version("torch")


def matching_torch_npu() -> str:
    """The pip requirement of the torch_npu build that matches the installed torch: ``torch-npu==2.13.*``."""
    wanted = major_minor(torch_version())
    return f"torch-npu=={wanted}.*" if wanted else "torch-npu"


def load():
    """``(torch_npu, None)`` once it imports, else ``(None, why)``: ``"missing"`` or the import's error."""
    if importlib.util.find_spec("torch_npu") is None:
        return None, "missing"
    try:
        return importlib.import_module("torch_npu"), None
    except Exception as exc:  # no CANN libraries, or a build for another torch: the device is not available
        lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
        return None, f"{type(exc).__name__}: {lines[-1] if lines else 'no message'}"


def torch_npu_version(module=None) -> str | None:
    """The installed torch_npu's version: its distribution's, else the module's ``__version__``."""
    return _version("torch-npu") or _version("torch_npu") or getattr(module, "__version__", None)


def _runtime():
    """``torch_npu.npu`` (which torch_npu also installs as ``torch.npu``) where an NPU is there, else None."""
    torch_npu, _ = load()
    if torch_npu is None:
        return None
    try:
        return torch_npu.npu if torch_npu.npu.is_available() else None
    except Exception:
        return None


def is_available() -> bool:
    return _runtime() is not None


def unavailable() -> str:
    """One sentence: what keeps ``--device npu`` from running here, and how to install it."""
    torch_npu, error = load()
    torch_now, wanted = torch_version() or "?", matching_torch_npu()
    if error == "missing":
        return (
            f"--device npu needs torch_npu, which is not installed: on an Ascend machine with the CANN toolkit installed "
            f"(source {CANN_ENV_SCRIPT}), install the torch_npu build matching torch {torch_now} with "
            f"pip install '{wanted}' (docs/ascend.md)."
        )
    version = torch_npu_version(torch_npu)
    built_for = major_minor(version)
    mismatch = built_for is not None and built_for != major_minor(torch_now)
    if error is not None:
        fix = (
            f"torch_npu {version} is built for torch {built_for}, not the installed torch {torch_now}: pip install '{wanted}'"
            if mismatch else
            f"install Ascend's CANN toolkit and source {CANN_ENV_SCRIPT} before running tuneforge"
        )
        return f"--device npu cannot load torch_npu ({error}); {fix} (docs/ascend.md)."
    return (
        f"--device npu finds no Ascend NPU: torch_npu {version} loads but torch.npu.is_available() is false; check the "
        f"driver with npu-smi info and that ASCEND_RT_VISIBLE_DEVICES names a device, or leave --device out."
    )


def supports_bf16() -> bool:
    """Whether the NPU computes in bf16 (the 910B does, the 910A does not)."""
    runtime = _runtime()
    checker = getattr(runtime, "is_bf16_supported", None)
    return bool(checker()) if checker is not None else False


def peak_memory() -> int:
    """The most bytes this process has had allocated on its NPU (0: not measured)."""
    runtime = _runtime()
    return int(runtime.max_memory_allocated()) if runtime is not None else 0


def empty_cache() -> None:
    runtime = _runtime()
    if runtime is not None:
        runtime.empty_cache()


# -- the fused operators ----------------------------------------------------------------


def _rms_norm_formula(hidden, weight, eps: float):
    import torch

    dtype = hidden.dtype
    upcast = hidden.to(torch.float32)
    upcast = upcast * torch.rsqrt(upcast.pow(2).mean(-1, keepdim=True) + eps)
    return weight * upcast.to(dtype)


def rms_norm(hidden, weight, eps: float):
    """The Llama-style RMSNorm through ``torch_npu.npu_rms_norm``.

    Where the weight's dtype is not the input's (float32 master weights under bf16
    autocast in a full fine-tune), the formula's own type promotion is kept: plain formula.
    """
    import torch_npu

    if hidden.dtype != weight.dtype:
        return _rms_norm_formula(hidden, weight, eps)
    return torch_npu.npu_rms_norm(hidden, weight, epsilon=eps)[0]


def swiglu(gate, up):
    """``silu(gate) * up`` through ``torch_npu.npu_swiglu``, which takes both halves in one tensor."""
    import torch
    import torch_npu

    if gate.dtype != up.dtype:
        return torch.nn.functional.silu(gate) * up
    return torch_npu.npu_swiglu(torch.cat((gate, up), dim=-1), dim=-1)


def rotary(q, k, cos, sin, unsqueeze_dim: int = 1):
    """transformers' ``apply_rotary_pos_emb`` through ``torch_npu.npu_rotary_mul`` (its "half" layout)."""
    import torch_npu

    cos = cos.unsqueeze(unsqueeze_dim).to(q.dtype)
    sin = sin.unsqueeze(unsqueeze_dim).to(q.dtype)
    return torch_npu.npu_rotary_mul(q, cos, sin), torch_npu.npu_rotary_mul(k, cos.to(k.dtype), sin.to(k.dtype))


def _causal_mask(device):
    import torch

    key = str(device)
    if key not in _MASKS:
        _MASKS[key] = torch.triu(torch.ones(_MASK_SIZE, _MASK_SIZE, dtype=torch.bool, device=device), diagonal=1)
    return _MASKS[key]


def varlen_attention(query, key, value, cu_seqlens, max_len, scale, causal=True):
    """Attention within each sample of a packed row through ``torch_npu.npu_fusion_attention``.

    query ``[total, heads, dim]``, key and value ``[total, kv_heads, dim]`` (grouped
    queries: fewer key heads), ``cu_seqlens`` int32 sample starts with the total at the
    end; output ``[total, heads, dim]``. The ``TND`` layout takes the cumulative ends
    (``cu_seqlens[1:]``) as lists; half precision only, so float32 inputs are computed
    in bf16 and answered in float32.
    """
    import torch
    import torch_npu

    if query.dtype not in (torch.float16, torch.bfloat16):
        out = varlen_attention(query.to(torch.bfloat16), key.to(torch.bfloat16), value.to(torch.bfloat16),
                               cu_seqlens, max_len, scale, causal)
        return out.to(query.dtype)
    ends = [int(end) for end in cu_seqlens[1:].tolist()]
    output = torch_npu.npu_fusion_attention(
        query, key, value, query.shape[1], "TND",
        atten_mask=_causal_mask(query.device) if causal else None,
        scale=scale if scale is not None else query.shape[-1] ** -0.5,
        keep_prob=1.0,
        actual_seq_qlen=ends,
        actual_seq_kvlen=ends,
        sparse_mode=3 if causal else 0,
    )
    return output[0]


OPERATORS = {
    "rms_norm": ("npu_rms_norm", rms_norm),
    "swiglu": ("npu_swiglu", swiglu),
    "rotary": ("npu_rotary_mul", rotary),
    "varlen_attention": ("npu_fusion_attention", varlen_attention),
}


def _plain_swiglu(gate, up):
    import torch

    return torch.nn.functional.silu(gate) * up


def _plain_rotary(q, k, cos, sin, unsqueeze_dim: int = 1):
    import torch

    cos, sin = cos.unsqueeze(unsqueeze_dim), sin.unsqueeze(unsqueeze_dim)

    def rotate_half(x):
        half = x.shape[-1] // 2
        return torch.cat((-x[..., half:], x[..., :half]), dim=-1)

    return (q * cos) + (rotate_half(q) * sin), (k * cos) + (rotate_half(k) * sin)


# What a switch runs where torch_npu lacks the operator: the plain formula, as with the switch off.
PLAIN = {"rms_norm": _rms_norm_formula, "swiglu": _plain_swiglu, "rotary": _plain_rotary, "varlen_attention": None}


def provided(torch_npu=None) -> dict[str, str]:
    """Which of Ascend's operators the installed torch_npu has: ``{kernel: operator name}``."""
    if torch_npu is None:
        torch_npu, _ = load()
    if torch_npu is None:
        return {}
    return {kernel: op for kernel, (op, _) in OPERATORS.items() if callable(getattr(torch_npu, op, None))}


def kernels(device_kernels):
    """The ``DeviceKernels`` record of the installed torch_npu: its operators, the plain formula for one it lacks
    (None for the attention: the core's own then computes each sample in turn)."""
    have = provided()
    chosen = {name: (OPERATORS[name][1] if name in have else PLAIN[name]) for name in OPERATORS}
    return device_kernels(**chosen)
