"""Sequence parallelism for long samples: Ulysses-style, an all-to-all over the attention heads.

One packed row too long for one device is trained by a *sequence group* of ``N``
processes (``--sequence-parallel-size N``); the processes of a run form
``world / N`` groups, consecutive ranks together, and the groups are data parallel
to one another (each group trains its own rows; gradients are averaged by the
backend, ``ddp``, over every process).

Data flow of one step, on each rank ``r`` of a group::

    the group's row (the same on its N ranks: the loader is sharded by groups, not by processes)
      │  labels shifted first (position t's target is token t+1), so no target is lost at a cut
      ▼  input_ids, position_ids, targets cut into N contiguous slices; rank r keeps slice r;
         cu_seq_lens (the packed samples' bounds) stay those of the whole row
    embeddings, norms, MLPs, rotary embeddings (from the true position ids): local slice only
    each attention layer:  q, k, v [local tokens, all heads]
      ──all-to-all──▶ [all tokens, heads / N]   (k/v heads repeated up to the query heads
                                                 where there are fewer of them than N)
      the core's varlen attention over the whole row, each sample's own causal triangle
      ──all-to-all──▶ [local tokens, all heads]  then the output projection, locally
    the loss of the local slice: its summed cross-entropy divided by the global count of
    target tokens (the Trainer's ``num_items_in_batch``, counted once per group)

The all-to-all is a ``torch.autograd.Function`` whose backward is the reverse
all-to-all (``torch.distributed.all_to_all_single``: NCCL and, in this PyTorch, gloo
too), so each rank's backward sends the gradients of the other ranks' tokens back to
them. Its parameters' gradients are then the derivatives of the *group's* summed loss
through what this rank computed; the whole gradient is their sum over the group. The
backend averages over all ``world`` processes, so each rank's loss is scaled by
``world`` (the Trainer's own convention for a token-weighted loss): the average of the
scaled gradients is exactly the sum over groups and ranks, divided by the global token
count — the gradient of one process training the same rows. The logged loss, the
Trainer's mean over processes of these scaled losses, is the sum of every rank's part
divided by the global count: the single-process loss.

What it needs (``check`` refuses the rest in one sentence, before any weights load):
packed rows (``--packing``) with the core's varlen attention (``tuneforge_varlen``); a
method whose trainer is the core's (sft); a backend that launches processes and keeps
the whole model on each (``ddp``); a text-only model family whose attention goes through
transformers' attention interface; query heads divisible by ``N``; a process count
divisible by ``N``. The collator pads each row to a multiple of ``N`` (a filler sample
that learns nothing). Evaluation runs without it: each process evaluates its own rows
whole.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import Any

from tuneforge.errors import TuneforgeError

ATTENTION = "tuneforge_varlen_ulysses"
IGNORE_INDEX = -100


@dataclass
class SequenceGroup:
    """This process's sequence group: ``size`` ranks holding one row, this one ``rank`` among them;
    the group is ``data_rank`` of ``data_size`` data-parallel groups."""

    group: Any
    size: int
    rank: int
    data_rank: int
    data_size: int


_ACTIVE: list[SequenceGroup] = []  # the group whose attention is cut, while a training step runs


def process_count(config) -> int:
    """The processes the run will have: the launcher's ``WORLD_SIZE``, else ``--nproc-per-node`` (x ``--nnodes``)."""
    if "WORLD_SIZE" in os.environ:
        return int(os.environ["WORLD_SIZE"])
    return int(config.nproc_per_node) * int(getattr(config, "nnodes", 1) or 1)


