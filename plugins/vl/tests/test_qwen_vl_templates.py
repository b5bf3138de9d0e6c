"""The Qwen-VL templates against the official ones: the same text, the same ids after the
processor's own image-pad expansion, the same pixels; the parity check passes on
checkpoints that carry the official templates, and our Jinja renders what we render."""

from pathlib import Path

import pytest
import torch

from tuneforge.api import (
    IGNORE_INDEX,
    TemplateError,
    TuneforgeError,
    compare_with_chat_template,
    parity_probes,
    resolve_bundle,
)
from tuneforge.testing.vlm import image_data_url
from tuneforge_vl.options import ImageOptions
from tuneforge_vl.qwen_vl import build_qwen2_vl, build_qwen3_vl, load_processor
from tuneforge_vl.testing.qwen_vl import MAX_PIXELS, PATCH, tiny_qwen_vl_dir

REFERENCE = Path(__file__).parent / "reference"
# (model type, the official template it carries, our template's builder, family, template name)
CASES = {
    "qwen2_vl": ("Qwen2-VL-7B-Instruct.jinja", build_qwen2_vl, "qwen2-vl", "qwen2_vl"),
    "qwen2_5_vl": ("Qwen2.5-VL-7B-Instruct.jinja", build_qwen2_vl, "qwen2.5-vl", "qwen2_vl"),
    "qwen3_vl": ("Qwen3-VL-Thinking.jinja", build_qwen3_vl, "qwen3-vl", "qwen3_vl"),
}
RED, BLUE, GREEN = (220, 20, 20), (20, 20, 220), (20, 200, 20)


def image(colour, size=(112, 84)) -> dict:
    return {"type": "image_url", "image_url": {"url": image_data_url(colour, size)}}


def text(value: str) -> dict:
    return {"type": "text", "text": value}


# Conversations with and without images, system prompts, several images, several turns.
CONVERSATIONS = {
    "one image": [
        {"role": "user", "content": [image(RED), text("What colour is this?")]},
        {"role": "assistant", "content": "Red."},
    ],
    "system prompt, image after the text": [
        {"role": "system", "content": "You read whiteboards."},
        {"role": "user", "content": [text("Read this board:"), image(BLUE, (200, 120))]},
        {"role": "assistant", "content": "It says: budget review on Friday."},
    ],
    "two images in one turn": [
        {"role": "user", "content": [image(RED), image(GREEN, (56, 140)), text("Which is green?")]},
        {"role": "assistant", "content": "The second."},
    ],
    "multi-turn, an image in each user turn": [
        {"role": "user", "content": [image(RED), text("Colour?")]},
        {"role": "assistant", "content": "Red."},
        {"role": "user", "content": [text("And this one?"), image(BLUE)]},
        {"role": "assistant", "content": "Blue."},
    ],
    "text only, list content": [
        {"role": "system", "content": [text("Be brief.")]},
        {"role": "user", "content": [text("Hello?")]},
        {"role": "assistant", "content": "Hi."},
    ],
    "text only, strings": [
        {"role": "user", "content": "Two plus two?"},
        {"role": "assistant", "content": "Four."},
    ],
}


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """Each tiny checkpoint with its official chat template."""
    root = tmp_path_factory.mktemp("qwen-vl")
    return {
        model_type: tiny_qwen_vl_dir(root / model_type, model_type, chat_template=(REFERENCE / reference).read_text())
        for model_type, (reference, *_) in CASES.items()
    }


@pytest.fixture(scope="module")
def processors(checkpoints):
    """Each checkpoint's processor, loaded once."""
    return {model_type: load_processor(path) for model_type, path in checkpoints.items()}


def official(processor, messages, generation_prompt: bool):
    """The official template rendered by the processor, then the processor's own image-pad expansion."""
    from tuneforge.api import images_of, load_image

    rendered = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)
    images = [load_image(url) for url in images_of(messages)] or None
    return rendered, processor(text=[rendered], images=images, return_tensors="pt")


