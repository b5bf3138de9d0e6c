"""Variable-length attention for packed batches, through PyTorch's own flash kernel.

A packed batch is one row of samples back to back. transformers' sdpa path turns
its restarting ``position_ids`` into a full ``[total, total]`` block-diagonal mask
and attends over every block, the ones between samples too. Here the samples'
boundaries go to ``torch.nn.attention.varlen.varlen_attn`` (flash attention with
cumulative sequence lengths, on CUDA), which computes only each sample's own
causal triangle: no mask, no work across samples.

``register()`` adds the kernel to transformers under the name ``VARLEN``; a model
loaded with ``attn_implementation=VARLEN`` uses it. The boundaries come from the
batch (``cu_seq_lens_q`` and ``max_length_q``, which the packing collator adds),
else from ``position_ids``, else from a 2D padding mask; without any of them each
row is one sample. Off CUDA, and where the kernel is missing, each sample goes
through ``scaled_dot_product_attention`` in turn: the same result, slowly.
A module that is not causal (a vision tower's attention, in a vision-language model
loaded with this implementation) goes to transformers' sdpa function instead.

``VISION_VARLEN`` is the same kernel without the causal mask, for a vision tower whose
attention (Qwen2-VL, Qwen2.5-VL, Qwen3-VL) cuts its patches into windows or images by
cumulative lengths. transformers sends all of them in one call to an implementation whose
name says "flash" (``is_flash_attention_requested``), and one call a window to any other
(sdpa: thousands of small kernel launches a forward pass for a few large images). Under
this name they go to ``varlen_attn`` at once on CUDA; elsewhere each window goes through
``scaled_dot_product_attention`` in turn, as transformers' sdpa path does.
``use_for_vision(vision_config)`` gives a vision sub-config this implementation where
the kernel runs (``available()``).
"""

from __future__ import annotations

import inspect

VARLEN = "tuneforge_varlen"
# "flash" in the name: transformers' vision attention then makes one call with cu_seq_lens for all windows.
VISION_VARLEN = "tuneforge_flash_varlen"


def available() -> bool:
    """Whether PyTorch has the varlen flash kernel and a CUDA device to run it."""
    import torch

    try:
        from torch.nn.attention import varlen  # noqa: F401
    except ImportError:
        return False
    return torch.cuda.is_available()


def boundaries_from_positions(position_ids):
    """Cumulative sequence starts (int32, with the total at the end) of a ``[1, total]`` packed row."""
    import torch

    flat = position_ids.reshape(-1)
    starts = torch.nonzero(flat == 0).reshape(-1)
    if starts.numel() == 0 or int(starts[0]) != 0:
        starts = torch.cat([torch.zeros(1, dtype=starts.dtype, device=starts.device), starts])
    total = torch.tensor([flat.numel()], dtype=starts.dtype, device=starts.device)
    return torch.cat([starts, total]).to(torch.int32)


def _varlen_call(query, key, value, cu_seqlens, max_len, scale, causal=True):
    """query ``[total, heads, dim]``, key/value ``[total, kv_heads, dim]`` → ``[total, heads, dim]``, attention
    within each sample (causal, or over the whole sample where ``causal`` is False)."""
    import torch

    if _DEVICE_VARLEN:  # a device's own operator (Device.kernels), given to register()
        return _DEVICE_VARLEN[0](query, key, value, cu_seqlens, max_len, scale, causal)
    if query.is_cuda and available():
        from torch.nn.attention.varlen import varlen_attn

        if query.dtype not in (torch.float16, torch.bfloat16):
            # The flash kernel takes half precision only (float32 reaches it where layers were
            # upcast, as k-bit training does): compute in the autocast dtype, answer in float32.
            half = torch.get_autocast_dtype("cuda") if torch.is_autocast_enabled("cuda") else torch.bfloat16
            out = _varlen_call(query.to(half), key.to(half), value.to(half), cu_seqlens, max_len, scale, causal)
            return out.to(query.dtype)
        params = inspect.signature(varlen_attn).parameters
        kwargs = {"scale": scale}
        # PyTorch 2.10 takes is_causal; later ones a window, (-1, 0) causal and (-1, -1) the whole sample.
        if "is_causal" in params:
            kwargs["is_causal"] = causal
        else:
            kwargs["window_size"] = (-1, 0) if causal else (-1, -1)
        if "enable_gqa" in params and key.shape[1] != query.shape[1]:
            kwargs["enable_gqa"] = True
        return varlen_attn(query, key, value, cu_seqlens, cu_seqlens, max_len, max_len, **kwargs)
    outputs = []
    bounds = cu_seqlens.tolist()
    for start, end in zip(bounds[:-1], bounds[1:]):
        if end <= start:
            continue
        q, k, v = (t[start:end].transpose(0, 1)[None] for t in (query, key, value))
        out = torch.nn.functional.scaled_dot_product_attention(
            q, k, v, is_causal=causal, scale=scale, enable_gqa=k.shape[1] != q.shape[1]
        )
        outputs.append(out[0].transpose(0, 1))
    return torch.cat(outputs, dim=0)