def check(config, method, backend, family=None, hf_config=None, processes: int | None = None) -> None:
    """Refuse, in one sentence each, a ``--sequence-parallel-size`` that cannot work (no weights needed);
    ``processes``: the run's process count (default: ``process_count``)."""
    from .attention import VARLEN

    size = int(getattr(config, "sequence_parallel_size", 1) or 1)
    flag = f"--sequence-parallel-size {size}"
    if size < 1:
        raise TuneforgeError(f"--sequence-parallel-size is {size}; it must be at least 1.")
    if size == 1:
        return
    if not getattr(method, "supports_sequence_parallel", False):
        raise TuneforgeError(f"{flag} is not supported by --method {method.name}, whose trainer does not cut rows across processes; leave it out.")
    processes = processes or process_count(config)
    if processes % size:
        raise TuneforgeError(f"{flag} must divide the number of processes ({processes}); use --nproc-per-node {size} or a multiple of it.")
    if getattr(backend, "shards_parameters", False) or backend.launch_command(2) is None:
        raise TuneforgeError(
            f"{flag} needs a backend that launches processes and keeps the whole model on each; "
            f"--parallel-backend {backend.name} does not: use --parallel-backend ddp."
        )
    if config.packing is False:
        raise TuneforgeError(f"{flag} cuts packed rows across processes; leave out --no-packing.")
    if config.attn_implementation not in (None, VARLEN):
        raise TuneforgeError(
            f"{flag} runs on the core's varlen attention; --attn-implementation {config.attn_implementation} cannot be "
            f"cut over heads: use --attn-implementation {VARLEN} or leave it out."
        )
    if family is not None and getattr(family, "load_processor", None) is not None:
        raise TuneforgeError(f"{flag} cuts text rows only; the '{family.name}' family's samples carry images: leave it out.")
    if family is not None and getattr(family, "attn_implementation", None) not in (None, VARLEN):
        raise TuneforgeError(
            f"{flag} runs on the core's varlen attention, but the '{family.name}' family loads its models with "
            f"'{family.attn_implementation}'; leave --sequence-parallel-size out for this family."
        )
    text_config = hf_config.get_text_config() if hasattr(hf_config, "get_text_config") else hf_config
    heads = getattr(text_config, "num_attention_heads", None)
    if heads is not None and heads % size:
        raise TuneforgeError(
            f"{flag} must divide the model's {heads} attention heads (each process attends with heads / {size}); "
            f"use a size that divides {heads}."
        )


def resolve_defaults(config) -> dict:
    """The fast-path choices a sequence-parallel run needs where the user left them unset: packed rows, varlen attention."""
    from .attention import VARLEN

    if int(getattr(config, "sequence_parallel_size", 1) or 1) <= 1:
        return {}
    changes = {}
    if config.packing is None:
        changes["packing"] = True
    if config.attn_implementation is None:
        changes["attn_implementation"] = VARLEN
    return changes


