"""A model family's own options (``ModelFamily.options``): selected by every command given a model of
the family (--model-family, else the checkpoint's config.json, a run's recorded family), listed by
--help, passed to the family's load_processor and load_model, recorded by a training run and used by
infer/deploy/export of that run unless overridden. The tiny Idefics3 of tuneforge.testing.vlm declares
--image-size, applied to its processor (an image of edge E becomes (E/16)^2 image tokens)."""

import json

import pytest
from click.testing import CliRunner

import tuneforge.testing.vlm_plugin as vlm_plugin
from tuneforge.cli import cli
from tuneforge.config import InferConfig, SFTConfig
from tuneforge.errors import TuneforgeError
from tuneforge.inference import ChatRequest, SamplingParams, create_engine
from tuneforge.inference.run import engine_options_from
from tuneforge.modeling import family_name_for, resolve_bundle
from tuneforge.options import OptionError, build, selected_options
from tuneforge.testing import plugin_installed
from tuneforge.testing.vlm import IMAGE_SEQ_LEN, image_data_url, image_file, tiny_vlm_dir

QUESTION = "What colour is the picture?"


@pytest.fixture(scope="module")
def vlm_dir(tmp_path_factory):
    return tiny_vlm_dir(tmp_path_factory.mktemp("vlm") / "tiny-vlm")


@pytest.fixture
def vlm():
    with plugin_installed(vlm_plugin, "tiny-vlm", "tuneforge-tiny-vlm") as manager:
        yield manager


def invoke(*args):
    return CliRunner().invoke(cli, [*map(str, args)], catch_exceptions=False)


def row(url: str, answer: str) -> dict:
    content = [{"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": QUESTION}]
    return {"messages": [{"role": "user", "content": content}, {"role": "assistant", "content": answer}]}


def ask() -> ChatRequest:
    content = [{"type": "image_url", "image_url": {"url": image_data_url((200, 30, 30))}}, {"type": "text", "text": QUESTION}]
    return ChatRequest(messages=[{"role": "user", "content": content}], sampling=SamplingParams(max_tokens=1, temperature=0))


@pytest.fixture(scope="module")
def trained(vlm_dir, tmp_path_factory):
    """A LoRA run with --image-size 16: each image one token instead of four."""
    folder = tmp_path_factory.mktemp("family-options")
    data = folder / "pictures.jsonl"
    data.write_text("".join(json.dumps(row(image_file(folder / f"{n}.png", c), a)) + "\n" for n, c, a in (("red", (220, 20, 20), "Red."), ("blue", (20, 20, 220), "Blue."))))
    with plugin_installed(vlm_plugin, "tiny-vlm", "tuneforge-tiny-vlm"):
        result = invoke(
            "sft", "--model", vlm_dir, "--dataset", data, "--output-dir", folder / "out", "--max-steps", 1, "--max-length", 64,
            "--save-steps", 1000, "--image-size", 16,
        )
    assert result.exit_code == 0, result.output
    return folder / "out", data


def test_help_lists_the_options_of_the_checkpoints_family(vlm, vlm_dir):
    for command in (["sft"], ["infer"], ["eval"], ["deploy"], ["export", "--output-dir", "x"], ["template", "check"]):
        result = invoke(*command, "--model", vlm_dir, "--help")
        assert result.exit_code == 0, result.output
        assert "--image-size" in result.output and "the 'tiny-vlm' model family" in result.output, command
    assert "--image-size" not in invoke("sft", "--help").output  # the default model's family (llama) declares none


def test_model_family_names_the_family_whose_options_apply(vlm, tiny_llama_dir):
    result = invoke("infer", "--model", tiny_llama_dir, "--model-family", "tiny-vlm", "--help")
    assert "--image-size" in result.output
    assert "--image-size" not in invoke("infer", "--model", tiny_llama_dir, "--help").output


def test_a_model_that_cannot_be_told_now_breaks_neither_help_nor_the_commands_sentence(vlm, tmp_path):
    assert family_name_for("someone/not-downloaded") is None
    help_ = invoke("sft", "--model", "someone/not-downloaded", "--help")
    assert help_.exit_code == 0 and "--image-size" not in help_.output
    typo = invoke("infer", "--model", "no-such-model")
    assert typo.exit_code != 0
    assert "Model 'no-such-model' is not a registered model" in typo.output
    # A family option given for a model whose family cannot be told: the sentence says how to select it.
    given = invoke("sft", "--model", "someone/not-downloaded", "--image-size", "16")
    assert given.exit_code != 0
    assert "Option 'image_size' belongs to the model family 'tiny-vlm', but this invocation selects no model family; pass --model-family tiny-vlm" in given.output


