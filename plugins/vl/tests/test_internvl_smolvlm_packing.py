"""Packing SmolVLM, Idefics3 and InternVL3 samples with images: a packed row gives the padded batch's loss and gradients.

These models' language sides take 1D positions and fill a batch's image tokens with its images
in order, so their templates say their extras pack. Three samples of different lengths with
one, two and one pictures (different tile counts), through each tiny random-weight checkpoint
in float32 with sdpa attention; the control (positions that do not restart) differs.
"""

import pytest
from imageprobes import BLUE, RED

from tuneforge.api import IGNORE_INDEX
from tuneforge.testing.vlm import collate, image_file
from tuneforge_vl.testing import tiny_internvl_dir, tiny_smolvlm_dir

GREEN = (20, 200, 20)


def picture(url: str) -> dict:
    return {"type": "image_url", "image_url": {"url": url}}


def conversations(folder) -> list[list[dict]]:
    red = image_file(folder / "red.png", RED, (32, 32))
    wide = image_file(folder / "wide.png", BLUE, (64, 32))
    tall = image_file(folder / "tall.png", GREEN, (32, 64))
    return [
        [{"role": "user", "content": [picture(red), {"type": "text", "text": "Colour?"}]}, {"role": "assistant", "content": "Red, as you see."}],
        [
            {"role": "user", "content": [picture(wide), picture(tall), {"type": "text", "text": "Compare these two please"}]},
            {"role": "assistant", "content": "Blue and green."},
        ],
        [{"role": "user", "content": [{"type": "text", "text": "And this one"}, picture(tall)]}, {"role": "assistant", "content": "Green."}],
    ]


@pytest.fixture(scope="module", params=["smolvlm", "idefics3", "internvl3"])
def family(request, tmp_path_factory):
    """(model, template, samples) of one tiny checkpoint, in float32 with sdpa attention."""
    import torch

    import tuneforge_vl.internvl as internvl
    import tuneforge_vl.smolvlm as smolvlm

    name = request.param
    folder = tmp_path_factory.mktemp(name)
    if name == "internvl3":
        path = tiny_internvl_dir(folder / "model")
        module, template = internvl, internvl.InternVLTemplate(internvl.load_processor(path))
    else:
        path = tiny_smolvlm_dir(folder / "model", architecture=name)
        processor = smolvlm._loader("SmolVLMProcessor" if name == "smolvlm" else "Idefics3Processor")(path)
        module, template = smolvlm, smolvlm.SmolVLMTemplate(processor)
    model = module.load_model(path, dtype=torch.float32, attn_implementation="sdpa")
    samples = []
    for messages in conversations(folder):
        encoded = template.encode(messages)
        samples.append({"input_ids": encoded.input_ids, "labels": encoded.labels, "extras": encoded.extras})
    assert len({len(s["input_ids"]) for s in samples}) == 3
    return model, template, samples


def token_logits(model, batch):
    logits = model(**batch).logits
    return logits[batch["attention_mask"].bool()] if "attention_mask" in batch else logits[0]


def test_a_packed_row_gives_the_loss_and_gradients_of_the_padded_batch(family):
    import torch

    model, template, samples = family
    assert template.packs_extras
    padded, packed = collate(template, samples, packing=False), collate(template, samples, packing=True)
    assert packed["input_ids"].shape == (1, sum(len(s["input_ids"]) for s in samples)) and "attention_mask" not in packed
    assert (packed["labels"] != IGNORE_INDEX).sum() == (padded["labels"][:, 1:] != IGNORE_INDEX).sum()
    with torch.no_grad():
        reference = token_logits(model, padded)
        torch.testing.assert_close(token_logits(model, packed), reference, rtol=1e-5, atol=1e-5)
        # The control: positions running on across the samples let each attend to the ones before it.
        running = dict(packed, position_ids=torch.arange(packed["input_ids"].shape[1])[None])
        assert (token_logits(model, running) - reference).abs().max() > 1e-3
    grads = []
    for batch in (padded, packed):
        model.zero_grad(set_to_none=True)
        loss = model(**batch).loss
        loss.backward()
        grads.append((loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}))
    (padded_loss, padded_grads), (packed_loss, packed_grads) = grads
    torch.testing.assert_close(packed_loss, padded_loss, rtol=1e-5, atol=1e-6)
    assert set(packed_grads) == set(padded_grads)
    for name, grad in padded_grads.items():
        torch.testing.assert_close(packed_grads[name], grad, rtol=1e-4, atol=1e-6, msg=lambda m: f"{name}: {m}")
