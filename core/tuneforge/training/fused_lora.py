"""LoRA linear layers as one autograd node: the adapter's product lands in the base output.

peft computes ``base(x) + lora_B(lora_A(x)) * scaling`` as separate operations:
for each adapted layer the forward pass writes the adapter's full-width output,
scales it and adds it (three passes over a ``[tokens, out]`` tensor), and the
backward pass adds the two input gradients the same way. Here the adapter's
product accumulates into the base output inside the matrix product
(``addmm`` with ``beta=1``, ``alpha=scaling``), and the adapter's input gradient
into the base's, so only the small ``[tokens, rank]`` tensors are extra.

Only plain LoRA takes this path (one active adapter, no dropout, no DoRA or other
variant, not merged, an ``nn.Linear`` or bitsandbytes 4-bit base); every other
layer runs peft's own forward. The adapter weights stay where they are (float32
masters under mixed precision) and are cast to the compute dtype for the products.

A 4-bit base (QLoRA) is dequantized to the compute dtype for its product, as
bitsandbytes does for training batches, and again in the backward pass: only the
4-bit weight is kept between the two, never a dequantized copy. peft's 4-bit
layer also clones the base output before adding the adapter's; here neither
happens. The output is in the compute dtype, as an ``nn.Linear`` under autocast
gives it (bitsandbytes casts it back to the input's dtype, float32 where k-bit
preparation upcast the norms).
"""

from __future__ import annotations

import types

_FUNCTION = None


def _compute_dtype(x, weight_dtype):
    import torch

    if torch.is_autocast_enabled(x.device.type):
        return torch.get_autocast_dtype(x.device.type)
    return weight_dtype


def _dequantize(packed, quant_state):
    import bitsandbytes.functional as bnb_functional

    return bnb_functional.dequantize_4bit(packed, quant_state)


def _make_function():
    import torch

    class FusedLoRALinear(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x, weight, bias, lora_a, lora_b, scaling, quant_state=None):
            dtype = _compute_dtype(x, quant_state.dtype if quant_state is not None else weight.dtype)
            flat = x.reshape(-1, x.shape[-1]).to(dtype)
            a, b = lora_a.to(dtype), lora_b.to(dtype)
            w = (_dequantize(weight, quant_state) if quant_state is not None else weight).to(dtype)
            xa = flat @ a.t()
            out = torch.addmm(bias.to(dtype), flat, w.t()) if bias is not None else flat @ w.t()
            out.addmm_(xa, b.t(), alpha=scaling)
            # A 4-bit weight is kept packed and dequantized again for the backward pass.
            ctx.save_for_backward(flat, xa, a, b, weight if quant_state is not None else w)
            ctx.scaling, ctx.quant_state = scaling, quant_state
            ctx.shapes = (x.shape, x.dtype, lora_a.dtype, lora_b.dtype, weight.dtype)
            return out.view(*x.shape[:-1], out.shape[-1])

        @staticmethod
        def backward(ctx, grad_out):
            flat, xa, a, b, w = ctx.saved_tensors
            x_shape, x_dtype, a_dtype, b_dtype, w_dtype = ctx.shapes
            g = grad_out.reshape(-1, grad_out.shape[-1]).to(flat.dtype)
            grad_xa = (g @ b).mul_(ctx.scaling)
            grad_x = grad_a = grad_b = grad_w = grad_bias = None
            if ctx.needs_input_grad[0]:
                if ctx.quant_state is not None:
                    w = _dequantize(w, ctx.quant_state).to(flat.dtype)
                grad_x = (g @ w).addmm_(grad_xa, a).view(x_shape).to(x_dtype)
            if ctx.needs_input_grad[1]:
                grad_w = (g.t() @ flat).to(w_dtype)
            if ctx.needs_input_grad[2]:
                grad_bias = g.float().sum(0)
            if ctx.needs_input_grad[3]:
                grad_a = (grad_xa.t() @ flat).to(a_dtype)
            if ctx.needs_input_grad[4]:
                grad_b = (g.t() @ xa).mul_(ctx.scaling).to(b_dtype)
            return grad_x, grad_w, grad_bias, grad_a, grad_b, None, None

    return FusedLoRALinear


def _is_4bit(layer) -> bool:
    return type(layer).__name__ == "Linear4bit" and type(layer).__module__.startswith("bitsandbytes")


def _fused_forward(self, x, *args, **kwargs):
    import torch

    names = self.active_adapters
    if self.disable_adapters or self.merged or args or kwargs or len(names) != 1:
        return self._peft_forward(x, *args, **kwargs)
    name = names[0]
    base = self.base_layer
    four_bit = _is_4bit(base)
    if (
        name not in self.lora_A
        or name in getattr(self, "lora_variant", {})
        or not isinstance(self.lora_dropout[name], torch.nn.Identity)
        or not (type(base) is torch.nn.Linear or four_bit)
        or (four_bit and getattr(base.weight, "quant_state", None) is None)
    ):
        return self._peft_forward(x, *args, **kwargs)
    global _FUNCTION
    if _FUNCTION is None:
        _FUNCTION = _make_function()
    bias = base.bias
    if bias is not None and bias.requires_grad is False:
        bias = bias.detach()
    quant_state = base.weight.quant_state if four_bit else None
    weight = base.weight.data if four_bit else base.weight
    return _FUNCTION.apply(
        x, weight, bias, self.lora_A[name].weight, self.lora_B[name].weight, float(self.scaling[name]), quant_state
    )


def _lora_layer_types() -> tuple:
    types_ = []
    try:
        from peft.tuners.lora.layer import Linear as LoraLinear

        types_.append(LoraLinear)
    except ImportError:
        return ()
    try:
        from peft.tuners.lora.bnb import Linear4bit as LoraLinear4bit  # needs bitsandbytes

        types_.append(LoraLinear4bit)
    except (ImportError, AttributeError):
        pass
    return tuple(types_)


def enable(model) -> int:
    """Route every plain peft LoRA linear layer of ``model`` (full-precision or 4-bit base) through the fused layer; returns how many."""
    layer_types = _lora_layer_types()
    count = 0
    for module in model.modules():
        if type(module) in layer_types and not hasattr(module, "_peft_forward"):
            module._peft_forward = module.forward
            module.forward = types.MethodType(_fused_forward, module)
            count += 1
    return count
