"""Float32 master weights for the whole weights a run trains under bf16 mixed precision.

The CUDA run end to end is in tests/test_gpu.py; here, on the CPU, the pieces it is
made of: the upcast (tied weights once), the update it keeps that bf16 rounds away,
the final save in the run's dtype beside float32 checkpoints, the loss's products in
bf16 from float32 weights, and the options that cannot go together.
"""

import json

import pytest
import torch
from click.testing import CliRunner
from safetensors import safe_open

from tuneforge.cli import cli
from tuneforge.training.loss import chunked_causal_lm_loss
from tuneforge.training.setup import MASTER_NAMES, float32_master_weights


def tiny(tied=False, dtype=torch.bfloat16, seed=0):
    from transformers import AutoModelForCausalLM, LlamaConfig

    config = LlamaConfig(vocab_size=97, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=tied)
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(config, dtype=dtype)


def test_trained_bf16_weights_become_float32_and_tied_ones_count_once():
    model = tiny(tied=True)
    model.model.layers[0].requires_grad_(False)  # frozen weights stay as they are
    trained = {id(p): p for p in model.parameters() if p.requires_grad}
    changed = float32_master_weights(model, torch.bfloat16)
    assert changed == sum(p.numel() for p in trained.values())
    for name, parameter in model.named_parameters():
        assert parameter.dtype == (torch.float32 if parameter.requires_grad else torch.bfloat16), name
    names, dtype = getattr(model, MASTER_NAMES)
    assert dtype == torch.bfloat16
    assert {"model.embed_tokens.weight", "lm_head.weight"} <= names  # one tensor, both names
    assert not any(name.startswith("model.layers.0.") for name in names)
    assert model.lm_head.weight is model.model.embed_tokens.weight
    # Only the names are kept for a backend that upcasts by itself.
    other = tiny()
    assert float32_master_weights(other, torch.bfloat16, upcast=False) == 0
    assert all(p.dtype == torch.bfloat16 for p in other.parameters())
    assert "lm_head.weight" in getattr(other, MASTER_NAMES)[0]


def changed_share(learning_rate, masters):
    """The share of one projection's weights that AdamW moved in 3 steps under bf16 autocast."""
    model = tiny(seed=1)
    if masters:
        float32_master_weights(model, torch.bfloat16)
    before = model.model.layers[1].self_attn.q_proj.weight.detach().float().clone()
    optimizer = torch.optim.AdamW(model.parameters(), lr=learning_rate, weight_decay=0.0)
    ids = torch.randint(0, 97, (2, 24), generator=torch.Generator().manual_seed(0))
    for _ in range(3):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    after = model.model.layers[1].self_attn.q_proj.weight.detach().float()
    return (after != before).float().mean().item()


def test_float32_masters_keep_the_small_updates_that_bf16_weights_round_away():
    # lr 1e-5 on weights of about 0.02: bf16's step there is about 1e-4, so most updates vanish.
    assert changed_share(1e-5, masters=True) > 0.99
    assert changed_share(1e-5, masters=False) < 0.5


def dtypes_of(directory):
    with safe_open(str(directory / "model.safetensors"), "pt") as handle:
        return {key: handle.get_slice(key).get_dtype() for key in handle.keys()}


def test_the_published_model_is_in_the_run_dtype_and_checkpoints_keep_float32(tmp_path):
    from transformers import TrainingArguments

    from tuneforge.training.trainer import TuneforgeTrainer

    model = tiny()
    model.model.layers[0].requires_grad_(False)
    float32_master_weights(model, torch.bfloat16)
    trainer = TuneforgeTrainer(model=model, args=TrainingArguments(output_dir=str(tmp_path / "run"), use_cpu=True, report_to=[]))
    trainer.save_model(str(tmp_path / "final"))
    trainer.save_model(str(tmp_path / "checkpoint"), _internal_call=True)
    final, checkpoint = dtypes_of(tmp_path / "final"), dtypes_of(tmp_path / "checkpoint")
    assert set(final.values()) == {"BF16"}
    assert checkpoint["model.layers.1.self_attn.q_proj.weight"] == "F32"
    assert checkpoint["model.layers.0.self_attn.q_proj.weight"] == "BF16"  # frozen: never upcast
    assert json.loads((tmp_path / "final" / "config.json").read_text())["dtype"] == "bfloat16"
    assert json.loads((tmp_path / "checkpoint" / "config.json").read_text())["dtype"] == "float32"
    # The model in memory keeps training from its float32 weights.
    assert model.model.layers[1].self_attn.q_proj.weight.dtype == torch.float32


def test_the_chunked_loss_multiplies_in_bf16_from_float32_weights_and_returns_float32_gradients():
    torch.manual_seed(0)
    hidden = torch.randn(1, 30, 16)
    weight = torch.randn(50, 16, requires_grad=True)
    labels = torch.randint(0, 50, (1, 30))
    loss = chunked_causal_lm_loss(hidden, weight, labels, chunk_size=7, dtype=torch.bfloat16)
    loss.backward()
    assert weight.grad.dtype == torch.float32
    half = weight.detach().bfloat16().requires_grad_()
    reference = chunked_causal_lm_loss(hidden.bfloat16(), half, labels, chunk_size=7)
    reference.backward()
    assert loss.item() == reference.item()  # the same bf16 products
    torch.testing.assert_close(weight.grad, half.grad.float(), rtol=0, atol=0)


def test_pure_bf16_under_a_backend_that_keeps_float32_weights_is_refused(tmp_path):
    result = CliRunner().invoke(cli, ["sft", "--train-type", "full", "--pure-bf16", "--parallel-backend", "fsdp",
                                      "--nproc-per-node", "2", "--output-dir", str(tmp_path / "out")])
    assert result.exit_code != 0
    assert "--pure-bf16 cannot apply under --parallel-backend fsdp, which keeps float32 trainable weights itself" in result.output
    assert len(result.output.strip().splitlines()) == 1, result.output
    assert not (tmp_path / "out").exists()
