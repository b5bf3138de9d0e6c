"""The two speed paths of vision-language training, on a tiny Qwen2.5-VL whose tower has windows.

A frozen vision tower runs no backward pass under gradient checkpointing (only the language
model's input embeddings are made to require a gradient), with the LoRA gradients unchanged;
a trained tower still gets its gradients. The vision tower's windows in one variable-length
attention call give what transformers' per-window sdpa gives, forward and backward.
"""

import copy
import json

import pytest

from tuneforge.api import BenchmarkMeter, resolve_bundle, sft_benchmark_run, use_varlen_vision_attention
from tuneforge.testing.vlm import image_file
from tuneforge_vl.bench import synthetic_samples
from tuneforge_vl.qwen_vl import derive_token_types
from tuneforge_vl.testing.qwen_vl import tiny_qwen_vl_dir

# Two vision blocks: the first attends within windows of one merged token (4 windows an
# image of 4 x 4 patches), the second over each whole image.
VISION = {"depth": 2, "fullatt_block_indexes": [1], "window_size": 28}


@pytest.fixture(scope="module", autouse=True)
def installed():
    """The plugin installed for the whole module (its families: parts, template, LoRA modules)."""
    import tuneforge_vl.plugin
    from tuneforge.testing import plugin_installed

    with plugin_installed(tuneforge_vl.plugin, "vl", "tuneforge-vl") as manager:
        yield manager


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """The tiny Qwen2.5-VL checkpoint folder with the windowed tower in its config (weights are built at random)."""
    folder = tmp_path_factory.mktemp("windowed")
    model_dir = tiny_qwen_vl_dir(folder / "model", "qwen2_5_vl")
    config_path = folder / "model" / "config.json"
    config = json.loads(config_path.read_text())
    config["vision_config"].update(VISION)
    config_path.write_text(json.dumps(config))
    return folder, model_dir


@pytest.fixture(scope="module")
def samples(folder):
    path, model_dir = folder
    bundle = resolve_bundle(model_dir, check_template=False)
    images = [image_file(path / "red.png", (220, 20, 20), (112, 112)), image_file(path / "blue.png", (20, 20, 220), (112, 112))]
    return bundle, synthetic_samples(bundle.template, bundle.tokenizer, images, 2, 12, 0)


def _model(config, seed=0):
    import torch
    from transformers import AutoModelForImageTextToText

    torch.manual_seed(seed)
    return derive_token_types(AutoModelForImageTextToText.from_config(copy.deepcopy(config), dtype=torch.float32, attn_implementation="sdpa"))


def _batch(bundle, samples):
    import torch

    extras = bundle.template.collate_extras([s["extras"] for s in samples])
    ids = torch.tensor([s["input_ids"] for s in samples]) if len({len(s["input_ids"]) for s in samples}) == 1 else None
    if ids is None:
        width = max(len(s["input_ids"]) for s in samples)
        pad = bundle.tokenizer.pad_token_id
        ids = torch.tensor([s["input_ids"] + [pad] * (width - len(s["input_ids"])) for s in samples])
        mask = torch.tensor([[1] * len(s["input_ids"]) + [0] * (width - len(s["input_ids"])) for s in samples])
        labels = torch.tensor([s["labels"] + [-100] * (width - len(s["labels"])) for s in samples])
    else:
        mask = torch.ones_like(ids)
        labels = torch.tensor([s["labels"] for s in samples])
    return {"input_ids": ids, "attention_mask": mask, "labels": labels, **extras}


class VisionBackward:
    """Counts backward calls through the vision blocks, and whether the patch embedding's output required a gradient."""

    def __init__(self, model) -> None:
        self.calls = 0
        self.patch_output_grad = []
        visual = model.get_base_model().model.visual if hasattr(model, "get_base_model") else model.model.visual
        for block in visual.blocks:
            block.register_full_backward_hook(self._backward)
        # The first block's input: the patch embedding's output, after every hook on the embedding ran.
        visual.blocks[0].register_forward_pre_hook(lambda module, args: self.patch_output_grad.append(args[0].requires_grad))

    def _backward(self, module, grad_input, grad_output):
        self.calls += 1


def _sft_run(bundle, samples, freeze_tower, checkpointing=True):
    """Two LoRA steps through sft's path; returns (the prepared model, its vision-backward counter, the result)."""
    held = {}

    def build(setup):
        model = _model(bundle.hf_config)
        held["model"] = model
        held["counter"] = VisionBackward(model)
        return model

    options = {
        "train_type": "lora", "lora_rank": 4, "lora_alpha": 8, "lora_dropout": 0.0, "freeze_vision_tower": freeze_tower,
        "packing": False, "gradient_checkpointing": checkpointing, "device": "cpu", "torch_dtype": "float32",
        "per_device_batch_size": 2, "max_steps": 1, "learning_rate": 1e-3, "seed": 0,
    }
    result = sft_benchmark_run(options, samples, build, BenchmarkMeter("cpu", 0), bundle=bundle)
    return held["model"], held["counter"], result


def _lora_grads(model, batch):
    model.zero_grad(set_to_none=True)
    model(**batch).loss.backward()
    return {name: p.grad.clone() for name, p in model.named_parameters() if "lora_" in name and p.grad is not None}


