"""Causal-LM loss without the full logits: the output layer and cross-entropy, chunk by chunk.

A 16K-token batch over a 152K-word vocabulary makes 2.3 G logits: 4.6 GB in bf16,
and 9.3 GB more once upcast to float32 for the loss, plus as much again for their
gradient. Here the last hidden states go through the output layer a chunk of
tokens at a time; each chunk's logits live only long enough to give the chunk's
loss and the gradients of the hidden states (and of the output weight, when it
trains). The gradients are computed during the forward pass, so nothing is
recomputed and the peak is one chunk's logits.

The value is the plain loss (transformers' ``ForCausalLMLoss``): the same bf16
product, upcast to float32, summed over the tokens that are not ``-100`` and
divided by ``num_items_in_batch`` when given, else by their count.

Under FSDP2 (``fully_shard``) the output layer's weight is read whole: accelerate
puts the output layer in a unit that stays gathered after the forward pass, and
where a unit was resharded (an older accelerate, or a root unit that reshards) it
is gathered again before the loss (``unsharded_head``). The weight's gradient
then lands on the gathered parameter, where FSDP's end-of-backward reduce-scatter
collects it like any other gradient of that unit.
"""

from __future__ import annotations

import contextlib

IGNORE_INDEX = -100


def _chunk_loss_and_grads(hidden, weight, bias, targets, scale, need_weight_grad):
    """One chunk's summed loss and gradients, holding a single float32 copy of its logits.

    ``torch.logsumexp`` and ``softmax`` would each allocate two more logits-sized
    buffers; here the maximum is subtracted and the exponential taken in place, so
    the buffer that held the logits ends up holding the gradient.
    """
    import torch

    logits = hidden @ weight.t()
    if bias is not None:
        logits = logits + bias
    logits = logits.float()
    valid = targets != IGNORE_INDEX
    safe = torch.where(valid, targets, 0)
    picked = logits.gather(1, safe[:, None])[:, 0]
    peak = logits.amax(dim=-1)
    exps = logits.sub_(peak[:, None]).exp_()
    total = exps.sum(dim=-1)
    log_z = peak + total.log()
    loss = ((log_z - picked) * valid).sum()
    # d(loss)/d(logits) = softmax - onehot on the valid rows, scaled like the loss.
    grad = exps.mul_((valid.to(exps.dtype) * scale / total)[:, None])
    grad.scatter_add_(1, safe[:, None], (valid.to(exps.dtype) * -scale)[:, None])
    grad = grad.to(hidden.dtype)
    grad_hidden = grad @ weight
    grad_weight = grad.t() @ hidden if need_weight_grad else None
    grad_bias = grad.float().sum(0) if bias is not None and need_weight_grad else None
    return loss, grad_hidden, grad_weight, grad_bias


def _make_function():
    import torch

    class ChunkedLinearCrossEntropy(torch.autograd.Function):
        @staticmethod
        def forward(ctx, hidden, weight, bias, targets, divisor, chunk_size):
            need_weight_grad = weight.requires_grad or (bias is not None and bias.requires_grad)
            scale = 1.0 / divisor
            total = torch.zeros((), dtype=torch.float32, device=hidden.device)
            grad_hidden = torch.empty_like(hidden)
            grad_weight = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if need_weight_grad else None
            grad_bias = None
            if bias is not None and need_weight_grad:
                grad_bias = torch.zeros(bias.shape, dtype=torch.float32, device=bias.device)
            for start in range(0, hidden.shape[0], chunk_size):
                end = min(start + chunk_size, hidden.shape[0])
                loss, g_hidden, g_weight, g_bias = _chunk_loss_and_grads(
                    hidden[start:end], weight, bias, targets[start:end], scale, need_weight_grad
                )
                total += loss
                grad_hidden[start:end] = g_hidden
                if grad_weight is not None:
                    grad_weight += g_weight.float()
                if grad_bias is not None:
                    grad_bias += g_bias
            ctx.grad_weight, ctx.grad_bias = grad_weight, grad_bias
            ctx.dtypes = (weight.dtype, None if bias is None else bias.dtype)
            ctx.save_for_backward(grad_hidden)
            return total * scale

        @staticmethod
        def backward(ctx, grad_output):
            (grad_hidden,) = ctx.saved_tensors
            grad_weight = grad_bias = None
            if ctx.grad_weight is not None:
                grad_weight = (ctx.grad_weight * grad_output).to(ctx.dtypes[0])
            if ctx.grad_bias is not None:
                grad_bias = (ctx.grad_bias * grad_output).to(ctx.dtypes[1])
            ctx.grad_weight = ctx.grad_bias = None
            return (grad_hidden * grad_output).to(grad_hidden.dtype), grad_weight, grad_bias, None, None, None

    return ChunkedLinearCrossEntropy


_FUNCTION = None