def test_the_value_reaches_the_familys_processor(vlm, vlm_dir):
    bundle = resolve_bundle(vlm_dir, family_options={"image_size": 16})
    assert bundle.family_options == vlm_plugin.TinyImageOptions(image_size=16)
    assert bundle.processor.image_seq_len == 1 and bundle.processor.image_processor.max_image_size == {"longest_edge": 16}
    default = resolve_bundle(vlm_dir)
    assert default.family_options == vlm_plugin.TinyImageOptions() and default.processor.image_seq_len == IMAGE_SEQ_LEN
    with pytest.raises(TuneforgeError, match=r"^Model family 'tiny-vlm' has no option 'max_pixels'; it takes: image_size\."):
        resolve_bundle(vlm_dir, family_options={"max_pixels": 10})


def test_a_bad_value_is_refused_by_the_family_with_its_sentence(vlm, vlm_dir, tmp_path):
    requests = tmp_path / "requests.jsonl"
    requests.write_text(json.dumps({"messages": [{"role": "user", "content": "Hi"}]}) + "\n")
    result = invoke("infer", "--model", vlm_dir, "--image-size", "20", "--input", requests)
    assert result.exit_code != 0
    assert "--image-size is 20; give a multiple of 16, such as 16 or 32." in result.output


def test_training_uses_and_records_the_value(vlm, vlm_dir, trained):
    out, data = trained
    run = json.loads((out / "tuneforge_run.json").read_text())
    assert run["options"]["model_families"] == {"name": "tiny-vlm", "options": {"image_size": 16}}
    # The training data was encoded by the processor the option configured: one image token per row, not four.
    rows = [json.loads(line) for line in data.read_text().splitlines()]
    small = resolve_bundle(vlm_dir, family_options={"image_size": 16}).template
    large = resolve_bundle(vlm_dir).template
    assert run["data"]["train"]["tokens"] == sum(len(small.encode(r["messages"]).input_ids) for r in rows)
    assert run["data"]["train"]["tokens"] == sum(len(large.encode(r["messages"]).input_ids) for r in rows) - 2 * (IMAGE_SEQ_LEN - 1)


def test_inference_of_the_run_uses_the_recorded_value_unless_overridden(vlm, trained):
    out, _ = trained
    prompt_tokens = {}
    for given, expected in (({}, 16), ({"image_size": 32}, 32)):
        config = build(InferConfig, {"model": str(out), **given})
        assert selected_options(config)["model_families"] == {"name": "tiny-vlm", "options": {"image_size": expected}}
        engine = create_engine("pt", str(out), **engine_options_from(config), device="cpu")
        try:
            assert engine.loaded.bundle.family_options.image_size == expected
            prompt_tokens[expected] = engine.generate([ask()])[0][0].prompt_tokens
        finally:
            engine.close()
    assert prompt_tokens[32] - prompt_tokens[16] == IMAGE_SEQ_LEN - 1
    # Through the API, a run resolved without options takes what it recorded.
    assert resolve_bundle(str(out)).family_options.image_size == 16


def test_export_writes_the_processor_with_the_runs_value(vlm, trained, tmp_path):
    out, _ = trained
    result = invoke("export", "--model", out, "--output-dir", tmp_path / "merged")
    assert result.exit_code == 0, result.output
    exported = resolve_bundle(str(tmp_path / "merged"))
    assert exported.processor.image_seq_len == 1


def test_a_family_option_with_a_family_that_declares_none_is_refused(tiny_llama_dir):
    with pytest.raises(OptionError, match="Unknown option 'image_size'"):
        build(SFTConfig, {"model": tiny_llama_dir, "image_size": 16})


def test_a_registered_model_names_its_family_without_being_resolved(vlm, vlm_dir):
    """Composing flags never resolves a registered model (it may download and convert): its record names the family."""
    from tuneforge.api import ModelSource, hookimpl
    from tuneforge.registry import reset_registry

    resolved = []

    class Named:
        @hookimpl
        def tuneforge_models(self):
            yield ModelSource(name="tiny-vlm-named", description="the tiny VLM by name", resolve=lambda: resolved.append(1) or vlm_dir, model_family="tiny-vlm")

    vlm.register_plugin(Named(), "named", "tuneforge-named", "1.0")
    reset_registry()
    result = invoke("infer", "--model", "tiny-vlm-named", "--help")
    assert result.exit_code == 0 and "--image-size" in result.output
    assert resolved == []
    config = build(InferConfig, {"model": "tiny-vlm-named", "image_size": 16})
    assert selected_options(config)["model_families"]["options"] == {"image_size": 16} and resolved == []