@pytest.mark.parametrize("model_type", CASES)
@pytest.mark.parametrize("label", CONVERSATIONS)
def test_encoding_equals_the_official_template_through_the_processor(processors, model_type, label):
    processor = processors[model_type]
    template = CASES[model_type][1](processor)
    messages = CONVERSATIONS[label]

    rendered, expected = official(processor, messages, generation_prompt=False)
    assert template.text(messages) == rendered
    encoded = template.encode(messages)
    assert encoded.input_ids == expected["input_ids"][0].tolist()
    for key in ("pixel_values", "image_grid_thw"):
        if key in expected:
            assert torch.equal(encoded.extras[key], expected[key])
        else:
            assert key not in encoded.extras

    prompt_text, prompt = official(processor, messages[:-1], generation_prompt=True)
    assert template.text(messages[:-1], add_generation_prompt=True) == prompt_text
    assert template.prompt(messages[:-1]) == prompt["input_ids"][0].tolist()


@pytest.mark.parametrize("model_type", CASES)
def test_only_the_answers_are_learned_never_image_tokens(processors, model_type):
    processor = processors[model_type]
    template = CASES[model_type][1](processor)
    encoded = template.encode(CONVERSATIONS["multi-turn, an image in each user turn"])
    pads = [i for i, token in enumerate(encoded.input_ids) if token == template.image_id]
    grids = encoded.extras["image_grid_thw"]
    assert len(pads) == int((grids.prod(-1) // 4).sum()) > 2
    assert all(encoded.labels[i] == IGNORE_INDEX for i in pads)
    learned = template.tokenizer.decode([t for t in encoded.labels if t != IGNORE_INDEX])
    # Qwen3-VL: the answer to the latest query opens with its (empty) reasoning block; the prompt's
    # "<think>\n" and the block's first "\n" are one token, learned with the answer.
    think = "\n\n</think>\n\n" if model_type == "qwen3_vl" else ""
    assert learned == f"Red.<|im_end|>{think}Blue.<|im_end|>"


@pytest.mark.parametrize("model_type", CASES)
def test_the_parity_check_passes_on_the_official_templates(checkpoints, manager, model_type):
    bundle = resolve_bundle(checkpoints[model_type])  # checks parity on the probes, raising on drift
    family, template_name = CASES[model_type][2:]
    assert (bundle.family.name, bundle.template_name) == (family, template_name)
    report = compare_with_chat_template(bundle.template, bundle.tokenizer, parity_probes(), name=bundle.template_name)
    assert report.ok, report.describe()
    # Qwen2-VL's template renders no tools, so its tool probes are left out; Qwen3-VL's renders them all.
    assert report.compared >= (8 if model_type != "qwen3_vl" else 14)


@pytest.mark.parametrize("model_type", CASES)
def test_our_jinja_renders_what_the_template_renders(checkpoints, model_type):
    """The Jinja a run writes into its output: the parity check passes against it, with images too."""
    processor = load_processor(checkpoints[model_type])
    template = CASES[model_type][1](processor)
    tokenizer = processor.tokenizer
    tokenizer.chat_template = template.jinja()
    report = compare_with_chat_template(template, tokenizer, parity_probes())
    assert report.ok, report.describe()
    for messages in CONVERSATIONS.values():
        for cut, generation_prompt in ((len(messages), False), (len(messages) - 1, True)):
            part = messages[:cut]
            rendered = tokenizer.apply_chat_template(part, tokenize=False, add_generation_prompt=generation_prompt)
            assert rendered == template.text(part, add_generation_prompt=generation_prompt)


def test_qwen2_vl_refuses_tools_it_would_drop(checkpoints):
    template = build_qwen2_vl(load_processor(checkpoints["qwen2_vl"]))
    tools = [{"type": "function", "function": {"name": "f", "parameters": {}}}]
    with pytest.raises(TemplateError, match=r"^Template 'qwen2_vl' has no place for tools \(the official Qwen2-VL template leaves them out\)"):
        template.encode([{"role": "user", "content": "Hi"}], tools=tools)


def test_a_text_part_holding_an_image_pad_is_refused(checkpoints):
    template = build_qwen2_vl(load_processor(checkpoints["qwen2_vl"]))
    messages = [{"role": "user", "content": [image(RED), text("<|image_pad|>")]}, {"role": "assistant", "content": "?"}]
    with pytest.raises(TemplateError, match=r"^The conversation renders 2 <\|image_pad\|> tokens for 1 images"):
        template.encode(messages)


def test_max_pixels_changes_the_number_of_image_tokens(checkpoints):
    path = checkpoints["qwen2_5_vl"]
    messages = [{"role": "user", "content": [image(RED, (224, 224)), text("Colour?")]}]

    def image_tokens(options):
        template = build_qwen2_vl(load_processor(path, options=options))
        return template.prompt(messages).count(template.image_id)

    side = PATCH["qwen2_5_vl"] * 2  # one image token's side in pixels
    assert image_tokens(None) == MAX_PIXELS["qwen2_5_vl"] // side**2 == 4
    assert image_tokens(ImageOptions(max_pixels=side * side)) == 1
    assert image_tokens(ImageOptions(max_pixels=(3 * side) ** 2)) == 9 > image_tokens(None)


def test_pixel_bounds_smaller_than_an_image_token_are_refused(checkpoints):
    with pytest.raises(TuneforgeError, match=r"^--max-pixels is 100, smaller than one image token's area \(28 x 28 = 784 pixels\); give at least 784\.$"):
        load_processor(checkpoints["qwen2_vl"], options=ImageOptions(max_pixels=100))
    with pytest.raises(TuneforgeError, match=r"^--min-pixels is 9000, more than --max-pixels 1000; give a --min-pixels no larger than --max-pixels\.$"):
        load_processor(checkpoints["qwen2_vl"], options=ImageOptions(max_pixels=1000, min_pixels=9000))


def test_the_families_and_templates_are_registered(manager):
    from tuneforge.testing import registry

    from tuneforge_vl.qwen_vl import LANGUAGE_LINEAR

    records = registry(manager)
    for model_type, (_, _, family_name, template_name) in CASES.items():
        family = records.get("model_families", family_name)
        assert family.model_types == (model_type,) and family.default_template == template_name
        assert family.parts.prefixes() == {"language_model": "model.language_model", "vision_tower": "model.visual", "aligner": "model.visual.merger"}
        assert family.options is ImageOptions and tuple(family.lora_target_modules) == LANGUAGE_LINEAR
        assert records.get("chat_templates", template_name).build is not None


def test_rows_with_and_without_images_train_in_one_batch(checkpoints, processors):
    """The collated extras hold only the pictures of the rows that have some; the model takes the batch."""
    from tuneforge_vl.qwen_vl import load_model

    template = build_qwen2_vl(processors["qwen2_5_vl"])
    samples = [template.encode(CONVERSATIONS["text only, strings"]), template.encode(CONVERSATIONS["two images in one turn"])]
    extras = template.collate_extras([s.extras for s in samples])
    assert extras["image_grid_thw"].shape == (2, 3)
    width = max(len(s) for s in samples)
    pad = template.tokenizer.pad_token_id
    ids = torch.tensor([s.input_ids + [pad] * (width - len(s)) for s in samples])
    labels = torch.tensor([s.labels + [IGNORE_INDEX] * (width - len(s)) for s in samples])
    mask = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in samples])
    model = load_model(checkpoints["qwen2_5_vl"])
    loss = model(input_ids=ids, attention_mask=mask, labels=labels, **extras).loss
    assert torch.isfinite(loss) and loss.item() > 0


@pytest.mark.parametrize("model_type", CASES)
def test_the_pictures_reach_the_model(checkpoints, processors, model_type):
    """The prompt's extras go to the model beside its ids (its 3D positions derived from them): another picture, other logits."""
    from tuneforge_vl.qwen_vl import load_model

    template = CASES[model_type][1](processors[model_type])
    model = load_model(checkpoints[model_type])
    logits = []
    for colour in (RED, BLUE, RED):
        messages = [{"role": "user", "content": [image(colour), text("Colour?")]}]
        ids = torch.tensor([template.prompt(messages)])
        with torch.no_grad():
            logits.append(model(input_ids=ids, **template.prompt_extras(messages)).logits[0, -1])
    assert torch.equal(logits[0], logits[2]) and not torch.allclose(logits[0], logits[1])
    # Generation takes the same extras (and derives the same positions) as a forward pass.
    messages = [{"role": "user", "content": [image(RED), text("Colour?")]}]
    ids = torch.tensor([template.prompt(messages)])
    generated = model.generate(input_ids=ids, max_new_tokens=1, do_sample=False, **template.prompt_extras(messages))
    assert generated[0, -1].item() == int(logits[0].argmax())
