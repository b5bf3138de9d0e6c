"""Q4_K and Q6_K block quantizers in numpy, for ``export --format gguf --quantization q4_k_m``.

The ``gguf`` package reads these two types (``gguf.quants.dequantize``, a port of
llama.cpp's) but cannot write them. These write the same byte layout; the tests check
them through that reader. They choose each block's scales from its minimum and maximum
(rounded up, so no value clips), not with llama.cpp's iterative search, so the error is a little
larger than ``llama-quantize``'s for the same type.

Q4_K: super-blocks of 256 values, 8 sub-blocks of 32 with a 6-bit scale and a 6-bit
minimum each (against a float16 ``d`` and ``dmin``), 4-bit values: x = d*sc*q - dmin*m.
Q6_K: super-blocks of 256, 16 sub-blocks of 16 with an int8 scale (against a float16
``d``), 6-bit values: x = d*sc*(q - 32).

``q4_k_m_type`` is llama.cpp's choice of type per tensor for Q4_K_M: Q6_K for the
output (or the tied embedding) and for half of the ``attn_v`` and ``ffn_down`` layers,
Q4_K elsewhere; a matrix whose rows do not split into blocks of 256 takes Q5_0 (for
Q4_K) or Q8_0 (for Q6_K), as llama.cpp falls back.
"""

from __future__ import annotations

import numpy as np

QK_K = 256


def _blocks(data: np.ndarray) -> np.ndarray:
    return np.asarray(data, dtype=np.float32).reshape(-1, QK_K)


def _f16_bytes(values: np.ndarray) -> np.ndarray:
    return values.astype(np.float16).reshape(-1, 1).view(np.uint8)


def quantize_q4_k(data: np.ndarray) -> np.ndarray:
    """``data`` (rows a multiple of 256 long) as Q4_K blocks: uint8 of shape (rows, row_len // 256 * 144)."""
    shape = data.shape
    x = _blocks(data).reshape(-1, 8, 32)
    low = np.minimum(x.min(axis=-1), 0.0)  # the minimum is stored as a positive offset
    scale = (x.max(axis=-1) - low) / 15.0
    d = scale.max(axis=-1) / 63.0
    dmin = (-low).max(axis=-1) / 63.0
    d16, dmin16 = d.astype(np.float16).astype(np.float32), dmin.astype(np.float16).astype(np.float32)
    with np.errstate(divide="ignore", invalid="ignore"):
        # rounded up, so a sub-block's 16 steps always span it (nothing clips at the top)
        sc = np.where(d16[:, None] > 0, np.ceil(scale / d16[:, None]), 0).clip(0, 63).astype(np.uint8)
        mn = np.where(dmin16[:, None] > 0, np.rint(-low / dmin16[:, None]), 0).clip(0, 63).astype(np.uint8)
        step = (d16[:, None] * sc)[..., None]
        offset = (dmin16[:, None] * mn)[..., None]
        q = np.where(step > 0, np.rint((x + offset) / step), 0).clip(0, 15).astype(np.uint8)
    scales = np.empty((x.shape[0], 12), dtype=np.uint8)
    scales[:, 0:4] = sc[:, :4] | ((sc[:, 4:] >> 4) << 6)
    scales[:, 4:8] = mn[:, :4] | ((mn[:, 4:] >> 4) << 6)
    scales[:, 8:12] = (sc[:, 4:] & 0x0F) | ((mn[:, 4:] & 0x0F) << 4)
    pairs = q.reshape(-1, 4, 2, 32)  # sub-blocks 2c and 2c+1 share 32 bytes: low and high nibbles
    qs = (pairs[:, :, 0] | (pairs[:, :, 1] << 4)).reshape(-1, 128)
    blocks = np.concatenate([_f16_bytes(d), _f16_bytes(dmin), scales, qs], axis=-1)
    return blocks.reshape(*shape[:-1], shape[-1] // QK_K * 144)


def quantize_q6_k(data: np.ndarray) -> np.ndarray:
    """``data`` (rows a multiple of 256 long) as Q6_K blocks: uint8 of shape (rows, row_len // 256 * 210)."""
    shape = data.shape
    x = _blocks(data).reshape(-1, 16, 16)
    scale = np.abs(x).max(axis=-1) / 31.0
    d = scale.max(axis=-1) / 127.0
    d16 = d.astype(np.float16).astype(np.float32)
    with np.errstate(divide="ignore", invalid="ignore"):
        sc = np.where(d16[:, None] > 0, np.ceil(scale / d16[:, None]), 0).clip(0, 127).astype(np.int8)
        step = (d16[:, None] * sc)[..., None]
        q = (np.where(step > 0, np.rint(x / step), 0).clip(-32, 31) + 32).astype(np.uint8).reshape(-1, 2, 128)
    low, high = q & 0x0F, q >> 4
    ql = (low[:, :, :64] | (low[:, :, 64:] << 4)).reshape(-1, 128)
    h = high.reshape(-1, 2, 4, 32)
    qh = (h[:, :, 0] | (h[:, :, 1] << 2) | (h[:, :, 2] << 4) | (h[:, :, 3] << 6)).reshape(-1, 64)
    blocks = np.concatenate([ql, qh, sc.view(np.uint8), _f16_bytes(d)], axis=-1)
    return blocks.reshape(*shape[:-1], shape[-1] // QK_K * 210)


def _more_bits(layer: int, layers: int) -> bool:
    """llama.cpp's ``use_more_bits``: the first and last eighth of the layers, and every third between."""
    return layer < layers // 8 or layer >= 7 * layers // 8 or (layer - layers // 8) % 3 == 2


def q4_k_m_type(name: str, columns: int, layers: int, tied: bool):
    """The ggml type llama.cpp's Q4_K_M gives the matrix ``name`` (a GGUF tensor name) of ``columns`` columns."""
    import gguf

    T = gguf.GGMLQuantizationType
    wanted = T.Q4_K
    if name == "output.weight" or (tied and name == "token_embd.weight"):
        wanted = T.Q6_K
    elif name.startswith("blk.") and name.endswith((".attn_v.weight", ".ffn_down.weight")):
        if _more_bits(int(name.split(".")[1]), layers):
            wanted = T.Q6_K
    if columns % QK_K:
        return {T.Q4_K: T.Q5_0, T.Q6_K: T.Q8_0}[wanted]
    return wanted


def quantize(data: np.ndarray, qtype) -> np.ndarray:
    import gguf

    T = gguf.GGMLQuantizationType
    if qtype == T.Q4_K:
        return quantize_q4_k(data)
    if qtype == T.Q6_K:
        return quantize_q6_k(data)
    return gguf.quants.quantize(data, qtype)
