"""Run under torchrun (2 processes, gloo) by tests/test_sequence_parallel.py; rank 0 writes the results as JSON.

1. The all-to-all against a reference built from plain all_gather: its output, and the
   gradient its backward hands each rank.
2. One packed row of three samples through a tiny random Llama (float32): the loss and
   gradients of the row cut across the 2 processes (summed over them) against the same
   model on the whole row in one process, with transformers' own sdpa attention and loss.
   Twice: 2 key/value heads (each process takes one) and 1 (repeated up to the query heads).
"""

import json
import sys

import torch
import torch.distributed as dist

from tuneforge.training import attention, sequence_parallel
from tuneforge.training.loss import chunked_causal_lm_loss


def all_to_all_errors(group, size, rank):
    torch.manual_seed(rank)
    x = torch.randn(1, 4, 6, 3, requires_grad=True)  # [batch, heads, local tokens, dim]
    weight = torch.randn(1, 4 // size, 6 * size, 3)  # a different loss weight on each rank
    y = sequence_parallel.all_to_all(x, group.group, scatter_dim=1, gather_dim=2)
    (y * weight).sum().backward()
    xs = [torch.empty_like(x) for _ in range(size)]
    weights = [torch.empty_like(weight) for _ in range(size)]
    dist.all_gather(xs, x.detach())
    dist.all_gather(weights, weight)
    heads = 4 // size
    # rank r holds heads [r*h, (r+1)*h) of every rank's tokens, in rank order
    expected = torch.cat([xs[i][:, rank * heads:(rank + 1) * heads] for i in range(size)], dim=2)
    # x's head block j went to rank j, at token block `rank`: its gradient is rank j's weight there
    expected_grad = torch.cat([weights[j][:, :, rank * 6:(rank + 1) * 6] for j in range(size)], dim=1)
    return float((y.detach() - expected).abs().max()), float((x.grad - expected_grad).abs().max()), list(y.shape)


def packed_row(vocab):
    generator = torch.Generator().manual_seed(3)
    lengths = [21, 30, 13]  # 64 tokens: the cuts (at 32) fall inside the second sample
    ids = torch.randint(0, vocab, (sum(lengths),), generator=generator)
    positions = torch.cat([torch.arange(n) for n in lengths])
    labels = ids.clone()
    start = 0
    for n in lengths:  # as the packing collator: no target at a sample's first token, and a "prompt" learned nowhere
        labels[start:start + 1 + n // 3] = -100
        start += n
    bounds = torch.tensor([0, *lengths]).cumsum(0).to(torch.int32)
    return {
        "input_ids": ids[None], "labels": labels[None], "position_ids": positions[None],
        "use_cache": False, "cu_seq_lens_q": bounds, "cu_seq_lens_k": bounds, "max_length_q": max(lengths), "max_length_k": max(lengths),
    }


def loss_and_grads(group, kv_heads):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=kv_heads, max_position_embeddings=128)
    model = LlamaForCausalLM(config).float()
    model.config._attn_implementation = "sdpa"
    row = packed_row(config.vocab_size)
    # the reference: one process, the whole row, transformers' packed sdpa path and its own loss
    # (use_cache=False: with a cache transformers does not look for the packed samples in the position ids)
    plain = {**{k: row[k] for k in ("input_ids", "labels", "position_ids")}, "use_cache": False}
    reference = model(**plain).loss
    reference.backward()
    expected = {name: p.grad.clone() for name, p in model.named_parameters()}
    model.zero_grad()

    attention.register()
    model.config._attn_implementation = attention.VARLEN
    sequence_parallel.use_on(model)
    with sequence_parallel.cutting(group):
        local, targets, count = sequence_parallel.local_batch(row, group)
        hidden = model.model(**local).last_hidden_state
        loss = chunked_causal_lm_loss(hidden, model.lm_head.weight, targets, num_items_in_batch=count, labels_shifted=True)
        loss.backward()
    total = loss.detach().clone()
    dist.all_reduce(total, group=group.group)  # the group's loss: the sum of its ranks' parts
    worst = 0.0
    for name, p in model.named_parameters():
        grad = p.grad.clone()
        dist.all_reduce(grad, group=group.group)  # the row's gradient: the sum of its ranks' parts
        worst = max(worst, float((grad - expected[name]).abs().max() / expected[name].abs().max()))
    return {"loss": float(total), "reference": float(reference.detach()), "local_tokens": int(local["input_ids"].shape[1]),
            "count": count, "grad_error": worst, "grads": len(expected)}


def main(out):
    dist.init_process_group("gloo")
    torch.set_num_threads(1)
    size, rank = dist.get_world_size(), dist.get_rank()
    group = sequence_parallel.new_groups(size)
    result = {"all_to_all": all_to_all_errors(group, size, rank)}
    for kv_heads in (2, 1):
        result[f"kv{kv_heads}"] = loss_and_grads(group, kv_heads)
    if rank == 0:
        with open(out, "w") as handle:
            json.dump(result, handle)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
