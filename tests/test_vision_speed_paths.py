"""The core's two speed paths for vision-language training: gradient checkpointing's input hook on the
language model alone (a frozen vision tower runs no backward pass, the adapter gradients unchanged),
and the bidirectional variable-length attention a vision tower's windows go through in one call
(off CUDA: each window through sdpa in turn, the same numbers). The model is the core's tiny
Idefics3 (tuneforge.testing.vlm)."""

import pytest

import tuneforge.testing.vlm_plugin as vlm_plugin
from tuneforge.testing.vlm import collate, image_file, tiny_vlm_dir
from tuneforge.training import attention
from tuneforge.training.checkpointing import checkpoint_kwargs, language_input_grads


@pytest.fixture(scope="module")
def vlm_dir(tmp_path_factory):
    return tiny_vlm_dir(tmp_path_factory.mktemp("vlm") / "tiny-vlm")


@pytest.fixture(scope="module")
def batch(vlm_dir, tmp_path_factory):
    from transformers import AutoProcessor

    folder = tmp_path_factory.mktemp("pictures")
    template = vlm_plugin.ImageChatTemplate(AutoProcessor.from_pretrained(vlm_dir))
    samples = []
    for name, colour in (("red", (220, 20, 20)), ("blue", (20, 20, 220))):
        picture = image_file(folder / f"{name}.png", colour)
        messages = [
            {"role": "user", "content": [{"type": "image_url", "image_url": {"url": picture}}, {"type": "text", "text": "What colour?"}]},
            {"role": "assistant", "content": name.title() + "."},
        ]
        encoded = template.encode(messages)
        samples.append({"input_ids": encoded.input_ids, "labels": encoded.labels, "extras": encoded.extras})
    return collate(template, samples, packing=False)


