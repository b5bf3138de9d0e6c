"""SwiGLU and rotary embeddings as compiled kernels, one each way.

Two element-wise stretches of every Llama-style decoder layer run as several
kernels each in eager PyTorch, and with gradient checkpointing the forward ones
run twice:

- the MLP's ``act_fn(gate_proj(x)) * up_proj(x)`` with SiLU: an activation and a
  product forward (two passes over ``[tokens, intermediate]`` tensors, the widest
  of the model), three products backward; compiled, one kernel each way, and the
  activation's output is recomputed in the backward kernel instead of kept;
- ``apply_rotary_pos_emb``: for the queries and the keys, a product, a negation,
  a concatenation, another product and a sum; compiled, one kernel each way.

``torch.compile`` fuses the same formulas (it keeps the intermediate values in
float32 where eager rounds each to bf16, so results agree to bf16 rounding). Only
modules whose code is those formulas (read from their source) are changed, each
module on its own: the rotary function is swapped in a copy of the attention
module's ``forward`` bound to that module, never in transformers' module.
"""

from __future__ import annotations

import inspect
import types

_SWIGLU_SOURCE = "self.down_proj(self.act_fn(self.gate_proj(x)) * self.up_proj(x))"
_ROPE_SOURCE = ("(q * cos) + (rotate_half(q) * sin)", "(k * cos) + (rotate_half(k) * sin)")
_ROTATE_HALF_SOURCE = ("x1=x[...,:x.shape[-1]//2]", "x2=x[...,x.shape[-1]//2:]", "returntorch.cat((-x2,x1),dim=-1)")
_COMPILED: dict = {}


def swiglu(gate, up):
    """SiLU of the gate times the up projection."""
    import torch

    return torch.nn.functional.silu(gate) * up


def rotary(q, k, cos, sin, unsqueeze_dim: int = 1):
    """transformers' ``apply_rotary_pos_emb``: the same operations in the same order."""
    import torch

    cos = cos.unsqueeze(unsqueeze_dim)
    sin = sin.unsqueeze(unsqueeze_dim)
    half = q.shape[-1] // 2
    q_rotated = torch.cat((-q[..., half:], q[..., :half]), dim=-1)
    k_rotated = torch.cat((-k[..., half:], k[..., :half]), dim=-1)
    return (q * cos) + (q_rotated * sin), (k * cos) + (k_rotated * sin)


def source_of(function) -> str:
    """A function's source, or an empty string where it has none to read."""
    try:
        return inspect.getsource(function)
    except (OSError, TypeError):
        return ""


def compiled(function, backend: str = "inductor"):
    """``function`` compiled with dynamic shapes, once per backend."""
    import torch

    key = (function.__name__, backend)
    if key not in _COMPILED:
        _COMPILED[key] = torch.compile(function, dynamic=True, backend=backend)
    return _COMPILED[key]


def is_swiglu_mlp(module) -> bool:
    """A gate/up/down MLP whose forward is ``down(silu(gate(x)) * up(x))``."""
    forward = getattr(type(module), "forward", None)
    if forward is None or not all(hasattr(module, name) for name in ("gate_proj", "up_proj", "down_proj", "act_fn")):
        return False
    return _SWIGLU_SOURCE in source_of(forward) and _is_silu(module.act_fn)


def _is_silu(activation) -> bool:
    """torch's SiLU, or transformers' module whose forward is ``silu`` of its input."""
    import torch

    if type(activation) is torch.nn.SiLU:
        return True
    forward = getattr(type(activation), "forward", None)
    source = source_of(forward) if forward is not None else ""
    return type(activation).__name__ == "SiLUActivation" and "functional.silu(input)" in source


def _rope_function(module):
    """The module-level ``apply_rotary_pos_emb`` an attention module's forward calls, if it is the standard one.

    Standard: ``(q * cos) + (rotate_half(q) * sin)`` (and the same for ``k``) with
    the signature ``(q, k, cos, sin, unsqueeze_dim=1)``, where ``rotate_half``
    swaps the two halves of the head dimension; models that rotate interleaved
    pairs (Cohere) or part of the head keep their own.
    """
    forward = getattr(type(module), "forward", None)
    if forward is None or inspect.unwrap(forward) is not forward or "apply_rotary_pos_emb(" not in source_of(forward):
        return None  # (a decorated forward's code is the decorator's, not the module's)
    scope = forward.__globals__
    function, rotate_half = scope.get("apply_rotary_pos_emb"), scope.get("rotate_half")
    if function is None or rotate_half is None:
        return None
    try:
        names = list(inspect.signature(function).parameters)
    except (TypeError, ValueError):
        return None
    body, rotate = source_of(function), "".join(source_of(rotate_half).split())
    standard = (
        names == ["q", "k", "cos", "sin", "unsqueeze_dim"]
        and all(piece in body for piece in _ROPE_SOURCE)
        and all(piece in rotate for piece in _ROTATE_HALF_SOURCE)
    )
    return function if standard else None


def _swiglu_forward(self, x):
    return self.down_proj(self._fused_swiglu(self.gate_proj(x), self.up_proj(x)))


def enable_swiglu(model, backend: str = "inductor", function=None) -> int:
    """Route every SiLU-gated MLP of ``model`` through the compiled product (or ``function``, a
    device's own ``swiglu(gate, up)``); returns how many."""
    function = function or compiled(swiglu, backend)
    count = 0
    for module in model.modules():
        if is_swiglu_mlp(module) and not hasattr(module, "_fused_swiglu"):
            module._fused_swiglu = function
            module.forward = types.MethodType(_swiglu_forward, module)
            count += 1
    return count


def enable_rotary(model, backend: str = "inductor", function=None) -> int:
    """Give every attention module that applies the standard rotary embedding the compiled one (or
    ``function``, a device's own with ``apply_rotary_pos_emb``'s signature); returns how many."""
    function = function or compiled(rotary, backend)
    copies: dict = {}
    count = 0
    for module in model.modules():
        if "_rotary_forward" in vars(module) or _rope_function(module) is None:
            continue
        forward = type(module).forward
        if forward not in copies:
            scope = dict(forward.__globals__, apply_rotary_pos_emb=function)
            copy = types.FunctionType(forward.__code__, scope, forward.__name__, forward.__defaults__, forward.__closure__)
            copy.__kwdefaults__ = forward.__kwdefaults__
            copies[forward] = copy
        module._rotary_forward = copies[forward]
        module.forward = types.MethodType(copies[forward], module)
        count += 1
    return count
