"""The Qwen-VL templates against the official ones: the same text, the same ids after the
processor's own image-pad expansion, the same pixels; the parity check passes on
checkpoints that carry the official templates, and our Jinja renders what we render."""

from pathlib import Path

import copy
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
from tuneforge_vl.qwen_vl import build_qwen2_vl, build_qwen3_vl, build_qwen3_vl_thinking, load_processor
from tuneforge_vl.testing.qwen_vl import MAX_PIXELS, PATCH, tiny_qwen_vl_dir

REFERENCE = Path(__file__).parent / "reference"
# case: (model type, the official template its checkpoint carries, our template's builder, family, template name)
CASES = {
    "qwen2_vl": ("qwen2_vl", "Qwen2-VL-7B-Instruct.jinja", build_qwen2_vl, "qwen2-vl", "qwen2_vl"),
    "qwen2_5_vl": ("qwen2_5_vl", "Qwen2.5-VL-7B-Instruct.jinja", build_qwen2_vl, "qwen2.5-vl", "qwen2_vl"),
    "qwen3_vl": ("qwen3_vl", "Qwen3-VL-8B-Instruct.jinja", build_qwen3_vl, "qwen3-vl", "qwen3_vl"),
    "qwen3_vl_thinking": ("qwen3_vl", "Qwen3-VL-Thinking.jinja", build_qwen3_vl_thinking, "qwen3-vl", "qwen3_vl_thinking"),
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
        case: tiny_qwen_vl_dir(root / case, model_type, chat_template=(REFERENCE / reference).read_text())
        for case, (model_type, reference, *_) in CASES.items()
    }


@pytest.fixture(scope="module")
def processors(checkpoints):
    """Each checkpoint's processor, loaded once."""
    return {case: load_processor(path) for case, path in checkpoints.items()}


def official(processor, messages, generation_prompt: bool):
    """The official template rendered by the processor, then the processor's own image-pad expansion."""
    from tuneforge.api import images_of, load_image

    # a copy: transformers before 5.18 rewrites the parts of the messages it is given (image_url to image)
    rendered = processor.apply_chat_template(copy.deepcopy(messages), tokenize=False, add_generation_prompt=generation_prompt)
    images = [load_image(url) for url in images_of(messages)] or None
    return rendered, processor(text=[rendered], images=images, return_tensors="pt")


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("label", CONVERSATIONS)
def test_encoding_equals_the_official_template_through_the_processor(processors, case, label):
    processor = processors[case]
    template = CASES[case][2](processor)
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


