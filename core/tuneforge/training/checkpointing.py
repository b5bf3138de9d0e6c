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


def language_input_grads(model):
    """Make ``enable_input_require_grads`` of ``model`` hook the language model's input embeddings only.

    With gradient checkpointing and a frozen base, transformers (and peft) call
    ``enable_input_require_grads``, which hooks the input embeddings of every
    ``PreTrainedModel`` inside the model: in a vision-language model the vision tower's
    patch embedding too, so its output requires a gradient and the backward pass runs
    through every block of a frozen tower for gradients nothing uses. Here the hook goes
    on ``model.get_input_embeddings()`` alone (the language model's token embeddings).
    tuneforge checkpoints without reentrance (``use_reentrant=False``), so a tower that
    trains (whole, or its LoRA adapters) gets its gradients from its own parameters, with
    no hook on its input. ``model`` is the transformers model or a peft wrapper of it;
    hooks set before are replaced. A model without ``get_input_embeddings`` keeps
    transformers' behaviour. Returns the transformers model.
    """
    import types

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    try:
        embeddings = base.get_input_embeddings()
    except (NotImplementedError, AttributeError):
        return base
    if not hasattr(embeddings, "register_forward_hook"):
        return base

    def enable_input_require_grads(self):
        # Removing a hook twice is harmless; older transformers keep only `_require_grads_hook`.
        for hook in [*(getattr(self, "_require_grads_hooks", None) or []), getattr(self, "_require_grads_hook", None)]:
            if hook is not None:
                hook.remove()

        def require_grads(module, args, output):
            output.requires_grad_(True)

        hook = self.get_input_embeddings().register_forward_hook(require_grads)
        self._require_grads_hooks = [hook]
        self._require_grads_hook = hook

    had_hooks = bool(getattr(base, "_require_grads_hooks", None) or getattr(base, "_require_grads_hook", None))
    base.enable_input_require_grads = types.MethodType(enable_input_require_grads, base)
    if had_hooks:
        base.enable_input_require_grads()
    return base
