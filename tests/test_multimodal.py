"""Multimodal content through public extension points: a test-only vision-language plugin
(tuneforge.testing.vlm_plugin, a tiny random-weight Idefics3) trains with LoRA on image rows,
answers through the pt engine and the real server, and text-only models refuse image parts."""

import json
import os
import sys
from pathlib import Path

import openai
import pytest
from click.testing import CliRunner
from safetensors import safe_open

import tuneforge.testing.vlm_plugin as vlm_plugin
from tuneforge.cli import cli
from tuneforge.errors import TuneforgeError
from tuneforge.inference import ChatRequest, SamplingParams, create_engine
from tuneforge.testing import plugin_installed
from tuneforge.testing.server import Server
from tuneforge.testing.vlm import IMAGE_SEQ_LEN, image_data_url, image_file, tiny_vlm_dir

RED, BLUE = (220, 20, 20), (20, 20, 220)
QUESTION = "What colour is the picture?"


@pytest.fixture(scope="module")
def vlm_dir(tmp_path_factory):
    return tiny_vlm_dir(tmp_path_factory.mktemp("vlm") / "tiny-vlm")


@pytest.fixture
def vlm():
    with plugin_installed(vlm_plugin, "tiny-vlm", "tuneforge-tiny-vlm") as manager:
        yield manager


def image_row(image: str, answer: str) -> dict:
    return {
        "messages": [
            {"role": "user", "content": [{"type": "image_url", "image_url": {"url": image}}, {"type": "text", "text": QUESTION}]},
            {"role": "assistant", "content": answer},
        ]
    }


def write_image_rows(folder: Path) -> Path:
    """Two rows, each a picture file and the colour it shows."""
    red = image_file(folder / "red.png", RED)
    blue = image_file(folder / "blue.png", BLUE)
    path = folder / "pictures.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in [image_row(red, "Red."), image_row(blue, "Blue.")]))
    return path


def sft(*args):
    return CliRunner().invoke(cli, ["sft", *map(str, args)], catch_exceptions=False)


def train_args(model, data, out, *extra):
    return [
        "--model", model, "--dataset", data, "--output-dir", out, "--max-steps", 40, "--learning-rate", 5e-3,
        "--per-device-batch-size", 2, "--logging-steps", 10, "--save-steps", 1000, "--max-length", 64, "--seed", 0, *extra,
    ]


def ask(colour) -> ChatRequest:
    content = [{"type": "image_url", "image_url": {"url": image_data_url(colour)}}, {"type": "text", "text": QUESTION}]
    return ChatRequest(messages=[{"role": "user", "content": content}], sampling=SamplingParams(max_tokens=4, temperature=0))


@pytest.fixture(scope="module")
def trained(vlm_dir, tmp_path_factory):
    """A LoRA run on the two picture rows (40 steps: enough to tell the colours apart)."""
    folder = tmp_path_factory.mktemp("vlm-run")
    data = write_image_rows(folder)
    with plugin_installed(vlm_plugin, "tiny-vlm", "tuneforge-tiny-vlm"):
        result = sft(*train_args(vlm_dir, data, folder / "out", "--train-type", "lora"))
    assert result.exit_code == 0, result.output
    return folder / "out"


def test_lora_trains_only_the_language_model_on_image_rows(trained):
    run = json.loads((trained / "tuneforge_run.json").read_text())
    assert run["model_family"] == "tiny-vlm" and run["template"] == "tiny-vlm"
    with safe_open(str(trained / "adapter_model.safetensors"), "pt") as weights:
        names = list(weights.keys())
    assert names and all(".text_model." in name for name in names), names[:5]
    assert any("lora_A" in name for name in names)


def test_the_pt_engine_answers_from_the_picture(vlm, trained):
    engine = create_engine("pt", str(trained), device="cpu")
    try:
        red, blue = (engine.generate([ask(colour)])[0][0] for colour in (RED, BLUE))
    finally:
        engine.close()
    # The image became IMAGE_SEQ_LEN image tokens (plus its markers) of the prompt, and its pixels
    # reached the model: the trained adapter tells the two pictures apart.
    assert red.prompt_tokens > IMAGE_SEQ_LEN + 10
    assert red.text.startswith("Red") and blue.text.startswith("Blue"), (red.text, blue.text)


