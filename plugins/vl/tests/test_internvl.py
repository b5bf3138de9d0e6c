"""InternVL3 (-hf) through transformers' native classes: the family, its template against the official one
rendered through the processor, the parity check, image size options."""

import pytest
from imageprobes import RED, conversations, official_ids, reference_template

from tuneforge.api import IGNORE_INDEX, TuneforgeError, compare_with_chat_template, parity_probes, resolve_bundle
from tuneforge.testing.vlm import image_file
from tuneforge_vl.internvl import load_processor
from tuneforge_vl.options import ImageOptions
from tuneforge_vl.testing.internvl import IMAGE_SEQ_LENGTH, TILE, tiny_internvl_dir


@pytest.fixture(scope="module")
def internvl_dir(tmp_path_factory):
    return tiny_internvl_dir(tmp_path_factory.mktemp("internvl") / "tiny-internvl3", chat_template=reference_template("internvl3-hf.jinja"))


@pytest.fixture
def bundle(manager, internvl_dir):
    return resolve_bundle(internvl_dir)


@pytest.fixture(scope="module")
def probes(tmp_path_factory):
    return conversations(tmp_path_factory.mktemp("internvl-images"))


def test_the_family_names_its_parts_and_lora_targets(bundle):
    from transformers import InternVLForConditionalGeneration

    assert bundle.family.name == "internvl3" and bundle.template_name == "internvl3"
    assert bundle.template_parity["differences"] == 0  # checked when the bundle resolved
    model = InternVLForConditionalGeneration.from_pretrained(bundle.resolved.base_path)
    names = {name for name, _ in model.named_modules()}
    for prefix in bundle.family.parts.prefixes().values():
        assert prefix in names, prefix
    linear = {name.rsplit(".", 1)[-1] for name in names if name.startswith("model.language_model.layers.")}
    assert set(bundle.family.lora_target_modules) <= linear


def test_the_template_matches_the_checkpoints_own_on_the_parity_probes(bundle):
    report = compare_with_chat_template(bundle.template, bundle.tokenizer, parity_probes())
    assert report.ok, report.describe()
    assert report.compared >= 6  # the tool probes are left out: the official template renders no tools
    assert any("tools" in note for note in report.left_out)


@pytest.mark.parametrize("label", ["text only", "system prompt and an image", "an image first, then text", "several images over several turns"])
def test_encoding_equals_the_official_template_through_the_processor(bundle, probes, label):
    import torch

    messages = probes[label]
    template, processor = bundle.template, bundle.processor
    ids, pixels = official_ids(processor, messages, generation_prompt=False, nested=False)
    encoded = template.encode(messages)
    assert encoded.input_ids == ids
    assert encoded.extras.keys() == pixels.keys()
    for key, value in pixels.items():
        assert torch.equal(encoded.extras[key], value), key
    prompt_ids, _ = official_ids(processor, messages[:-1], generation_prompt=True, nested=False)
    assert template.prompt(messages[:-1]) == prompt_ids
    # the text rendering is the official one (an image part as <IMG_CONTEXT>), and so is this template's Jinja
    official = processor.tokenizer.apply_chat_template(
        [{**m, "content": m["content"] if isinstance(m["content"], str) else [
            {"type": "image"} if p["type"] == "image_url" else p for p in m["content"]]} for m in messages],
        tokenize=False,
    )
    assert template.text(messages) == official
    assert processor.tokenizer.apply_chat_template(messages, chat_template=template.jinja(), tokenize=False) == official


def test_only_answers_are_learned_never_image_tokens(bundle, probes):
    messages = probes["several images over several turns"]
    encoded = bundle.template.encode(messages)
    tokenizer = bundle.tokenizer
    learned = tokenizer.decode([t for t, label in zip(encoded.input_ids, encoded.labels) if label != IGNORE_INDEX])
    assert learned == "The first is red, the second green.<|im_end|>Blue.<|im_end|>You are welcome.<|im_end|>"
    image_ids = {tokenizer.convert_tokens_to_ids(t) for t in ("<img>", "</img>", "<IMG_CONTEXT>")}
    assert encoded.input_ids.count(tokenizer.convert_tokens_to_ids("<img>")) == 3
    everything = bundle.template.encode(messages, train_on_prompt=True)
    assert not any(label in image_ids for label in everything.labels)
    assert sum(label != IGNORE_INDEX for label in everything.labels) > encoded.num_learned


def test_tools_are_refused_with_a_sentence(bundle):
    with pytest.raises(TuneforgeError, match=r"^Template 'internvl3' has no layout for tools or tool calls"):
        bundle.template.encode([{"role": "user", "content": "Hi"}], tools=[{"type": "function", "function": {"name": "f"}}])


def test_max_pixels_sets_the_number_of_tiles(manager, internvl_dir, tmp_path):
    from tuneforge.api import build_template

    picture = image_file(tmp_path / "wide.png", RED, (2 * TILE, TILE))
    messages = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": picture}}, {"type": "text", "text": "?"}]}]

    def tiles(options):
        template = build_template("internvl3", load_processor(internvl_dir, options=options))
        context = template.tokenizer.convert_tokens_to_ids("<IMG_CONTEXT>")
        return template.prompt(messages).count(context) // IMAGE_SEQ_LENGTH, template.prompt_extras(messages)["pixel_values"].shape[0]

    assert tiles(None) == (3, 3)  # two tiles side by side and the thumbnail
    assert tiles(ImageOptions(max_pixels=TILE * TILE)) == (1, 1)
    assert tiles(ImageOptions(min_pixels=3 * TILE * TILE)) == (4, 4)  # at least 3 tiles: a 3x1 grid and the thumbnail
    with pytest.raises(TuneforgeError, match=r"^--max-pixels is 100, less than one InternVL tile \(32x32 = 1024 pixels\); give at least 1024\.$"):
        load_processor(internvl_dir, options=ImageOptions(max_pixels=100))


def test_the_processors_chat_template_is_the_one_compared(manager, internvl_dir, tmp_path):
    """A checkpoint whose tokenizer carries another template (an InternVL3-hf tokenizer comes from Qwen2.5-VL) and
    whose processor's is in chat_template.json: the processor's is the model's own, so the tokenizer is given it."""
    import json
    import shutil

    folder = tmp_path / "legacy"
    shutil.copytree(internvl_dir, folder)
    official = (folder / "chat_template.jinja").read_text()
    (folder / "chat_template.jinja").unlink()
    (folder / "chat_template.json").write_text(json.dumps({"chat_template": official}))
    config = json.loads((folder / "tokenizer_config.json").read_text())
    config["chat_template"] = "{% for message in messages %}{{ message['content'] }}{% endfor %}"
    (folder / "tokenizer_config.json").write_text(json.dumps(config))

    bundle = resolve_bundle(str(folder))
    assert bundle.tokenizer.chat_template == official
    assert bundle.template_parity["differences"] == 0
