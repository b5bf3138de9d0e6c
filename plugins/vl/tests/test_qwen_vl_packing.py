"""Packing Qwen-VL samples with images: a packed row gives the loss and gradients of the padded batch.

Three samples (no picture, one, two of different shapes) of different lengths, packed into one
row by the core's ``PackingCollator`` and right-padded by its ``PaddingCollator``, through each
family's tiny random-weight checkpoint in float32: the loaded model computes each packed
sample's M-RoPE positions (``packed_position_ids``), so both batches give the same loss and
gradients. Without those positions (the text positions on every row) the logits differ. Then
``sft --packing`` trains on image rows and no longer says they are not packed, while a family
whose template does not pack them (SmolVLM) still says so.
"""

import json

import pytest

from tuneforge.api import IGNORE_INDEX
from tuneforge.testing import run_cli
from tuneforge.testing.vlm import collate, image_file
from tuneforge_vl.testing import tiny_qwen_vl_dir, tiny_smolvlm_dir

RED, BLUE, GREEN = (220, 20, 20), (20, 20, 220), (20, 200, 20)
BUILDERS = {"qwen2_vl": "build_qwen2_vl", "qwen2_5_vl": "build_qwen2_vl", "qwen3_vl": "build_qwen3_vl"}


def picture(url: str) -> dict:
    return {"type": "image_url", "image_url": {"url": url}}


def conversations(folder) -> list[list[dict]]:
    red = image_file(folder / "red.png", RED, (112, 112))
    wide = image_file(folder / "wide.png", BLUE, (112, 56))  # a grid wider than tall: its M-RoPE rows differ
    tall = image_file(folder / "tall.png", GREEN, (56, 112))
    return [
        [{"role": "user", "content": "Say something short."}, {"role": "assistant", "content": "Something short, as asked."}],
        [{"role": "user", "content": [picture(red), {"type": "text", "text": "What colour?"}]}, {"role": "assistant", "content": "Red."}],
        [
            {"role": "user", "content": [{"type": "text", "text": "Compare"}, picture(wide), picture(tall), {"type": "text", "text": "please."}]},
            {"role": "assistant", "content": "The first is blue and wide, the second green and tall."},
        ],
    ]


@pytest.fixture(scope="module", params=list(BUILDERS))
def family(request, tmp_path_factory):
    """(model, template, samples) of one tiny Qwen-VL checkpoint, in float32 with sdpa attention."""
    import torch

    import tuneforge_vl.qwen_vl as qwen_vl

    model_type = request.param
    folder = tmp_path_factory.mktemp(model_type)
    path = tiny_qwen_vl_dir(folder / "model", model_type)
    template = getattr(qwen_vl, BUILDERS[model_type])(qwen_vl.load_processor(path))
    model = qwen_vl.load_model(path, dtype=torch.float32, attn_implementation="sdpa")
    samples = []
    for messages in conversations(folder):
        encoded = template.encode(messages)
        samples.append({"input_ids": encoded.input_ids, "labels": encoded.labels, "extras": encoded.extras})
    assert [len(s["extras"].get("image_grid_thw", ())) for s in samples] == [0, 1, 2]
    assert len({len(s["input_ids"]) for s in samples}) == 3
    return model, template, samples


def loss_and_grads(model, batch):
    model.zero_grad(set_to_none=True)
    loss = model(**batch).loss
    loss.backward()
    grads = {name: p.grad.detach().clone() for name, p in model.named_parameters() if p.grad is not None}
    return loss.detach(), grads


def token_logits(model, batch):
    """The logits of the batch's real tokens, sample after sample (``[tokens, vocabulary]``)."""
    logits = model(**batch).logits
    if "attention_mask" in batch:
        return logits[batch["attention_mask"].bool()]
    return logits[0]


def test_a_packed_row_gives_the_loss_and_gradients_of_the_padded_batch(family):
    import torch

    model, template, samples = family
    padded, packed = collate(template, samples, packing=False), collate(template, samples, packing=True)
    total = sum(len(s["input_ids"]) for s in samples)
    assert packed["input_ids"].shape == (1, total) and "attention_mask" not in packed
    assert torch.equal(packed["image_grid_thw"], padded["image_grid_thw"]) and packed["image_grid_thw"].shape[0] == 3
    # As many tokens are learned either way (the first label of each packed sample is never predicted in either).
    assert (packed["labels"] != IGNORE_INDEX).sum() == (padded["labels"][:, 1:] != IGNORE_INDEX).sum()

    with torch.no_grad():
        torch.testing.assert_close(token_logits(model, packed), token_logits(model, padded), rtol=1e-5, atol=1e-5)
    padded_loss, padded_grads = loss_and_grads(model, padded)
    packed_loss, packed_grads = loss_and_grads(model, packed)
    torch.testing.assert_close(packed_loss, padded_loss, rtol=1e-5, atol=1e-6)
    assert set(packed_grads) == set(padded_grads) and any(".visual." in name for name in packed_grads)
    for name, grad in padded_grads.items():
        torch.testing.assert_close(packed_grads[name], grad, rtol=1e-4, atol=1e-6, msg=lambda m: f"{name}: {m}")


def test_the_samples_bounds_in_a_packed_row_do_not_reach_the_vision_tower(family):
    """A packed row with the samples' cumulative lengths (as sft hands them to its varlen attention)
    through a vision tower whose windows go in one variable-length call: the tower keeps its own
    windows' bounds (the language model's would clash with them), and the logits are the padded batch's."""
    import torch

    from tuneforge.api import use_varlen_vision_attention

    model, template, samples = family
    vision = model.config.vision_config
    before = vision._attn_implementation
    use_varlen_vision_attention(vision, force=True)  # off CUDA it runs the windows one by one: the same numbers
    try:
        packed = collate(template, samples, packing=True, boundaries=True)
        assert "cu_seq_lens_q" in packed
        with torch.no_grad():
            torch.testing.assert_close(
                token_logits(model, packed), token_logits(model, collate(template, samples, packing=False)), rtol=1e-5, atol=1e-5
            )
    finally:
        vision._attn_implementation = before