def _lora_model(vlm_dir):
    """The tiny model with LoRA on the text side's attention; the vision tower and connector frozen."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForImageTextToText

    torch.manual_seed(0)
    model = AutoModelForImageTextToText.from_pretrained(vlm_dir, dtype=torch.float32, attn_implementation="sdpa")
    config = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=r".*text_model.*\.(q_proj|v_proj)")
    wrapped = get_peft_model(model, config)
    for name, parameter in wrapped.named_parameters():
        if "lora_B" in name:  # non-zero B: every adapter has a gradient through A too
            torch.nn.init.normal_(parameter, std=0.02)
    return wrapped


class Backward:
    def __init__(self, layers) -> None:
        self.calls = 0
        for layer in layers:
            layer.register_full_backward_hook(self.count)

    def count(self, module, grad_input, grad_output):
        self.calls += 1


def _grads(model, batch):
    model.zero_grad(set_to_none=True)
    model(**batch).loss.backward()
    return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


def test_a_frozen_vision_tower_runs_no_backward_under_checkpointing(vlm_dir, batch):
    import torch

    wrapped = _lora_model(vlm_dir)
    model = wrapped.get_base_model()
    vision_layers = model.model.vision_model.encoder.layers
    backward = Backward(vision_layers)
    assert language_input_grads(wrapped) is model
    wrapped.train()
    # What the trainer does for --gradient-checkpointing: transformers' enable, which calls enable_input_require_grads.
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=checkpoint_kwargs("full"))
    assert [hook.id for hook in model._require_grads_hooks] == list(model.get_input_embeddings()._forward_hooks)
    assert not model.model.vision_model.embeddings._forward_hooks
    checkpointed = _grads(wrapped, batch)
    assert backward.calls == 0
    assert checkpointed and all("lora_" in name for name in checkpointed)

    # transformers' own hooks (the vision embeddings too): the same gradients, through every vision layer backward.
    model.disable_input_require_grads()
    type(model).enable_input_require_grads(model)
    everywhere = _grads(wrapped, batch)
    assert backward.calls == len(vision_layers)
    model.disable_input_require_grads()
    model.gradient_checkpointing_disable()
    plain = _grads(wrapped, batch)
    assert checkpointed.keys() == everywhere.keys() == plain.keys()
    for name in plain:
        torch.testing.assert_close(checkpointed[name], plain[name], rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(everywhere[name], plain[name], rtol=1e-5, atol=1e-7)


def test_hooks_set_before_are_replaced_and_a_text_model_keeps_its_one_hook(vlm_dir, tiny_llama_dir):
    from transformers import AutoModelForCausalLM, AutoModelForImageTextToText

    model = AutoModelForImageTextToText.from_pretrained(vlm_dir)
    model.enable_input_require_grads()  # transformers': the text and the vision embeddings
    assert model.model.vision_model.embeddings._forward_hooks
    language_input_grads(model)
    assert not model.model.vision_model.embeddings._forward_hooks
    assert len(model.get_input_embeddings()._forward_hooks) == 1
    model.enable_input_require_grads()  # again (the trainer, after peft): still one hook
    assert len(model.get_input_embeddings()._forward_hooks) == 1

    text = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)
    language_input_grads(text)
    text.enable_input_require_grads()
    assert [hook.id for hook in text._require_grads_hooks] == list(text.model.embed_tokens._forward_hooks)


def _windows(lengths, heads=2, dim=8, seed=0):
    import torch

    generator = torch.Generator().manual_seed(seed)
    total = sum(lengths)
    q, k, v = (torch.randn(1, heads, total, dim, generator=generator, requires_grad=True) for _ in range(3))
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32)
    return q, k, v, cu


class Module:
    is_causal = False
    num_key_value_groups = 1
    training = True


def test_the_vision_varlen_attention_equals_sdpa_window_by_window():
    import torch
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    lengths = [4, 16, 1, 9]
    q, k, v, cu = _windows(lengths)
    out, _ = attention.vision_varlen_attention_forward(
        Module(), q, k, v, None, scaling=0.3, dropout=0.0, cu_seq_lens_q=cu, cu_seq_lens_k=cu,
        max_length_q=16, max_length_k=16, is_causal=False,
    )
    assert out.shape == (1, sum(lengths), 2, 8)
    pieces = [
        sdpa_attention_forward(Module(), *(t[:, :, a:b] for t in (q, k, v)), None, scaling=0.3, is_causal=False)[0]
        for a, b in zip(cu[:-1].tolist(), cu[1:].tolist())
    ]
    expected = torch.cat(pieces, dim=1)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)
    weights = torch.randn_like(out)
    got = torch.autograd.grad((out * weights).sum(), (q, k, v))
    want = torch.autograd.grad((expected * weights).sum(), (q, k, v))
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    # Not causal: a window's first query sees its last key.
    whole = sdpa_attention_forward(Module(), *(t[:, :, 4:20] for t in (q, k, v)), None, scaling=0.3, is_causal=True)[0]
    assert not torch.allclose(out[:, 4:20], whole)
    # Called one window at a time (no cu_seq_lens): transformers' sdpa for that window.
    single, _ = attention.vision_varlen_attention_forward(Module(), q[:, :, :4], k[:, :, :4], v[:, :, :4], None, scaling=0.3, is_causal=False)
    torch.testing.assert_close(single, pieces[0])


def test_the_vision_attention_switches_on_only_where_the_kernel_runs(vlm_dir):
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(vlm_dir).vision_config
    config._attn_implementation = "sdpa"
    expected = attention.VISION_VARLEN if attention.available() else "sdpa"
    assert attention.use_for_vision(config) == expected == config._attn_implementation
    assert attention.use_for_vision(config, force=True) == attention.VISION_VARLEN == config._attn_implementation
    assert "flash" in attention.VISION_VARLEN  # what transformers' vision attention tests to batch its windows
    config._attn_implementation = attention.VARLEN  # as a model loaded for packed batches has it
    assert attention.use_for_vision(config, force=True) == attention.VISION_VARLEN == config._attn_implementation
    config._attn_implementation = "eager"  # a tower asked for another attention keeps it
    assert attention.use_for_vision(config, force=True) == "eager" == config._attn_implementation


@pytest.mark.skipif(not attention.available(), reason="needs CUDA and torch.nn.attention.varlen")
def test_on_cuda_the_one_call_kernel_matches_sdpa_window_by_window():
    import torch
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    lengths = [64, 16, 64, 1, 100]  # head width 80: Qwen2.5-VL's vision tower
    q, k, v, cu = _windows(lengths, heads=4, dim=80)
    q, k, v = (t.detach().to("cuda", torch.bfloat16).requires_grad_(True) for t in (q, k, v))
    cu = cu.cuda()
    out, _ = attention.vision_varlen_attention_forward(
        Module(), q, k, v, None, scaling=80**-0.5, cu_seq_lens_q=cu, cu_seq_lens_k=cu, max_length_q=100, max_length_k=100, is_causal=False
    )
    bounds = cu.tolist()
    expected = torch.cat([
        sdpa_attention_forward(Module(), *(t[:, :, a:b] for t in (q, k, v)), None, scaling=80**-0.5, is_causal=False)[0]
        for a, b in zip(bounds[:-1], bounds[1:])
    ], dim=1)
    torch.testing.assert_close(out.float(), expected.float(), rtol=2e-2, atol=2e-2)
    weights = torch.randn_like(out)
    got = torch.autograd.grad((out * weights).sum(), (q, k, v))
    want = torch.autograd.grad((expected * weights).sum(), (q, k, v))
    for a, b in zip(got, want):
        torch.testing.assert_close(a.float(), b.float(), rtol=5e-2, atol=5e-2)
