"""The fast path's pieces: chunked loss, varlen attention, checkpointing policy, the CUDA defaults."""

import dataclasses

import pytest
import torch

from tuneforge.training import attention
from tuneforge.training.checkpointing import checkpoint_kwargs
from tuneforge.training.loss import chunked_causal_lm_loss, head_returns_hidden, output_layer

CUDA = torch.cuda.is_available()


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny_model(attn="sdpa", seed=0, dtype=torch.float32, device="cpu"):
    from transformers import AutoModelForCausalLM, Qwen2Config

    config = Qwen2Config(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False)
    torch.manual_seed(seed)
    with torch.device(device):
        return AutoModelForCausalLM.from_config(config, attn_implementation=attn, dtype=dtype)


def plain_loss(logits, labels, num_items=None):
    from transformers.loss.loss_utils import ForCausalLMLoss

    return ForCausalLMLoss(logits, labels, logits.shape[-1], num_items_in_batch=num_items)


@pytest.mark.parametrize("chunk_size", [1, 5, 64])
@pytest.mark.parametrize("with_bias", [False, True])
def test_chunked_loss_and_gradients_equal_the_plain_loss(chunk_size, with_bias):
    torch.manual_seed(chunk_size)
    hidden = torch.randn(2, 19, 12, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(40, 12, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(40, dtype=torch.float64, requires_grad=True) if with_bias else None
    labels = torch.randint(0, 40, (2, 19))
    labels[0, :6] = -100
    logits = hidden @ weight.t() + (bias if with_bias else 0)
    reference = plain_loss(logits, labels, num_items=torch.tensor(23))
    reference.backward()
    expected = [t.grad.clone() for t in (hidden, weight, bias) if t is not None]
    for t in (hidden, weight, bias):
        if t is not None:
            t.grad = None
    loss = chunked_causal_lm_loss(hidden, weight, labels, bias=bias, num_items_in_batch=torch.tensor(23), chunk_size=chunk_size)
    loss.backward()
    got = [t.grad for t in (hidden, weight, bias) if t is not None]
    assert torch.allclose(loss, reference, rtol=1e-6, atol=0)
    for g, e in zip(got, expected):
        assert torch.allclose(g.double(), e, rtol=1e-5, atol=1e-7)


def test_chunked_loss_without_gradients_is_the_mean_over_learned_tokens():
    hidden, weight = torch.randn(1, 9, 8), torch.randn(30, 8)
    labels = torch.randint(0, 30, (1, 9))
    labels[0, 3] = -100
    with torch.no_grad():
        loss = chunked_causal_lm_loss(hidden, weight, labels, chunk_size=4)
    assert torch.allclose(loss, plain_loss(hidden @ weight.t(), labels), rtol=1e-5)


def test_the_model_gives_the_same_loss_through_the_hidden_states():
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(tiny_model(), LoraConfig(r=4, target_modules="all-linear", task_type="CAUSAL_LM"))
    ids = torch.randint(1, 97, (2, 11))
    labels = ids.clone()
    labels[:, :3] = -100
    reference = model(input_ids=ids, labels=labels).loss
    head = output_layer(model)
    assert head is model.get_base_model().lm_head
    with head_returns_hidden(head):
        hidden = model(input_ids=ids).logits
    assert hidden.shape == (2, 11, 32)  # the head passed its input through
    assert model(input_ids=ids).logits.shape == (2, 11, 97)  # and is itself again afterwards
    assert torch.allclose(chunked_causal_lm_loss(hidden, head.weight, labels, chunk_size=7), reference, rtol=1e-5)


@pytest.mark.parametrize("tied", [False, True])
def test_the_chunked_loss_gathers_an_output_weight_fsdp_resharded(tied):
    # FSDP2 on a process group of one (gloo): the root reshards after its forward pass, so the output
    # layer's weight is this process's piece (a DTensor) when the loss reads it. unsharded_head gathers
    # it again; the weight's gradient lands where FSDP's end-of-backward reduce-scatter collects it, and
    # every gradient equals the plain model's. (Under accelerate the output layer stays gathered after the
    # forward pass instead: test_training runs that on 2 processes.)
    import copy

    import torch.distributed as dist
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor import DTensor

    from tuneforge.training.loss import unsharded_head

    if dist.is_initialized():
        pytest.skip("a process group is already open in this process")
    plain = tiny_model()
    if tied:
        plain.lm_head.weight = plain.model.embed_tokens.weight
    sharded = copy.deepcopy(plain)
    ids = torch.randint(1, 97, (2, 11))
    labels = ids.clone()
    labels[:, :3] = -100
    plain(input_ids=ids, labels=labels).loss.backward()
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        for layer in sharded.model.layers:
            fully_shard(layer)
        fully_shard(sharded, reshard_after_forward=True)
        head = output_layer(sharded)
        assert head is sharded.lm_head
        with head_returns_hidden(head):
            hidden = sharded(input_ids=ids).logits
        assert isinstance(head.weight, DTensor)  # in pieces outside the forward pass
        weight, bias = unsharded_head(sharded, head)
        assert not isinstance(weight, DTensor) and weight.shape == (97, 32) and bias is None
        chunked_causal_lm_loss(hidden, weight, labels, chunk_size=7).backward()
        assert isinstance(head.weight, DTensor)  # resharded once the gradients were reduce-scattered
        gradients = {name: p.grad for name, p in sharded.named_parameters()}
        for name, p in plain.named_parameters():
            grad = gradients[name].full_tensor() if isinstance(gradients[name], DTensor) else gradients[name]
            assert torch.allclose(grad, p.grad, atol=1e-6), name
    finally:
        dist.destroy_process_group()


def test_models_that_change_their_logits_keep_the_plain_loss():
    model = tiny_model()
    model.config.final_logit_softcapping = 30.0
    assert output_layer(model) is None


def test_varlen_attention_never_crosses_samples():
    name = attention.register()
    plain, packed = tiny_model("sdpa"), tiny_model(name)
    a, b, c = (torch.randint(1, 97, (1, n)) for n in (7, 1, 5))
    separately = torch.cat([plain(input_ids=x).logits for x in (a, b, c)], dim=1)
    ids = torch.cat([a, b, c], dim=1)
    positions = torch.tensor([[*range(7), 0, *range(5)]])
    from_positions = packed(input_ids=ids, position_ids=positions, use_cache=False).logits
    bounds = torch.tensor([0, 7, 8, 13], dtype=torch.int32)
    from_bounds = packed(input_ids=ids, position_ids=positions, use_cache=False, cu_seq_lens_q=bounds,
                         cu_seq_lens_k=bounds, max_length_q=7, max_length_k=7).logits
    assert torch.allclose(from_positions, separately, atol=1e-5)
    assert torch.allclose(from_bounds, separately, atol=1e-5)
    together = plain(input_ids=ids).logits  # one sample of 13 tokens: later tokens see earlier samples
    assert not torch.allclose(together[:, 7:], separately[:, 7:], atol=1e-3)


def test_varlen_attention_respects_a_padding_mask():
    name = attention.register()
    plain, packed = tiny_model("sdpa"), tiny_model(name)
    a, b = torch.randint(1, 97, (1, 6)), torch.randint(1, 97, (1, 4))
    ids = torch.cat([a, torch.cat([b, torch.zeros(1, 2, dtype=torch.long)], 1)])
    mask = torch.tensor([[1] * 6, [1] * 4 + [0] * 2])
    out = packed(input_ids=ids, attention_mask=mask).logits
    assert torch.allclose(out[0], plain(input_ids=a).logits[0], atol=1e-5)
    assert torch.allclose(out[1, :4], plain(input_ids=b).logits[0], atol=1e-5)


def test_boundaries_from_positions():
    positions = torch.tensor([[0, 1, 2, 0, 0, 1]])
    assert attention.boundaries_from_positions(positions).tolist() == [0, 3, 4, 6]


def test_packing_collator_adds_boundaries_on_request():
    from tuneforge.data.collate import PackingCollator

    samples = [{"input_ids": [5, 6, 7], "labels": [5, 6, 7]}, {"input_ids": [8, 9], "labels": [-100, 9]}]
    batch = PackingCollator(0, pad_to_multiple_of=8, boundaries=True)(samples)
    assert batch["cu_seq_lens_q"].tolist() == [0, 3, 5, 8] and batch["max_length_q"] == 3
    assert "cu_seq_lens_q" not in PackingCollator(0)(samples)


def test_selective_checkpointing_keeps_gradients_exact():
    from peft import LoraConfig, get_peft_model

    ids = torch.randint(1, 97, (1, 12))
    grads = {}
    for policy in (None, "full", "selective"):
        model = get_peft_model(tiny_model(seed=3), LoraConfig(r=4, target_modules="all-linear", task_type="CAUSAL_LM", init_lora_weights=False))
        if policy:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=checkpoint_kwargs(policy))
        model.train()
        model(input_ids=ids, labels=ids).loss.backward()
        grads[policy] = torch.cat([p.grad.flatten() for p in model.parameters() if p.requires_grad])
    assert torch.allclose(grads["full"], grads[None], atol=1e-6)
    assert torch.allclose(grads["selective"], grads[None], atol=1e-6)
    with pytest.raises(ValueError, match="'partial'.*full, selective"):
        checkpoint_kwargs("partial")


def test_the_fast_path_is_the_default_on_cuda_only():
    from tuneforge.config import SFTConfig
    from tuneforge.options import build
    from tuneforge.registry import get_registry
    from tuneforge.training.setup import resolve_fast_path

    devices = {d.name: d for d in get_registry().all("devices")}
    single = get_registry().get("parallel_backends", "single")
    on_cpu = resolve_fast_path(build(SFTConfig, {}), devices["cpu"], None, single)
    assert (on_cpu.packing, on_cpu.chunked_loss, on_cpu.attn_implementation) == (False, False, None)
    on_cuda = resolve_fast_path(build(SFTConfig, {}), devices["cuda"], None, single)
    assert on_cuda.packing is True and on_cuda.chunked_loss is True
    assert on_cuda.fused_swiglu is on_cuda.fused_rope is on_cuda.fused_norm is True
    assert on_cpu.fused_swiglu is on_cpu.fused_rope is on_cpu.fused_norm is False
    assert on_cuda.attn_implementation == (attention.VARLEN if attention.available() else None)
    chosen = resolve_fast_path(build(SFTConfig, {"packing": False, "chunked_loss": False}), devices["cuda"], None, single)
    assert (chosen.packing, chosen.chunked_loss, chosen.attn_implementation) == (False, False, None)
    fsdp = resolve_fast_path(build(SFTConfig, {}), devices["cuda"], None, get_registry().get("parallel_backends", "fsdp"))
    assert fsdp.chunked_loss is True  # FSDP2 reads the output weight gathered (tests/test_training.py runs it)


@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
def test_cuda_varlen_kernel_and_chunked_loss_match_the_plain_path():
    name = attention.register()
    plain = tiny_model("sdpa", dtype=torch.bfloat16, device="cuda")
    packed = tiny_model(name, dtype=torch.bfloat16, device="cuda")
    a, b = torch.randint(1, 97, (1, 40), device="cuda"), torch.randint(1, 97, (1, 25), device="cuda")
    separately = torch.cat([plain(input_ids=x).logits for x in (a, b)], dim=1).float()
    positions = torch.tensor([[*range(40), *range(25)]], device="cuda")
    out = packed(input_ids=torch.cat([a, b], 1), position_ids=positions, use_cache=False).logits.float()
    assert (out - separately).norm() / separately.norm() < 2e-2
    hidden = torch.randn(1, 300, 64, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    weight = torch.randn(5000, 64, device="cuda", dtype=torch.bfloat16)
    labels = torch.randint(0, 5000, (1, 300), device="cuda")
    reference = plain_loss(hidden @ weight.t(), labels)
    (grad_ref,) = torch.autograd.grad(reference, hidden)
    loss = chunked_causal_lm_loss(hidden, weight, labels, chunk_size=64)
    (grad,) = torch.autograd.grad(loss, hidden)
    assert abs(loss.item() - reference.item()) < 1e-3 * reference.item()
    assert (grad.float() - grad_ref.float()).norm() / grad_ref.float().norm() < 2e-2


@pytest.mark.parametrize("with_bias", [False, True])
def test_fused_lora_gives_peft_outputs_and_gradients(with_bias):
    from peft import LoraConfig, get_peft_model

    from tuneforge.training import fused_lora

    grads, outputs = {}, {}
    ids = torch.randint(1, 97, (2, 9))
    for fused in (False, True):
        model = tiny_model(seed=5)
        if with_bias:  # Qwen2's q/k/v carry biases
            assert model.model.layers[0].self_attn.q_proj.bias is not None
        else:
            model.model.layers[0].self_attn.q_proj.bias = None
        model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", task_type="CAUSAL_LM", init_lora_weights=False))
        if fused:
            assert fused_lora.enable(model) == 2 * 7
        out = model(input_ids=ids, labels=ids)
        out.loss.backward()
        outputs[fused] = out.logits
        grads[fused] = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
    assert torch.allclose(outputs[True], outputs[False], atol=1e-5)
    assert grads[True].keys() == grads[False].keys()
    for name in grads[False]:
        assert torch.allclose(grads[True][name], grads[False][name], atol=1e-5, rtol=1e-4), name


def test_fused_lora_on_a_4bit_base_gives_peft_outputs_and_gradients():
    """QLoRA layers: the base dequantized inside the fused node, as bitsandbytes computes it (on the CPU here)."""
    pytest.importorskip("bitsandbytes")
    from peft import LoraConfig, get_peft_model
    from transformers import BitsAndBytesConfig

    from tuneforge.bench.train import quantize_4bit
    from tuneforge.training import fused_lora

    quantization = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                      bnb_4bit_compute_dtype=torch.float32)
    ids = torch.randint(1, 97, (2, 9))
    grads, outputs = {}, {}
    for fused in (False, True):
        model = quantize_4bit(tiny_model(seed=6), quantization, "cpu")
        model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", task_type="CAUSAL_LM", init_lora_weights=False))
        model.enable_input_require_grads()
        if fused:
            assert fused_lora.enable(model) == 2 * 7
            packed = model.get_base_model().model.layers[0].mlp.down_proj.base_layer.weight
            assert packed.dtype == torch.uint8  # still 4-bit: nothing dequantized was kept
            fallbacks = []
            for module in model.modules():
                if hasattr(module, "_peft_forward"):
                    module._peft_forward = lambda *a, **k: fallbacks.append(1)
        out = model(input_ids=ids, labels=ids)
        out.loss.backward()
        outputs[fused] = out.logits
        grads[fused] = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
    assert fallbacks == []  # every 4-bit layer took the fused path
    assert torch.allclose(outputs[True], outputs[False], atol=1e-5)
    assert grads[True].keys() == grads[False].keys() and len(grads[False]) == 2 * 2 * 7
    for name in grads[False]:
        assert torch.allclose(grads[True][name], grads[False][name], atol=1e-5, rtol=1e-4), name


def test_fused_lora_leaves_dropout_and_dora_layers_to_peft():
    from peft import LoraConfig, get_peft_model

    from tuneforge.training import fused_lora

    calls = []
    model = get_peft_model(tiny_model(), LoraConfig(r=4, lora_dropout=0.1, target_modules=["q_proj"], task_type="CAUSAL_LM"))
    fused_lora.enable(model)
    layer = model.get_base_model().model.layers[0].self_attn.q_proj
    original = layer._peft_forward
    layer._peft_forward = lambda *a, **k: calls.append(1) or original(*a, **k)
    model(input_ids=torch.randint(1, 97, (1, 5)))
    assert calls == [1]


@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
def test_cuda_fused_lora_under_bf16_autocast_matches_peft():
    from peft import LoraConfig, get_peft_model

    from tuneforge.training import fused_lora

    ids = torch.randint(1, 97, (1, 64), device="cuda")
    results = {}
    for fused in (False, True):
        model = get_peft_model(tiny_model(seed=7, dtype=torch.bfloat16, device="cuda"),
                               LoraConfig(r=8, target_modules="all-linear", task_type="CAUSAL_LM", init_lora_weights=False))
        if fused:
            fused_lora.enable(model)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        grad = torch.cat([p.grad.float().flatten() for p in model.parameters() if p.requires_grad])
        results[fused] = (loss.item(), grad)
    assert abs(results[True][0] - results[False][0]) < 1e-2
    assert (results[True][1] - results[False][1]).norm() / results[False][1].norm() < 5e-2


def test_varlen_model_still_generates_with_a_kv_cache():
    name = attention.register()
    plain, varlen = tiny_model("sdpa"), tiny_model(name)
    ids = torch.randint(1, 97, (1, 6))
    settings = dict(max_new_tokens=5, do_sample=False, pad_token_id=0)
    assert varlen.generate(input_ids=ids, **settings).tolist() == plain.generate(input_ids=ids, **settings).tolist()


def test_fused_norm_takes_llama_style_norms_only_and_keeps_their_values():
    from tuneforge.training import fused_norm

    model = tiny_model(seed=2)
    ids = torch.randint(1, 97, (1, 8))
    reference = model(input_ids=ids).logits
    assert fused_norm.enable(model, backend="eager") == 2 * 2 + 1  # two per layer and the final one
    assert torch.allclose(model(input_ids=ids).logits, reference, atol=1e-6)

    class GemmaStyle(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.weight, self.variance_epsilon = torch.nn.Parameter(torch.zeros(4)), 1e-6

        def forward(self, hidden_states):
            return hidden_states * (1.0 + self.weight)

    assert not fused_norm.is_llama_style(GemmaStyle())


@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
def test_cuda_compiled_norm_matches_the_eager_norm():
    from tuneforge.training import fused_norm

    ids = torch.randint(1, 97, (1, 50), device="cuda")
    results = []
    for fused in (False, True):
        model = tiny_model(seed=4, dtype=torch.bfloat16, device="cuda")
        model.model.norm.weight.requires_grad_(True)
        if fused:
            assert fused_norm.enable(model) == 5
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        results.append((loss.item(), model.model.embed_tokens.weight.grad.float()))
    assert abs(results[0][0] - results[1][0]) < 1e-2
    assert (results[0][1] - results[1][1]).norm() / results[0][1].norm() < 2e-2


def _family_model(config_class: str, seed: int, **kwargs):
    import transformers

    torch.manual_seed(seed)
    config = getattr(transformers, config_class)(
        vocab_size=97, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=8, pad_token_id=0, bos_token_id=1, eos_token_id=2,
    )
    return transformers.AutoModelForCausalLM.from_config(config, **kwargs)


@pytest.mark.parametrize("config_class", ["Qwen2Config", "Qwen3Config", "LlamaConfig"])
def test_fused_swiglu_and_rope_keep_values_and_gradients(config_class):
    from tuneforge.training import fused_layers

    ids = torch.randint(3, 97, (2, 9))
    results = []
    for fused in (False, True):
        model = _family_model(config_class, seed=5)
        if fused:
            assert fused_layers.enable_swiglu(model, backend="eager") == 2
            assert fused_layers.enable_rotary(model, backend="eager") == 2
            assert fused_layers.enable_rotary(model, backend="eager") == 0  # once only
        logits = model(input_ids=ids).logits
        (logits.float() ** 2).mean().backward()
        results.append((logits, [p.grad for p in model.parameters()]))
    assert torch.allclose(results[0][0], results[1][0], atol=1e-6)
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(results[0][1], results[1][1]))


def test_fused_layers_leave_other_activations_and_rotations_alone():
    from tuneforge.training import fused_layers

    gemma = _family_model("GemmaConfig", seed=6)  # a GELU-gated MLP, the standard rotation
    assert fused_layers.enable_swiglu(gemma, backend="eager") == 0
    assert fused_layers.enable_rotary(gemma, backend="eager") == 2
    cohere = _family_model("CohereConfig", seed=6)  # SiLU-gated, but rotates interleaved pairs
    assert fused_layers.enable_swiglu(cohere, backend="eager") == 2
    assert fused_layers.enable_rotary(cohere, backend="eager") == 0
    # The swap is per module: a model of the same class built later keeps transformers' forward.
    fresh = _family_model("GemmaConfig", seed=6)
    assert "forward" not in vars(fresh.model.layers[0].self_attn)


@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
def test_cuda_compiled_swiglu_and_rope_match_eager_in_bf16():
    from tuneforge.training import fused_layers

    ids = torch.randint(3, 97, (1, 50), device="cuda")
    results = []
    for fused in (False, True):
        model = _family_model("Qwen2Config", seed=7, dtype=torch.bfloat16).to("cuda")
        if fused:
            assert fused_layers.enable_swiglu(model) == fused_layers.enable_rotary(model) == 2
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        results.append((loss.item(), model.model.embed_tokens.weight.grad.float()))
    assert abs(results[0][0] - results[1][0]) < 1e-2
    assert (results[0][1] - results[1][1]).norm() / results[0][1].norm() < 2e-2


def test_sft_with_the_fast_path_options_learns_as_the_plain_path(tiny_llama_dir, tmp_path, monkeypatch):
    """Through the trainer: the chunked loss, fused LoRA and fused layers give the plain run's losses, step by step."""
    import json

    from click.testing import CliRunner

    from tuneforge.cli import cli
    from tuneforge.modeling import read_run_record
    from tuneforge.training import fused_layers

    # The compiled kernels' formulas, run eagerly: what is tested here is that sft swaps them in.
    monkeypatch.setattr(fused_layers, "compiled", lambda function, backend="inductor": function)

    data = tmp_path / "chats.jsonl"
    rows = [{"messages": [{"role": "user", "content": f"Add {i} and {i}."}, {"role": "assistant", "content": f"{2 * i}"}]} for i in range(12)]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    losses = {}
    for name, flags in (("plain", []), ("fast", ["--chunked-loss", "--loss-chunk-size", "7", "--fused-lora", "--lora-dropout", "0",
                                                 "--attn-implementation", "tuneforge_varlen", "--fused-norm", "--fused-swiglu", "--fused-rope"])):
        out = tmp_path / name
        result = CliRunner().invoke(cli, ["sft", "--model", tiny_llama_dir, "--dataset", str(data), "--output-dir", str(out),
                                          "--max-steps", "3", "--per-device-batch-size", "4", "--packing", "--logging-steps", "1",
                                          "--learning-rate", "1e-2", "--lora-dropout", "0", *flags], catch_exceptions=False)
        assert result.exit_code == 0, result.output
        state = json.loads((out / "checkpoint-3" / "trainer_state.json").read_text())
        losses[name] = [entry["loss"] for entry in state["log_history"] if "loss" in entry]
        if name == "fast":
            config = read_run_record(out).config
            assert config["chunked_loss"] and config["fused_lora"] and config["attn_implementation"] == "tuneforge_varlen"
            assert config["fused_norm"] and config["fused_swiglu"] and config["fused_rope"]
            assert "fused: 14 LoRA layers, 5 norms, 2 SwiGLU MLPs, 2 rotary embeddings" in result.output
    assert len(losses["plain"]) == 3
    assert losses["fast"][0] == pytest.approx(losses["plain"][0], rel=1e-6)  # the same loss on the same weights
    # Later steps part by rounding only (summation order), which Adam's normalised steps amplify
    # (1.4e-3 relative seen with two CPU threads); the gradients themselves are compared to
    # peft's and the plain loss's above (test_fused_lora_gives_peft_outputs_and_gradients, ...).
    assert losses["fast"][1:] == pytest.approx(losses["plain"][1:], rel=5e-3)
    assert losses["fast"][2] < losses["fast"][0]