def test_the_vision_tower_ignores_the_language_models_sample_bounds(family):
    """Some transformers versions hand the model's keyword arguments (a packed batch's ``cu_seq_lens_q`` ...)
    on to the vision tower, where the one-call window attention takes its own: the tower drops them."""
    import torch

    from tuneforge.api import use_varlen_vision_attention

    model, template, samples = family
    vision = model.config.vision_config
    before = vision._attn_implementation
    use_varlen_vision_attention(vision, force=True)
    try:
        packed = collate(template, samples, packing=True, boundaries=True)
        bounds = {key: packed[key] for key in ("cu_seq_lens_q", "cu_seq_lens_k", "max_length_q", "max_length_k")}
        tower = model.model.visual
        with torch.no_grad():
            alone = tower(packed["pixel_values"], grid_thw=packed["image_grid_thw"])
            beside = tower(packed["pixel_values"], grid_thw=packed["image_grid_thw"], **bounds)
        torch.testing.assert_close(beside.pooler_output, alone.pooler_output)
    finally:
        vision._attn_implementation = before


def test_without_each_samples_m_rope_positions_the_logits_differ(family):
    """The control: the packed row with its text positions on all four rows (images placed as text) is another
    model's output, by far more than packing with the M-RoPE positions differs from padding."""
    import torch

    model, template, samples = family
    padded, packed = collate(template, samples, packing=False), collate(template, samples, packing=True)
    with torch.no_grad():
        reference = token_logits(model, padded)
        right = (token_logits(model, packed) - reference).abs().max()
        packed["position_ids"] = packed["position_ids"][None].expand(4, 1, -1)
        flat = (token_logits(model, packed) - reference).abs().max()
    assert right < 1e-5 and flat > 1e-3 and flat > 1000 * right, (float(right), float(flat))


def test_a_packed_text_row_keeps_each_sample_to_itself(family):
    """Text-only rows: the same loss as the padded batch (transformers reads the samples' bounds from row 0)."""
    import torch

    model, template, samples = family
    texts = [samples[0], {**samples[0], "input_ids": samples[0]["input_ids"][:-3], "labels": samples[0]["labels"][:-3]}]
    with torch.no_grad():
        padded = token_logits(model, collate(template, texts, packing=False))
        packed = token_logits(model, collate(template, texts, packing=True))
    torch.testing.assert_close(packed, padded, rtol=1e-5, atol=1e-5)


def image_rows(folder, count: int = 4) -> str:
    rows = []
    for n, colour in enumerate((RED, BLUE) * (count // 2)):
        url = image_file(folder / f"picture-{n}.png", colour, (112, 112 - 28 * (n % 2)))
        answer = "Red." if colour == RED else "Blue."
        rows.append({"messages": [
            {"role": "user", "content": [picture(url), {"type": "text", "text": "What colour is the picture?"}]},
            {"role": "assistant", "content": answer},
        ]})
    data = folder / "pictures.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(data)


@pytest.mark.parametrize("model_type, attention", [("qwen2_5_vl", "sdpa"), ("qwen3_vl", "tuneforge_varlen"), ("smolvlm", "sdpa")])
def test_sft_packing_trains_on_image_rows_without_saying_they_are_not_packed(manager, tmp_path, model_type, attention):
    """``tuneforge_varlen`` (the default for packed training on CUDA) also gets the samples' bounds from the collator."""
    model = tiny_qwen_vl_dir(tmp_path / "model", model_type) if model_type != "smolvlm" else tiny_smolvlm_dir(tmp_path / "model")
    out = tmp_path / "out"
    result = run_cli(
        "sft", "--model", model, "--dataset", image_rows(tmp_path), "--output-dir", out, "--train-type", "lora",
        "--packing", "--attn-implementation", attention, "--max-steps", 6, "--learning-rate", 1e-2,
        "--per-device-batch-size", 2, "--logging-steps", 2, "--save-steps", 1000, "--max-length", 256, "--seed", 0,
    )
    record = json.loads((out / "tuneforge_run.json").read_text())
    assert record["config"]["packing"] is True and record["config"]["attn_implementation"] == attention
    assert record["data"]["packing"] == "" and "not packed" not in result.output
    state = json.loads(next(out.glob("checkpoint-*/trainer_state.json")).read_text())
    losses = [entry["loss"] for entry in state["log_history"] if "loss" in entry]
    assert len(losses) >= 3 and losses[-1] < losses[0], losses


def test_sft_packing_still_says_so_where_the_template_does_not_pack(tmp_path):
    """The core's test vision model: its template leaves ``packs_extras`` False, so image batches are padded and the run says it."""
    from tuneforge.testing import plugin_installed, vlm_plugin
    from tuneforge.testing.vlm import tiny_vlm_dir

    out = tmp_path / "out"
    with plugin_installed(vlm_plugin, "tiny-vlm", "tuneforge-tiny-vlm"):
        result = run_cli(
            "sft", "--model", tiny_vlm_dir(tmp_path / "model"), "--dataset", image_rows(tmp_path), "--output-dir", out,
            "--train-type", "lora", "--packing", "--max-steps", 1, "--per-device-batch-size", 2, "--max-length", 256,
        )
    statement = "4 training samples of 4 carry images (or other extras) and are not packed"
    assert result.output.count(statement) == 1
    assert json.loads((out / "tuneforge_run.json").read_text())["data"]["packing"].startswith(statement)