def chunked_causal_lm_loss(
    hidden, weight, labels, *, bias=None, num_items_in_batch=None, chunk_size: int = 2048, labels_shifted: bool = False,
    dtype=None,
):
    """The causal-LM loss of ``hidden @ weight.T (+ bias)`` against ``labels``, never holding all the logits.

    ``hidden`` is ``[batch, seq, dim]`` (the last hidden states), ``labels`` ``[batch, seq]``
    unshifted, as a model takes them: position ``t`` predicts ``labels[t + 1]``; with
    ``labels_shifted``, ``labels[t]`` is already position ``t``'s target (a slice of a
    row cut across processes, shifted before it was cut). ``dtype``: the products' dtype
    under mixed precision (the trainer's bf16, or the autocast dtype where the call runs
    under autocast); otherwise the output weight's.
    """
    import torch

    global _FUNCTION
    if _FUNCTION is None:
        _FUNCTION = _make_function()
    if chunk_size < 1:
        raise ValueError(f"chunk_size is {chunk_size}; it must be at least 1.")
    if dtype is None and torch.is_autocast_enabled(hidden.device.type):
        dtype = torch.get_autocast_dtype(hidden.device.type)
    if dtype is not None:
        # Mixed precision: the products run in its dtype whatever the weights' (float32 master
        # weights of a trained output layer get their gradient back in float32 through the cast).
        hidden, weight = hidden.to(dtype), weight.to(dtype)
        bias = None if bias is None else bias.to(dtype)
    elif hidden.dtype != weight.dtype:  # mixed precision hands the model's outputs over in float32
        hidden = hidden.to(weight.dtype)
    shifted = labels if labels_shifted else torch.nn.functional.pad(labels, (0, 1), value=IGNORE_INDEX)[..., 1:]
    flat_hidden = hidden.reshape(-1, hidden.shape[-1])
    targets = shifted.reshape(-1).to(hidden.device)
    if num_items_in_batch is None:
        divisor = float(max(int((targets != IGNORE_INDEX).sum()), 1))
    else:
        divisor = float(num_items_in_batch)
    if not torch.is_grad_enabled() or not (hidden.requires_grad or weight.requires_grad):
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        for start in range(0, flat_hidden.shape[0], chunk_size):
            logits = flat_hidden[start : start + chunk_size] @ weight.t()
            if bias is not None:
                logits = logits + bias
            total += torch.nn.functional.cross_entropy(
                logits.float(), targets[start : start + chunk_size], ignore_index=IGNORE_INDEX, reduction="sum"
            )
        return total / divisor
    return _FUNCTION.apply(flat_hidden, weight, bias, targets, divisor, chunk_size)


def output_layer(model):
    """The plain linear output layer of a causal LM (through tuner and parallel wrappers), or None.

    None where the model changes its logits after the output layer (soft-capping, a
    logit scale) or where a tuner wrapped the output layer itself: those keep the
    plain loss.
    """
    import torch

    inner = model
    for _ in range(4):  # DDP .module, peft .base_model.model
        if hasattr(inner, "get_base_model"):
            inner = inner.get_base_model()
        elif hasattr(inner, "module") and isinstance(inner.module, torch.nn.Module):
            inner = inner.module
        else:
            break
    get = getattr(inner, "get_output_embeddings", None)
    head = get() if get else None
    if _unwrapped_class(head) is not torch.nn.Linear:
        return None
    config = getattr(inner, "config", None)
    for attribute in ("final_logit_softcapping", "logit_scale", "logits_scaling", "output_multiplier_scale"):
        if getattr(config, attribute, None) not in (None, 1, 1.0):
            return None
    return head


def _unwrapped_class(module):
    """The class of ``module`` without FSDP2's wrapper class (``fully_shard`` makes a ``Linear`` an ``FSDPLinear``)."""
    from torch.distributed.fsdp import FSDPModule

    return next((c for c in type(module).__mro__ if not issubclass(c, FSDPModule)), None)


def _fsdp_owner(model, head):
    """The FSDP2 unit that holds ``head``'s weight: ``head`` itself or its nearest sharded ancestor (None: not sharded)."""
    from torch.distributed.fsdp import FSDPModule

    if isinstance(head, FSDPModule):
        return head
    for name, module in model.named_modules():
        if module is head:
            parts = name.split(".") if name else []
            owner = model if isinstance(model, FSDPModule) else None
            node = model
            for part in parts[:-1]:
                node = getattr(node, part)
                if isinstance(node, FSDPModule):
                    owner = node
            return owner
    return None


def unsharded_head(model, head):
    """``head``'s weight and bias as whole tensors, after a forward pass of ``model``.

    Outside FSDP2 these are the parameters themselves. Under FSDP2 a unit that
    resharded after its forward pass holds only this process's piece (a ``DTensor``):
    it is gathered again here, and stays gathered until FSDP's end-of-backward
    callback reduce-scatters the gradients of that unit and reshards it.
    """
    from torch.distributed.tensor import DTensor

    if isinstance(head.weight, DTensor):
        owner = _fsdp_owner(model, head)
        if owner is None:
            raise RuntimeError("the output layer's weight is sharded outside any FSDP unit; run with --no-chunked-loss.")
        owner.unshard()
    if isinstance(head.weight, DTensor):
        raise RuntimeError("the output layer's weight stayed sharded after its FSDP unit was gathered; run with --no-chunked-loss.")
    return head.weight, head.bias


@contextlib.contextmanager
def head_returns_hidden(head):
    """While inside, ``head`` passes its input through: the model's "logits" are its last hidden states."""
    head.forward = lambda hidden: hidden
    try:
        yield
    finally:
        del head.forward