@pytest.mark.parametrize("case", CASES)
def test_only_the_answers_are_learned_never_image_tokens(processors, case):
    processor = processors[case]
    template = CASES[case][2](processor)
    encoded = template.encode(CONVERSATIONS["multi-turn, an image in each user turn"])
    pads = [i for i, token in enumerate(encoded.input_ids) if token == template.image_id]
    grids = encoded.extras["image_grid_thw"]
    assert len(pads) == int((grids.prod(-1) // 4).sum()) > 2
    assert all(encoded.labels[i] == IGNORE_INDEX for i in pads)
    learned = template.tokenizer.decode([t for t in encoded.labels if t != IGNORE_INDEX])
    # Qwen3-VL: the answer to the latest query opens with its (empty) reasoning block; the prompt's
    # "<think>\n" and the block's first "\n" are one token, learned with the answer.
    think = "\n\n</think>\n\n" if case == "qwen3_vl_thinking" else ""
    assert learned == f"Red.<|im_end|>{think}Blue.<|im_end|>"


@pytest.mark.parametrize("case", CASES)
def test_the_parity_check_passes_on_the_official_templates(checkpoints, manager, case):
    family, template_name = CASES[case][3:]
    bundle = resolve_bundle(checkpoints[case], template=template_name)  # checks parity on the probes, raising on drift
    assert (bundle.family.name, bundle.template_name) == (family, template_name)
    report = compare_with_chat_template(bundle.template, bundle.tokenizer, parity_probes(), name=bundle.template_name)
    assert report.ok, report.describe()
    # Qwen2-VL's template renders no tools, so its tool probes are left out; Qwen3-VL's renders them all.
    assert report.compared >= (14 if case.startswith("qwen3") else 8)


@pytest.mark.parametrize("case", CASES)
def test_our_jinja_renders_what_the_template_renders(checkpoints, case):
    """The Jinja a run writes into its output: the parity check passes against it, with images too."""
    processor = load_processor(checkpoints[case])
    template = CASES[case][2](processor)
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
    for case, (model_type, _, _, family_name, template_name) in CASES.items():
        family = records.get("model_families", family_name)
        assert family.model_types == (model_type,)
        assert family.default_template == ("qwen3_vl" if model_type == "qwen3_vl" else template_name)
        assert family.parts.prefixes() == {"language_model": "model.language_model", "vision_tower": "model.visual", "aligner": "model.visual.merger"}
        assert family.options is ImageOptions and tuple(family.lora_target_modules) == LANGUAGE_LINEAR
        assert records.get("chat_templates", template_name).build is not None
    moe = records.get("model_families", "qwen3-vl-moe")
    assert moe.architectures == ("Qwen3VLMoeForConditionalGeneration",) and moe.default_template == "qwen3_vl"
    assert tuple(moe.lora_target_modules) == ("q_proj", "k_proj", "v_proj", "o_proj") and moe.parts == records.get("model_families", "qwen3-vl").parts


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


@pytest.mark.parametrize("case", CASES)
def test_the_pictures_reach_the_model(checkpoints, processors, case):
    """The prompt's extras go to the model beside its ids (its 3D positions derived from them): another picture, other logits."""
    from tuneforge_vl.qwen_vl import load_model

    template = CASES[case][2](processors[case])
    model = load_model(checkpoints[case])
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


# Tools, a call, and a tool result holding a picture (the Qwen3-VL templates render images there too).
TOOLS = [{"type": "function", "function": {"name": "snapshot", "description": "Photograph the board.", "parameters": {"type": "object", "properties": {"room": {"type": "string"}}}}}]
TOOL_CONVERSATION = [
    {"role": "system", "content": "You take notes."},
    {"role": "user", "content": [image(RED), text("Is this board up to date? Check room 4.")]},
    {"role": "assistant", "content": "", "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "snapshot", "arguments": {"room": "4"}}}]},
    {"role": "tool", "tool_call_id": "c1", "content": [image(BLUE, (84, 112)), text("room 4, now")]},
    {"role": "assistant", "content": "No: the board in room 4 is blue now."},
]


@pytest.mark.parametrize("case", ["qwen3_vl", "qwen3_vl_thinking"])
def test_tool_calls_and_a_picture_in_a_tool_result_equal_the_official_template(processors, case):
    from tuneforge.api import images_of, load_image

    processor = processors[case]
    template = CASES[case][2](processor)
    for messages, generation_prompt in ((TOOL_CONVERSATION, False), (TOOL_CONVERSATION[:-1], True)):
        rendered = processor.apply_chat_template(copy.deepcopy(messages), tools=TOOLS, tokenize=False, add_generation_prompt=generation_prompt)
        expected = processor(text=[rendered], images=[load_image(url) for url in images_of(messages)], return_tensors="pt")
        assert template.text(messages, TOOLS, add_generation_prompt=generation_prompt) == rendered
        ids = template.prompt(messages, TOOLS) if generation_prompt else template.encode(messages, TOOLS).input_ids
        assert ids == expected["input_ids"][0].tolist()
    tokenizer = processor.tokenizer
    own = tokenizer.chat_template
    try:
        tokenizer.chat_template = template.jinja()
        assert tokenizer.apply_chat_template(TOOL_CONVERSATION, tools=TOOLS, tokenize=False) == template.text(TOOL_CONVERSATION, TOOLS)
    finally:
        tokenizer.chat_template = own


def test_qwen3_vl_instruct_refuses_what_its_official_template_drops(processors):
    template = build_qwen3_vl(processors["qwen3_vl"])
    later_system = [{"role": "user", "content": "Hi"}, {"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    with pytest.raises(TemplateError, match=r"^Template 'qwen3_vl' cannot render message 2, of role 'system' \(the official template leaves it out\)"):
        template.encode(later_system)
    picture_answer = [{"role": "user", "content": "Draw"}, {"role": "assistant", "content": [image(RED)]}]
    with pytest.raises(TemplateError, match=r"^Message 2 \(assistant\) part 1 is of type 'image_url', which template 'qwen3_vl' has no place for"):
        template.encode(picture_answer)


def test_a_thinking_checkpoint_run_with_the_instruct_template_stops_before_loading(checkpoints, manager):
    """The family's default (Instruct) template on a Qwen3-VL Thinking checkpoint: the parity check says what differs."""
    from tuneforge.api import TemplateDriftError

    with pytest.raises(TemplateDriftError) as drift:
        resolve_bundle(checkpoints["qwen3_vl_thinking"])
    assert "tuneforge's template 'qwen3_vl' lay out conversations differently" in str(drift.value)
    assert "</think>" in str(drift.value) and "a --template that matches it" in str(drift.value)


@pytest.mark.parametrize("model_type", ["qwen2_vl", "qwen2_5_vl"])
def test_the_tiny_builder_makes_heads_of_the_width_asked(tmp_path, model_type):
    """``head_dim=64``: the width vLLM's CPU attention takes, in both towers; M-RoPE's sections fill half a head."""
    import json

    config = json.loads((Path(tiny_qwen_vl_dir(tmp_path / model_type, model_type, head_dim=64)) / "config.json").read_text())
    text, vision = config["text_config"], config["vision_config"]
    assert text["hidden_size"] // text["num_attention_heads"] == 64
    assert (vision.get("embed_dim") or vision["hidden_size"]) // vision["num_heads"] == 64
    assert sum(text["rope_parameters"]["mrope_section"]) == 32
    with pytest.raises(ValueError, match=r"^head_dim 64 is for qwen2_vl and qwen2_5_vl; qwen3_vl is built with 16-wide heads\.$"):
        tiny_qwen_vl_dir(tmp_path / "qwen3", "qwen3_vl", head_dim=64)
