"""The CUDA path: bf16, gradient checkpointing, QLoRA. Skipped where no GPU is present."""

import json

import pytest
import torch
from click.testing import CliRunner

from tuneforge.cli import cli
from tuneforge.modeling import load_for_inference, read_run_record

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture(scope="module")
def chats(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "chats.jsonl"
    rows = [
        {"messages": [{"role": "user", "content": f"Spell {w}."}, {"role": "assistant", "content": " ".join(w)}]}
        for w in ["apple", "banana", "cherry", "damson", "elder", "fig", "grape", "hazel"] * 2
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def sft(*args):
    result = CliRunner().invoke(cli, ["sft", *map(str, args)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result


@pytest.mark.parametrize("train_type", ["lora", "qlora"])
def test_cuda_training_uses_bf16_and_checkpointing(train_type, tiny_llama_dir, chats, tmp_path):
    if train_type == "qlora":
        pytest.importorskip("bitsandbytes")
    out = tmp_path / train_type
    result = sft("--model", tiny_llama_dir, "--dataset", chats, "--output-dir", out, "--max-steps", 4,
                 "--per-device-batch-size", 4, "--train-type", train_type, "--packing", "--learning-rate", 1e-2,
                 "--logging-steps", 1)
    assert "fused: 14 LoRA layers" in result.output  # 4-bit bases too
    state = json.loads((out / "checkpoint-4" / "trainer_state.json").read_text())
    losses = [entry["loss"] for entry in state["log_history"] if "loss" in entry]
    assert len(losses) == 4 and losses[-1] < losses[0]
    run = read_run_record(out)
    assert run.torch_dtype == "bfloat16"
    assert run.config["gradient_checkpointing"] is True
    assert run.tuner == train_type
    loaded = load_for_inference(str(out))
    assert loaded.device.type == "cuda"
    ids = torch.tensor([loaded.template.prompt([{"role": "user", "content": "Spell fig."}])], device="cuda")
    out_ids = loaded.model.generate(input_ids=ids, max_new_tokens=4, do_sample=False)
    assert out_ids.shape[1] > ids.shape[1]


def test_qlora_base_is_4bit(tiny_llama_dir, chats, tmp_path):
    pytest.importorskip("bitsandbytes")
    from tuneforge.config import SFTConfig
    from tuneforge.options import build
    from tuneforge.training.setup import load_trainable_model, prepare

    setup = prepare(build(SFTConfig, {"model": tiny_llama_dir, "dataset": [str(chats)], "train_type": "qlora",
                                      "output_dir": str(tmp_path / "q")}), "sft")
    model = load_trainable_model(setup)
    kinds = {type(m).__name__ for m in model.modules()}
    assert "Linear4bit" in kinds


def q_proj(directory):
    from safetensors import safe_open

    with safe_open(str(directory / "model.safetensors"), "pt") as handle:
        return handle.get_tensor("model.layers.1.self_attn.q_proj.weight")


@pytest.mark.parametrize("pure_bf16", [False, True])
def test_cuda_full_fine_tuning_trains_float32_master_weights_unless_pure_bf16(pure_bf16, tiny_llama_dir, chats, tmp_path):
    from pathlib import Path

    out = tmp_path / "full"
    result = sft("--model", tiny_llama_dir, "--dataset", chats, "--output-dir", out, "--max-steps", 3, "--save-steps", 3,
                 "--per-device-batch-size", 4, "--train-type", "full", "--learning-rate", 1e-5, "--lr-scheduler", "constant",
                 *(["--pure-bf16"] if pure_bf16 else []))
    assert ("float32 master weights:" in result.output) is not pure_bf16
    base, checkpoint, final = q_proj(Path(tiny_llama_dir)), q_proj(out / "checkpoint-3"), q_proj(out)
    assert checkpoint.dtype == (torch.bfloat16 if pure_bf16 else torch.float32)
    start = base.to(torch.bfloat16).float()  # the fixture is written in float32; the run loads it in bf16
    moved = (checkpoint.float() != start).float().mean().item()
    # lr 1e-5 on weights of about 0.02: bf16 weights keep few of the updates, float32 ones all.
    assert (moved < 0.5) if pure_bf16 else (moved > 0.99), moved
    assert final.dtype == torch.bfloat16  # published in the run's dtype either way
    assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"
    assert read_run_record(out).config["pure_bf16"] is pure_bf16


def test_masked_half_precision_attention_trains_finite_once_the_device_is_prepared():
    # The conditions under which cuDNN's attention backward returns NaN query gradients (H100/H200, torch 2.11
    # and later): a mask is passed, the length is 64 past a multiple of 128, and every score of a row lies far
    # below zero. Training on CUDA turns that kernel off first; the default kernel is only reported, not judged.
    import torch.nn.functional as F

    from tuneforge.registry import get_registry

    def query_gradient_finite() -> bool:
        gen = torch.Generator(device="cuda").manual_seed(0)
        length, dim = 5 * 128 + 64, 64
        q = torch.randn(1, 2, length, dim, device="cuda", generator=gen) * 0.1
        k = torch.randn(1, 2, length, dim, device="cuda", generator=gen) * 0.1
        v = torch.randn(1, 2, length, dim, device="cuda", generator=gen)
        q[..., 0], k[..., 0] = 1.0, -120.0 * dim**0.5  # every scaled score near -120: each row's log-sum-exp too
        q, k, v = (t.to(torch.bfloat16).requires_grad_() for t in (q, k, v))
        mask = torch.ones(length, length, dtype=torch.bool, device="cuda").tril()
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        out.backward(torch.ones_like(out))
        return bool(torch.isfinite(q.grad).all() and torch.isfinite(k.grad).all() and torch.isfinite(v.grad).all())

    torch.backends.cuda.enable_cudnn_sdp(True)
    try:
        print("default kernels' query gradient finite:", query_gradient_finite())
        get_registry().get("devices", "cuda").prepare_training()
        assert not torch.backends.cuda.cudnn_sdp_enabled()
        assert query_gradient_finite()
    finally:
        torch.backends.cuda.enable_cudnn_sdp(True)
