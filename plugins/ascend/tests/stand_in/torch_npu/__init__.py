"""A STAND-IN for torch_npu, for tests only: it maps the NPU calls onto the CPU.

Not torch_npu, and nothing Ascend runs here: no NPU and no CANN toolkit exist on the
machines these tests run on. It offers the few calls tuneforge-ascend makes:
``torch_npu.npu`` with one always-available device, bf16, memory statistics (this
process's peak resident memory) and cache emptying; an ``hccl`` process-group backend
that is gloo underneath (for ``torch.distributed`` itself: accelerate refuses hccl on a
CPU device type); and
Ascend's fused operators computed by their plain PyTorch formulas, each counting its
calls in ``calls`` so a test sees which ones ran.

It is on ``sys.path`` only inside the tests that ask for it (the
``stand_in_torch_npu`` fixture, or a subprocess's ``PYTHONPATH``).
"""

from __future__ import annotations

import collections
import resource
import sys
import types

import torch

STAND_IN = True
__version__ = torch.__version__.split("+")[0]  # built "for" the installed torch, as a matching torch_npu is

calls: collections.Counter = collections.Counter()


# -- torch_npu.npu: one device, which is the CPU -------------------------------------------------


def _peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


npu = types.ModuleType("torch_npu.npu", "torch_npu.npu of the stand-in: one NPU, the CPU.")
npu.is_available = lambda: True
npu.device_count = lambda: 1
npu.current_device = lambda: 0
npu.set_device = lambda device: None
npu.synchronize = lambda device=None: None
npu.is_bf16_supported = lambda: True
npu.manual_seed = lambda seed: None
npu.manual_seed_all = lambda seed: None
npu.max_memory_allocated = lambda device=None: _peak_rss()
npu.memory_allocated = lambda device=None: _peak_rss()
npu.reset_peak_memory_stats = lambda device=None: None


def _empty_cache() -> None:
    calls["empty_cache"] += 1


npu.empty_cache = _empty_cache
sys.modules["torch_npu.npu"] = npu
# Unlike torch_npu, it leaves ``torch.npu`` unset: transformers, accelerate and peft then keep
# to the CPU device type, which is where this stand-in puts the "NPU".


def _hccl_is_gloo(store, rank, size, timeout):
    return torch.distributed.ProcessGroupGloo(store, rank, size, timeout)


if torch.distributed.is_available() and "hccl" not in torch.distributed.Backend.backend_list:
    torch.distributed.Backend.register_backend("hccl", _hccl_is_gloo, devices=["cpu"])


# -- Ascend's fused operators, as their plain formulas -----------------------------------------


def npu_rms_norm(x, gamma, epsilon=1e-6):
    """Returns ``(y, rstd)`` as torch_npu's does."""
    calls["npu_rms_norm"] += 1
    upcast = x.to(torch.float32)
    rstd = torch.rsqrt(upcast.pow(2).mean(-1, keepdim=True) + epsilon)
    return gamma * (upcast * rstd).to(x.dtype), rstd


def npu_swiglu(x, dim=-1):
    """``silu(a) * b`` of the two halves of ``x`` along ``dim``."""
    calls["npu_swiglu"] += 1
    a, b = x.chunk(2, dim=dim)
    return torch.nn.functional.silu(a) * b


def npu_rotary_mul(x, r1, r2):
    """``x * r1 + rotate_half(x) * r2`` ("half" layout)."""
    calls["npu_rotary_mul"] += 1
    half = x.shape[-1] // 2
    return x * r1 + torch.cat((-x[..., half:], x[..., :half]), dim=-1) * r2


def npu_fusion_attention(query, key, value, head_num, input_layout, pse=None, padding_mask=None, atten_mask=None,
                         scale=1.0, keep_prob=1.0, pre_tockens=2147483647, next_tockens=2147483647, inner_precise=0,
                         prefix=None, actual_seq_qlen=None, actual_seq_kvlen=None, sparse_mode=0, **_):
    """The ``TND`` layout only: each sample (cumulative ends ``actual_seq_qlen``) attends over itself,
    causally with ``sparse_mode=3``; returns a tuple whose first element is the output."""
    calls["npu_fusion_attention"] += 1
    assert input_layout == "TND" and query.shape[1] == head_num and keep_prob == 1.0
    assert sparse_mode in (0, 3) and (sparse_mode == 0) == (atten_mask is None)
    outputs, start = [], 0
    for end in actual_seq_qlen:
        q, k, v = (t[start:end].transpose(0, 1)[None] for t in (query, key, value))
        out = torch.nn.functional.scaled_dot_product_attention(
            q, k, v, is_causal=sparse_mode == 3, scale=scale, enable_gqa=k.shape[1] != q.shape[1]
        )
        outputs.append(out[0].transpose(0, 1))
        start = end
    return (torch.cat(outputs, dim=0), None, None, None, 0, 0, 0)
