"""Gradient-checkpointing policies: what a checkpointed layer keeps and what it recomputes.

``full`` keeps only each layer's input and recomputes the whole layer in the
backward pass (the least memory). ``selective`` keeps the output of the attention
kernel too, so the backward pass recomputes the projections, norms and MLP but
not attention, whose cost grows with the square of the sample's length: for long
samples it buys back most of the attention time for one ``[tokens, hidden]``
tensor a layer.
"""

from __future__ import annotations

import functools

POLICIES = ("full", "selective")


def _is_attention_op(op) -> bool:
    name = str(op)
    return "attention" in name or "attn" in name


def _keep_attention(ctx, op, *args, **kwargs):
    from torch.utils.checkpoint import CheckpointPolicy

    return CheckpointPolicy.MUST_SAVE if _is_attention_op(op) else CheckpointPolicy.PREFER_RECOMPUTE


def checkpoint_kwargs(policy: str) -> dict:
    """Keyword arguments for ``torch.utils.checkpoint.checkpoint`` under ``policy``."""
    if policy not in POLICIES:
        raise ValueError(f"checkpointing policy '{policy}' is unknown; choose one of {', '.join(POLICIES)}.")
    kwargs: dict = {"use_reentrant": False}
    if policy == "selective":
        from torch.utils.checkpoint import create_selective_checkpoint_contexts

        kwargs["context_fn"] = functools.partial(create_selective_checkpoint_contexts, _keep_attention)
    return kwargs
