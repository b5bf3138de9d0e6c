"""SmolVLM2 (SmolVLMForConditionalGeneration) and SmolVLM/Idefics3 (Idefics3ForConditionalGeneration) through
transformers' native classes: the families, their template against the official one rendered through the
processor, the parity check, image size options."""

import pytest
from imageprobes import RED, as_parts, conversations, official_ids, reference_template

from tuneforge.api import IGNORE_INDEX, TuneforgeError, build_template, compare_with_chat_template, parity_probes, resolve_bundle
from tuneforge.testing.vlm import image_file
from tuneforge_vl.options import ImageOptions
from tuneforge_vl.testing.smolvlm import IMAGE_SEQ_LEN, TILE, tiny_smolvlm_dir

ARCHITECTURES = {"smolvlm": "SmolVLMForConditionalGeneration", "idefics3": "Idefics3ForConditionalGeneration"}


@pytest.fixture(scope="module", params=sorted(ARCHITECTURES))
def smolvlm_dir(request, tmp_path_factory):
    folder = tmp_path_factory.mktemp(request.param) / f"tiny-{request.param}"
    return tiny_smolvlm_dir(folder, architecture=request.param, chat_template=reference_template("smolvlm.jinja"))


@pytest.fixture
def bundle(manager, smolvlm_dir):
    return resolve_bundle(smolvlm_dir)


@pytest.fixture(scope="module")
def probes(tmp_path_factory):
    return conversations(tmp_path_factory.mktemp("smolvlm-images"))


def test_the_family_names_its_parts_and_lora_targets(bundle):
    import transformers

    family = bundle.family.name
    assert family in ARCHITECTURES and bundle.template_name == "smolvlm"
    assert bundle.template_parity["differences"] == 0  # checked when the bundle resolved
    model = getattr(transformers, ARCHITECTURES[family]).from_pretrained(bundle.resolved.base_path)
    names = {name for name, _ in model.named_modules()}
    assert bundle.family.parts.prefixes() == {"language_model": "model.text_model", "vision_tower": "model.vision_model", "aligner": "model.connector"}
    for prefix in bundle.family.parts.prefixes().values():
        assert prefix in names, prefix
    linear = {name.rsplit(".", 1)[-1] for name in names if name.startswith("model.text_model.layers.")}
    assert set(bundle.family.lora_target_modules) <= linear


def test_the_template_matches_the_checkpoints_own_on_the_parity_probes(bundle):
    report = compare_with_chat_template(bundle.template, bundle.tokenizer, parity_probes())
    assert report.ok, report.describe()
    assert report.compared >= 6


def test_a_string_content_renders_as_the_official_template_renders_a_text_part(bundle):
    """The official template reads only lists of parts (a string renders as nothing); a string is one text part here."""
    messages = [{"role": "user", "content": "Hello?"}]
    assert bundle.tokenizer.apply_chat_template(messages, tokenize=False) == "<|im_start|>User: <end_of_utterance>\n"
    assert bundle.template.text(messages) == "<|im_start|>User: Hello?<end_of_utterance>\n"
    assert bundle.tokenizer.apply_chat_template(as_parts(messages), tokenize=False) == bundle.template.text(messages)


@pytest.mark.parametrize("label", ["text only", "system prompt and an image", "an image first, then text", "several images over several turns"])
def test_encoding_equals_the_official_template_through_the_processor(bundle, probes, label):
    import torch

    messages = probes[label]
    template, processor = bundle.template, bundle.processor
    ids, pixels = official_ids(processor, messages, generation_prompt=False, nested=True)
    encoded = template.encode(messages)
    assert encoded.input_ids == ids
    assert encoded.extras.keys() == pixels.keys()
    for key, value in pixels.items():
        assert torch.equal(encoded.extras[key], value), key
    prompt_ids, _ = official_ids(processor, messages[:-1], generation_prompt=True, nested=True)
    assert template.prompt(messages[:-1]) == prompt_ids
    official = processor.tokenizer.apply_chat_template(as_parts(messages), tokenize=False)
    assert template.text(messages) == official
    assert processor.tokenizer.apply_chat_template(messages, chat_template=template.jinja(), tokenize=False) == official


def test_only_answers_are_learned_never_image_tokens(bundle, probes):
    messages = probes["several images over several turns"]
    tokenizer = bundle.tokenizer
    encoded = bundle.template.encode(messages)
    learned = tokenizer.decode([t for t, label in zip(encoded.input_ids, encoded.labels) if label != IGNORE_INDEX])
    assert learned == (
        " The first is red, the second green.<end_of_utterance> Blue.<end_of_utterance> You are welcome.<end_of_utterance>"
    )
    assert encoded.input_ids.count(tokenizer.convert_tokens_to_ids("<global-img>")) == 3
    image_ids = {tokenizer.convert_tokens_to_ids(t) for t in ("<image>", "<fake_token_around_image>", "<global-img>", "<row_1_col_1>")}
    everything = bundle.template.encode(messages, train_on_prompt=True)
    assert not any(label in image_ids for label in everything.labels)
    assert sum(label != IGNORE_INDEX for label in everything.labels) > encoded.num_learned


def test_batches_pad_images_of_different_counts_and_sizes(bundle, probes):
    one, three = bundle.template.encode(probes["system prompt and an image"]), bundle.template.encode(probes["several images over several turns"])
    batch = bundle.template.collate_extras([one.extras, three.extras])
    tiles = three.extras["pixel_values"].shape[1]
    assert batch["pixel_values"].shape[:2] == (2, tiles) and batch["pixel_attention_mask"].shape[:2] == (2, tiles)
    # the first sample's padding images are all zero, which the model drops
    padding = batch["pixel_values"][0, one.extras["pixel_values"].shape[1]:]
    assert padding.numel() and not padding.any()


def test_max_pixels_sets_the_longest_edge_and_so_the_tiles(manager, smolvlm_dir, tmp_path):
    family = resolve_bundle(smolvlm_dir).family
    picture = image_file(tmp_path / "square.png", RED, (2 * TILE, 2 * TILE))
    messages = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": picture}}, {"type": "text", "text": "?"}]}]

    def image_tokens(options):
        template = build_template("smolvlm", family.load_processor(smolvlm_dir, options=options))
        return template.prompt(messages).count(template.tokenizer.convert_tokens_to_ids("<image>"))

    assert image_tokens(None) == 5 * IMAGE_SEQ_LEN  # 2x2 tiles and the whole image
    assert image_tokens(ImageOptions(max_pixels=TILE * TILE + 100)) == IMAGE_SEQ_LEN  # one tile: no splitting
    with pytest.raises(TuneforgeError, match=r"^--max-pixels is 100, less than one SmolVLM tile \(32x32 = 1024 pixels\); give at least 1024\.$"):
        family.load_processor(smolvlm_dir, options=ImageOptions(max_pixels=100))
    with pytest.raises(TuneforgeError, match=r"^--min-pixels is 2048, but SmolVLM/Idefics3 processors scale every image to one longest edge"):
        family.load_processor(smolvlm_dir, options=ImageOptions(min_pixels=2048))
