"""On a real Ascend NPU: each fused operator tuneforge-ascend uses against the formula it replaces, forward and backward.

Run by npu_check.sh (docs/ascend.md, "A first run on a 910B"); needs torch_npu and an NPU.
Prints one line per operator with the largest difference, and exits non-zero if one is off.
"""

import sys

import torch
import torch_npu  # noqa: F401

from tuneforge_ascend import npu


def compare(name, fused, plain, inputs, tolerance=3e-2):
    leaves = [t.detach().clone().requires_grad_(t.is_floating_point()) for t in inputs]
    copies = [t.detach().clone().requires_grad_(t.is_floating_point()) for t in inputs]
    out_f, out_p = fused(*leaves), plain(*copies)
    out_f = out_f if isinstance(out_f, tuple) else (out_f,)
    out_p = out_p if isinstance(out_p, tuple) else (out_p,)
    sum(o.float().sum() for o in out_f).backward()
    sum(o.float().sum() for o in out_p).backward()
    worst = max((a.float() - b.float()).abs().max().item() for a, b in zip(out_f, out_p))
    grads = [(a.grad, b.grad) for a, b in zip(leaves, copies) if a.grad is not None]
    worst_grad = max(((a.float() - b.float()).abs().max().item() for a, b in grads), default=0.0)
    ok = worst < tolerance and worst_grad < tolerance * 10
    print(f"{'ok' if ok else 'OFF':<4} {name}: output {worst:.2e}, gradients {worst_grad:.2e}")
    return ok


def plain_attention(query, key, value, cu_seqlens, max_len, scale, causal):
    outputs = []
    bounds = cu_seqlens.tolist()
    for start, end in zip(bounds[:-1], bounds[1:]):
        q, k, v = (t[start:end].transpose(0, 1)[None] for t in (query, key, value))
        out = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=causal, scale=scale, enable_gqa=True)
        outputs.append(out[0].transpose(0, 1))
    return torch.cat(outputs)


def main() -> int:
    assert torch.npu.is_available(), "no NPU"
    device, dtype = "npu", torch.bfloat16
    torch.manual_seed(0)
    have = npu.provided()
    print("torch_npu provides:", ", ".join(f"{k} ({v})" for k, v in have.items()) or "none of them")
    results = []
    hidden, weight = torch.randn(4, 512, 3584, device=device, dtype=dtype), torch.randn(3584, device=device, dtype=dtype)
    results.append(compare("npu_rms_norm", lambda h, w: npu.rms_norm(h, w, 1e-6), lambda h, w: npu._rms_norm_formula(h, w, 1e-6), [hidden, weight]))
    gate, up = (torch.randn(4, 512, 18944, device=device, dtype=dtype) for _ in range(2))
    results.append(compare("npu_swiglu", npu.swiglu, npu._plain_swiglu, [gate, up]))
    q, k = torch.randn(2, 28, 512, 128, device=device, dtype=dtype), torch.randn(2, 4, 512, 128, device=device, dtype=dtype)
    cos, sin = torch.randn(2, 512, 128, device=device, dtype=dtype), torch.randn(2, 512, 128, device=device, dtype=dtype)
    results.append(compare("npu_rotary_mul", lambda *t: npu.rotary(*t), lambda *t: npu._plain_rotary(*t), [q, k, cos, sin]))
    lengths = [700, 2500, 96, 800]  # one sample longer than the 2048 x 2048 compressed mask
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32)
    total = sum(lengths)
    query = torch.randn(total, 28, 128, device=device, dtype=dtype)
    key, value = (torch.randn(total, 4, 128, device=device, dtype=dtype) for _ in range(2))
    for causal in (True, False):
        results.append(compare(
            f"npu_fusion_attention (TND, grouped queries, causal={causal})",
            lambda a, b, c: npu.varlen_attention(a, b, c, cu, max(lengths), 128 ** -0.5, causal),
            lambda a, b, c: plain_attention(a, b, c, cu, max(lengths), 128 ** -0.5, causal),
            [query, key, value],
        ))
    return 0 if all(results) else 1


if __name__ == "__main__":
    sys.exit(main())