def new_groups(size: int) -> SequenceGroup:
    """Create the run's sequence groups (every process calls this, in the same order) and return this process's."""
    import torch.distributed as dist

    world, rank = dist.get_world_size(), dist.get_rank()
    if world % size:
        raise TuneforgeError(f"--sequence-parallel-size {size} must divide the number of processes ({world}).")
    mine = None
    for index in range(world // size):
        ranks = list(range(index * size, (index + 1) * size))
        group = dist.new_group(ranks)
        if rank in ranks:
            mine = SequenceGroup(group=group, size=size, rank=rank - ranks[0], data_rank=index, data_size=world // size)
    return mine


def use_on(model) -> int:
    """Point the causal attention of ``model`` (loaded with the varlen attention) at ``ATTENTION``; returns how
    many configs changed. Refuses a model whose attention does not go through transformers' attention interface."""
    from transformers import AttentionInterface, PretrainedConfig, PreTrainedModel

    from .attention import VARLEN

    AttentionInterface.register(ATTENTION, ulysses_attention_forward)
    changed = 0
    for module in model.modules():
        if not isinstance(module, PreTrainedModel):
            continue
        if not getattr(type(module), "_supports_attention_backend", False):
            raise TuneforgeError(
                f"--sequence-parallel-size cannot cut the attention of {type(module).__name__}, which does not go "
                f"through transformers' attention interface; leave --sequence-parallel-size out for this model."
            )
        config = getattr(module, "config", None)
        if isinstance(config, PretrainedConfig) and getattr(config, "_attn_implementation", None) == VARLEN:
            config._attn_implementation_internal = ATTENTION  # this config only: a vision sub-config keeps its own
            changed += 1
    if not changed:
        raise TuneforgeError(f"--sequence-parallel-size needs the model loaded with the {VARLEN} attention; none of its configs uses it.")
    return changed


@contextlib.contextmanager
def cutting(group: SequenceGroup):
    """While inside, ``ATTENTION`` exchanges heads across ``group`` (forward, and the recomputed forward of
    gradient checkpointing during the backward pass); outside, it is the plain varlen attention."""
    _ACTIVE.append(group)
    try:
        yield
    finally:
        _ACTIVE.pop()


def _exchange(tensor, group, scatter_dim: int, gather_dim: int):
    """``tensor`` cut in ``size`` pieces along ``scatter_dim``, piece j sent to rank j; the pieces received,
    joined along ``gather_dim`` in rank order."""
    import torch
    import torch.distributed as dist

    size = dist.get_world_size(group)
    send = torch.stack([piece.contiguous() for piece in tensor.chunk(size, dim=scatter_dim)])
    received = torch.empty_like(send)
    dist.all_to_all_single(received, send, group=group)
    return torch.cat(received.unbind(0), dim=gather_dim)


def _make_function():
    import torch

    class AllToAll(torch.autograd.Function):
        @staticmethod
        def forward(ctx, tensor, group, scatter_dim, gather_dim):
            ctx.group, ctx.dims = group, (scatter_dim, gather_dim)
            return _exchange(tensor, group, scatter_dim, gather_dim)

        @staticmethod
        def backward(ctx, grad):
            scatter_dim, gather_dim = ctx.dims
            return _exchange(grad, ctx.group, gather_dim, scatter_dim), None, None, None

    return AllToAll


_FUNCTION = None


def all_to_all(tensor, group, scatter_dim: int, gather_dim: int):
    """The differentiable all-to-all: cut along ``scatter_dim`` across the group, join along ``gather_dim``;
    its backward is the reverse exchange."""
    global _FUNCTION
    if _FUNCTION is None:
        _FUNCTION = _make_function()
    return _FUNCTION.apply(tensor, group, scatter_dim, gather_dim)


def ulysses_attention_forward(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """A transformers attention function: ``[1, heads, local tokens, dim]`` in, ``[1, local tokens, heads, dim]``
    out, attention over the group's whole row. Outside ``cutting`` (evaluation), the plain varlen attention."""
    from .attention import varlen_attention_forward

    if not _ACTIVE or getattr(module, "is_causal", True) is False or key.shape[2] != query.shape[2]:
        return varlen_attention_forward(module, query, key, value, attention_mask, scaling=scaling, dropout=dropout, **kwargs)
    group = _ACTIVE[-1]
    heads, kv_heads = query.shape[1], key.shape[1]
    if heads % group.size:
        raise TuneforgeError(f"--sequence-parallel-size {group.size} must divide the model's {heads} attention heads.")
    if kv_heads % group.size:  # fewer key/value heads than processes: each query head gets its own copy
        key = key.repeat_interleave(heads // kv_heads, dim=1)
        value = value.repeat_interleave(heads // kv_heads, dim=1)
    if kwargs.get("cu_seq_lens_q") is None:
        raise TuneforgeError("A sequence-parallel step needs the row's sample bounds (cu_seq_lens_q); the batch has none.")
    kwargs.pop("position_ids", None)  # the local slice's: the bounds above are the whole row's
    query, key, value = (all_to_all(t, group.group, scatter_dim=1, gather_dim=2) for t in (query, key, value))
    out, _ = varlen_attention_forward(module, query, key, value, None, scaling=scaling, dropout=dropout, **kwargs)
    return all_to_all(out, group.group, scatter_dim=1, gather_dim=2), None


def local_batch(inputs: dict, group: SequenceGroup) -> tuple[dict, Any, int]:
    """This rank's slice of a packed row: the model inputs (the whole row's sample bounds kept), the slice's
    targets (labels already shifted) and the count of target tokens in the whole row."""
    import torch

    from .attention import boundaries_from_positions

    unknown = set(inputs) - {"input_ids", "labels", "position_ids", "use_cache", "cu_seq_lens_q", "cu_seq_lens_k",
                             "max_length_q", "max_length_k"}
    if unknown or "position_ids" not in inputs or inputs["input_ids"].shape[0] != 1:
        raise TuneforgeError(
            f"A sequence-parallel step takes one packed text row (input_ids, labels, position_ids); this batch has "
            f"{inputs['input_ids'].shape[0]} rows and {sorted(inputs)}: train with --packing on text samples."
        )
    total = inputs["input_ids"].shape[1]
    if total % group.size:
        raise TuneforgeError(f"The packed row has {total} tokens, not a multiple of --sequence-parallel-size {group.size}.")
    labels = inputs["labels"]
    targets = torch.nn.functional.pad(labels, (0, 1), value=IGNORE_INDEX)[..., 1:]  # before cutting: none lost at a cut
    count = int((targets != IGNORE_INDEX).sum())
    width = total // group.size
    cut = slice(group.rank * width, (group.rank + 1) * width)
    local = {key: value for key, value in inputs.items() if key != "labels"}
    if local.get("cu_seq_lens_q") is None:
        bounds = boundaries_from_positions(inputs["position_ids"])
        longest = int((bounds[1:] - bounds[:-1]).max())
        local.update(cu_seq_lens_q=bounds, cu_seq_lens_k=bounds, max_length_q=longest, max_length_k=longest)
    local["input_ids"] = inputs["input_ids"][:, cut]
    local["position_ids"] = inputs["position_ids"][:, cut]
    return local, targets[:, cut], count