def test_a_frozen_tower_runs_no_backward_and_the_lora_gradients_stay_the_same(samples):
    import torch

    bundle, rows = samples
    model, counter, result = _sft_run(bundle, rows, freeze_tower=True)
    assert result["settings"]["gradient_checkpointing"] is True and "error" not in result
    # Training ran the tower forward, never backward: its patch embedding's output needed no gradient.
    assert counter.patch_output_grad and not any(counter.patch_output_grad)
    assert counter.calls == 0
    assert model.is_gradient_checkpointing and len(model._require_grads_hooks) == 1
    assert model._require_grads_hooks[0].id in model.get_input_embeddings()._forward_hooks

    model.train()
    batch = _batch(bundle, rows)
    checkpointed = _lora_grads(model, batch)
    assert counter.calls == 0 and checkpointed and all(g.abs().sum() > 0 for g in checkpointed.values())
    # transformers' own hook on every input embedding (the tower's patch embedding too): the same gradients,
    # bought with a backward pass through every vision block.
    type(model).enable_input_require_grads(model)
    everywhere = _lora_grads(model, batch)
    assert counter.calls == len(model.model.visual.blocks)
    model.disable_input_require_grads()
    model.gradient_checkpointing_disable()
    plain = _lora_grads(model, batch)
    assert checkpointed.keys() == everywhere.keys() == plain.keys()
    for name in plain:
        torch.testing.assert_close(checkpointed[name], plain[name], rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(everywhere[name], plain[name], rtol=1e-5, atol=1e-7)


def test_a_trained_tower_still_gets_its_gradients(samples):
    import torch

    bundle, rows = samples
    model, _, result = _sft_run(bundle, rows, freeze_tower=False)
    assert result["settings"]["freeze_vision_tower"] is False and "error" not in result

    model.train()
    batch = _batch(bundle, rows)
    # The tower trains whole (peft's trained copy of it): every block's parameters.
    tower = [(name, p) for name, p in model.named_parameters() if ".visual." in name and ".blocks." in name and p.requires_grad]
    assert len(tower) == sum(1 for _ in model.model.visual.original_module.blocks.parameters())

    def tower_grads():
        model.zero_grad(set_to_none=True)
        model(**batch).loss.backward()
        return {name: p.grad.clone() for name, p in tower}

    checkpointed = tower_grads()
    model.gradient_checkpointing_disable()
    plain = tower_grads()
    assert all(g.abs().sum() > 0 for g in checkpointed.values())
    for name in plain:
        torch.testing.assert_close(checkpointed[name], plain[name], rtol=1e-5, atol=1e-7)


def test_the_run_settings_name_the_vision_attention(samples):
    bundle, rows = samples
    _, _, result = _sft_run(bundle, rows, freeze_tower=True, checkpointing=False)
    # On the CPU the tower keeps transformers' sdpa (the one-call kernel is CUDA's).
    assert result["settings"]["vision_attn_implementation"] == "sdpa"


def _vision_run(model, pixel_values, grid):
    visual = model.model.visual
    visual.zero_grad(set_to_none=True)
    pixels = pixel_values.clone().requires_grad_(True)
    out = visual(pixels, grid_thw=grid).pooler_output
    (out * out.detach().cos()).sum().backward()
    return out.detach(), pixels.grad, {name: p.grad.clone() for name, p in visual.named_parameters()}


def test_the_vision_windows_in_one_varlen_call_equal_transformers_per_window_sdpa(samples, monkeypatch):
    import torch
    from transformers.integrations import sdpa_attention

    bundle, rows = samples
    extras = bundle.template.collate_extras([s["extras"] for s in rows])
    pixel_values, grid = extras["pixel_values"], extras["image_grid_thw"]
    assert grid.shape[0] == 4 and grid[0].tolist() == [1, 4, 4]  # 4 images of 4 x 4 patches: 4 windows each
    model = _model(bundle.hf_config)
    model.train()
    calls = []
    original = sdpa_attention.sdpa_attention_forward

    def counted(*args, **kwargs):
        calls.append(args[1].shape[2])
        return original(*args, **kwargs)

    monkeypatch.setattr(sdpa_attention, "sdpa_attention_forward", counted)
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    monkeypatch.setitem(ALL_ATTENTION_FUNCTIONS._global_mapping, "sdpa", counted)
    reference = _vision_run(model, pixel_values, grid)
    # transformers' sdpa path: one call a window (16 of 4 patches) in the first block, one an image (4 of 16) in the second.
    assert calls == [4] * 16 + [16] * 4

    vision_config = model.config.vision_config
    assert use_varlen_vision_attention(vision_config) == "sdpa"  # no CUDA kernel here: the tower keeps sdpa
    assert use_varlen_vision_attention(vision_config, force=True) == "tuneforge_flash_varlen"
    assert vision_config._attn_implementation == "tuneforge_flash_varlen"
    assert model.model.visual.blocks[0].attn.config is vision_config
    calls.clear()
    batched = _vision_run(model, pixel_values, grid)
    # One call a block for all its windows; off CUDA each window is the same sdpa product, computed in turn.
    assert calls == []
    torch.testing.assert_close(batched[0], reference[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(batched[1], reference[1], rtol=1e-5, atol=1e-5)
    assert batched[2].keys() == reference[2].keys()
    for key in reference[2]:
        torch.testing.assert_close(batched[2][key], reference[2][key], rtol=1e-5, atol=1e-5)