def varlen_attention_forward(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """A transformers attention function: inputs ``[batch, heads, seq, dim]``, output ``[batch, seq, heads, dim]``."""
    import torch
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    if getattr(module, "is_causal", True) is False:  # a bidirectional module (a vision tower): not this causal kernel's work
        return sdpa_attention_forward(module, query, key, value, attention_mask, scaling=scaling, dropout=dropout, **kwargs)
    if dropout:
        raise ValueError(f"The {VARLEN} attention has no dropout (the model asks for {dropout}); set attention_dropout to 0.")
    if kwargs.get("sliding_window") or getattr(module, "sliding_window", None):
        raise ValueError(f"The {VARLEN} attention has no sliding window; load this model with attn_implementation='sdpa'.")
    batch, heads, seq, dim = query.shape
    if key.shape[2] != seq:  # decoding against a KV cache: not a training batch
        return sdpa_attention_forward(module, query, key, value, attention_mask, scaling=scaling, dropout=dropout, **kwargs)
    cu_seqlens = kwargs.get("cu_seq_lens_q")
    max_len = kwargs.get("max_length_q")
    position_ids = kwargs.get("position_ids")
    if attention_mask is not None and attention_mask.dim() == 2 and not bool(attention_mask.all()):
        # Padded rows: gather the real tokens, attend per row, scatter back.
        lengths = attention_mask.sum(-1).to(torch.int32)
        cu = torch.nn.functional.pad(lengths.cumsum(0, dtype=torch.int32), (1, 0))
        keep = attention_mask.reshape(-1).bool()
        q, k, v = (t.transpose(1, 2).reshape(batch * seq, t.shape[1], dim)[keep] for t in (query, key, value))
        out = _varlen_call(q, k, v, cu, int(lengths.max()), scaling)
        full = out.new_zeros(batch * seq, heads, dim)
        full[keep] = out
        return full.view(batch, seq, heads, dim), None
    if cu_seqlens is None and batch == 1 and position_ids is not None:
        cu_seqlens = boundaries_from_positions(position_ids)
        max_len = int((cu_seqlens[1:] - cu_seqlens[:-1]).max())
    if cu_seqlens is None:  # every row is one whole sample
        cu_seqlens = torch.arange(0, (batch + 1) * seq, seq, dtype=torch.int32, device=query.device)
        max_len = seq
    q, k, v = (t.transpose(1, 2).reshape(batch * seq, t.shape[1], dim) for t in (query, key, value))
    out = _varlen_call(q, k, v, cu_seqlens.to(device=query.device, dtype=torch.int32), int(max_len), scaling)
    return out.view(batch, seq, heads, dim), None


_NOTED: list = []  # whether the one-window-at-a-time notice was logged


def vision_varlen_attention_forward(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """A transformers attention function for a vision tower: each window (``cu_seq_lens_q``) attends over itself
    whole, all windows in one call; inputs ``[1, heads, total, dim]``, output ``[1, total, heads, dim]``."""
    import torch
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    cu_seqlens = kwargs.pop("cu_seq_lens_q", None)
    max_len = kwargs.pop("max_length_q", None)
    if cu_seqlens is None or attention_mask is not None or query.shape[0] != 1 or kwargs.get("is_causal"):
        # Called one window at a time (a transformers that does not batch the windows for this name), or with a mask.
        if cu_seqlens is None and not _NOTED:
            from .setup import log

            _NOTED.append(True)
            log(f"the vision tower's attention came one window at a time ({VISION_VARLEN} gets no window boundaries "
                f"from this transformers version): each window goes through sdpa")
        for name in ("cu_seq_lens_k", "max_length_k"):
            kwargs.pop(name, None)
        return sdpa_attention_forward(module, query, key, value, attention_mask, scaling=scaling, dropout=dropout, **kwargs)
    if dropout:
        raise ValueError(f"The {VISION_VARLEN} attention has no dropout (the model asks for {dropout}); set attention_dropout to 0.")
    _, heads, total, dim = query.shape
    cu_seqlens = cu_seqlens.to(device=query.device, dtype=torch.int32)
    if max_len is None:
        max_len = int((cu_seqlens[1:] - cu_seqlens[:-1]).max())
    q, k, v = (t[0].transpose(0, 1).contiguous() for t in (query, key, value))
    out = _varlen_call(q, k, v, cu_seqlens, int(max_len), scaling, causal=False)
    return out.view(1, total, heads, dim), None


_DEVICE_VARLEN: list = []  # the device's own varlen operator, where register() was given one


def register(device_varlen=None) -> str:
    """Make ``VARLEN`` (and ``VISION_VARLEN``) attention implementations transformers knows; returns ``VARLEN``.

    ``device_varlen``: a device's own operator (``DeviceKernels.varlen_attention``) that
    computes the samples' attention in place of PyTorch's kernel in this process (None:
    PyTorch's).
    """
    from transformers import AttentionInterface

    _DEVICE_VARLEN[:] = [device_varlen] if device_varlen is not None else []

    AttentionInterface.register(VARLEN, varlen_attention_forward)
    AttentionInterface.register(VISION_VARLEN, vision_varlen_attention_forward)
    return VARLEN


def use_for_vision(vision_config, force: bool = False) -> str:
    """Give ``vision_config`` (a vision tower's sub-config that batches its windows for flash-like
    implementations) the ``VISION_VARLEN`` attention where the kernel runs (``available()``) and the
    tower uses sdpa, or ``VARLEN`` (a model loaded with it for packed batches: ``VARLEN`` hands a
    module that is not causal to sdpa, window by window); ``force``: wherever it uses those (off
    CUDA the windows then go through sdpa one by one: the same result). Returns the implementation
    the tower uses."""
    current = getattr(vision_config, "_attn_implementation", None) or "sdpa"
    if current in ("sdpa", VARLEN, VISION_VARLEN) and (force or available()):
        register(_DEVICE_VARLEN[0] if _DEVICE_VARLEN else None)  # the language model's kernel stays as it was
        vision_config._attn_implementation = VISION_VARLEN
        return VISION_VARLEN
    return current