def test_the_server_answers_an_image_url_part(trained, tmp_path):
    site = tmp_path / "site"
    info = site / "tuneforge_tiny_vlm-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: tuneforge-tiny-vlm\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[tuneforge]\ntiny-vlm = tuneforge.testing.vlm_plugin\n")
    env = {"PYTHONPATH": os.pathsep.join([str(site), *sys.path]), "TUNEFORGE_LOAD_PLUGINS": "tiny-vlm"}
    server = Server(["--model", trained, "--served-model-name", "vlm", "--engine", "pt"], tmp_path / "server.log", env=env)
    try:
        client = server.client()
        answers = {}
        for name, colour in (("red", RED), ("blue", BLUE)):
            content = [{"type": "image_url", "image_url": {"url": image_data_url(colour)}}, {"type": "text", "text": QUESTION}]
            reply = client.chat.completions.create(model="vlm", messages=[{"role": "user", "content": content}], max_tokens=4, temperature=0)
            answers[name] = reply.choices[0].message.content
        assert answers["red"].startswith("Red") and answers["blue"].startswith("Blue"), answers

        remote = [{"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}, {"type": "text", "text": QUESTION}]
        with pytest.raises(openai.BadRequestError) as refused:
            client.chat.completions.create(model="vlm", messages=[{"role": "user", "content": remote}], max_tokens=4)
        assert "'messages[0].content' part 1 is the image URL 'https://example.com/cat.png', and this server fetches nothing" in str(refused.value)
    finally:
        assert server.stop() == 0, server.tail()


def test_freeze_trains_a_named_part(vlm, vlm_dir, tmp_path):
    from safetensors.torch import load_file

    data = write_image_rows(tmp_path)
    result = sft(*train_args(vlm_dir, data, tmp_path / "out", "--train-type", "freeze", "--trainable-parts", "aligner", "--max-steps", 2))
    assert result.exit_code == 0, result.output
    before, after = load_file(Path(vlm_dir) / "model.safetensors"), load_file(tmp_path / "out" / "model.safetensors")
    changed = {name for name in before if not before[name].equal(after[name])}
    assert changed and all("connector" in name for name in changed), sorted(changed)[:5]


def test_a_part_the_family_does_not_name_is_refused(vlm, vlm_dir, tmp_path):
    data = write_image_rows(tmp_path)
    result = sft(*train_args(vlm_dir, data, tmp_path / "out", "--train-type", "freeze", "--trainable-parts", "projector"))
    assert result.exit_code != 0
    assert "--trainable-parts names ['projector'], which this model does not have; choose from language_model, vision_tower, aligner" in result.output


# -- text-only models refuse parts they cannot take, with a sentence -------------------------------------------------


def test_a_text_model_refuses_an_image_row(tiny_llama_dir, tmp_path):
    data = write_image_rows(tmp_path)
    result = sft(*train_args(tiny_llama_dir, data, tmp_path / "out", "--max-steps", 1))
    assert result.exit_code != 0
    assert "pictures.jsonl line 1: Message 1 has a 'image_url' part, but the model" in result.output
    assert "takes text only; send text, or use a model whose family handles image (a vision-language plugin such as tuneforge-vl)" in result.output
    assert not (tmp_path / "out" / "tuneforge_run.json").exists()


def test_a_text_model_engine_refuses_an_image_part(tiny_llama_dir):
    engine = create_engine("pt", tiny_llama_dir, device="cpu")
    try:
        with pytest.raises(TuneforgeError, match=r"^Message 1 has a 'image_url' part, but the model .* takes text only; send text"):
            engine.generate([ask(RED)])
    finally:
        engine.close()


def test_a_text_model_server_refuses_an_image_part(tiny_llama_dir, tmp_path):
    server = Server(["--model", tiny_llama_dir, "--served-model-name", "tiny"], tmp_path / "server.log")
    try:
        client = server.client()
        content = [{"type": "image_url", "image_url": {"url": image_data_url(RED)}}, {"type": "text", "text": QUESTION}]
        with pytest.raises(openai.BadRequestError) as refused:
            client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": content}], max_tokens=4)
        assert "Message 1 has a 'image_url' part, but the model" in str(refused.value)
        assert "takes text only" in str(refused.value)
        # text parts alone are still text
        reply = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": [{"type": "text", "text": "Hi"}]}], max_tokens=2)
        assert reply.usage.prompt_tokens > 1
    finally:
        assert server.stop() == 0, server.tail()


def test_packing_leaves_image_rows_unpacked_and_says_so(vlm, vlm_dir, tmp_path):
    data = write_image_rows(tmp_path)
    result = sft(*train_args(vlm_dir, data, tmp_path / "out", "--packing", "--max-steps", 1))
    assert result.exit_code == 0, result.output
    assert "packing: 2 training samples of 2 carry images (or other extras) and are not packed" in result.output
    assert "not packed" in json.loads((tmp_path / "out" / "tuneforge_run.json").read_text())["data"]["packing"]


def test_a_vision_family_packs_by_default_only_where_its_template_packs_extras(vlm, vlm_dir):
    """On CUDA packing is the default; a family that loads a processor (whose image rows
    carry pixel values) gets it only where its template says its extras pack, else only
    when --packing is given."""
    import copy

    from tuneforge.modeling import resolve_bundle

    from tuneforge.config import SFTConfig
    from tuneforge.options import build
    from tuneforge.registry import get_registry
    from tuneforge.training.setup import resolve_fast_path

    registry = get_registry()
    cuda, single = registry.get("devices", "cuda"), registry.get("parallel_backends", "single")
    sft_method, family = registry.get("training_methods", "sft"), registry.get("model_families", "tiny-vlm")
    assert resolve_fast_path(build(SFTConfig, {}), cuda, None, single, sft_method).packing is True
    assert resolve_fast_path(build(SFTConfig, {}), cuda, family, single, sft_method).packing is False
    assert resolve_fast_path(build(SFTConfig, {"packing": True}), cuda, family, single, sft_method).packing is True
    # the built template (what resolve_bundle gives) is what says whether extras pack
    template = resolve_bundle(str(vlm_dir)).template
    assert template.packs_extras is False
    assert resolve_fast_path(build(SFTConfig, {}), cuda, family, single, sft_method, template).packing is False
    packing_template = copy.copy(template)
    packing_template.packs_extras = True
    assert resolve_fast_path(build(SFTConfig, {}), cuda, family, single, sft_method, packing_template).packing is True
    assert resolve_fast_path(build(SFTConfig, {"packing": False}), cuda, family, single, sft_method, packing_template).packing is False
    assert resolve_fast_path(build(SFTConfig, {}), registry.get("devices", "cpu"), family, single, sft_method, packing_template).packing is False


def test_an_engine_that_passes_only_ids_refuses_image_parts(vlm, vlm_dir):
    """An engine building prompts without taking extras (vllm's way) cannot drop the picture silently."""
    from tuneforge.api import prompt_extras, prompt_ids, resolve_bundle

    bundle = resolve_bundle(vlm_dir)
    request = ask(RED)
    with pytest.raises(TuneforgeError, match=r"^Message 1 has a 'image_url' part, but this inference engine passes only token ids to its model; send text"):
        prompt_ids(bundle.template, bundle.tokenizer, request)
    ids = prompt_ids(bundle.template, bundle.tokenizer, request, takes_extras=True)
    assert ids.count(bundle.template.image_id) == IMAGE_SEQ_LEN
    assert prompt_extras(bundle.template, request)["pixel_values"].shape[:2] == (1, 1)


def test_a_row_naming_a_missing_picture_fails_before_training(vlm, vlm_dir, tmp_path):
    data = tmp_path / "pictures.jsonl"
    data.write_text(json.dumps(image_row(str(tmp_path / "gone.png"), "Red.")) + "\n")
    result = sft(*train_args(vlm_dir, data, tmp_path / "out"))
    assert result.exit_code != 0
    assert f"pictures.jsonl line 1: the image file '{tmp_path / 'gone.png'}' does not exist; fix the path in the row" in result.output
    assert not (tmp_path / "out" / "tuneforge_run.json").exists()
