"""Model specs resolve to the right weights and families, or fail with one clear sentence."""

import json

import pytest
from transformers import GPT2Config, LlamaConfig, MistralConfig

from tuneforge import modeling
from tuneforge.errors import TuneforgeError
from tuneforge.registry import UnknownName


def test_registered_name_resolves_to_local_checkpoint(smollm2_dir):
    resolved = modeling.resolve_model("smollm2-135m-instruct")
    assert resolved.base_path == smollm2_dir
    assert resolved.run is None


def test_checkpoint_dir_and_output_dir(tmp_path, tiny_llama_dir):
    assert modeling.resolve_model(tiny_llama_dir).base_path == tiny_llama_dir
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "tuneforge_run.json").write_text(
        json.dumps({"saves_adapter": True, "base_model": tiny_llama_dir, "tuner": "lora"})
    )
    resolved = modeling.resolve_model(str(run_dir))
    assert resolved.base_path == tiny_llama_dir and resolved.run_dir == str(run_dir)


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda p: str(p / "missing"), "is not a registered model"),
        (lambda p: (p / "f.bin").write_text("x") and str(p / "f.bin"), "is a file"),
        (lambda p: (p / "empty").mkdir() or str(p / "empty"), "has no config.json"),
    ],
)
def test_bad_model_specs(tmp_path, make, message):
    with pytest.raises(TuneforgeError, match=message):
        modeling.resolve_model(make(tmp_path))


def test_hub_id_is_passed_through():
    assert modeling.resolve_model("org/some-model").base_path == "org/some-model"


def test_family_matching():
    assert modeling.match_family(LlamaConfig(architectures=["LlamaForCausalLM"])).name == "llama"
    # No family claims GPT-2 in the core: the catch-all takes it.
    assert modeling.match_family(GPT2Config()).name == "causal-lm"
    assert modeling.match_family(MistralConfig(), forced="llama").name == "llama"
    with pytest.raises(UnknownName, match="Unknown model family 'lama'.*Did you mean 'llama'"):
        modeling.match_family(LlamaConfig(), forced="lama")


def test_device_choice():
    assert modeling.pick_device(None).name in {"cpu", "cuda", "mps"}
    assert modeling.pick_device("cpu").torch_device == "cpu"
    with pytest.raises(UnknownName, match="Unknown device 'tpu'"):
        modeling.pick_device("tpu")


def test_a_checkpoint_that_needs_its_own_code_is_one_sentence(tmp_path):
    import json as _json

    from tuneforge.errors import TuneforgeError
    from tuneforge.modeling import load_hf_config

    (tmp_path / "config.json").write_text(_json.dumps({
        "model_type": "internlm2", "architectures": ["InternLM2ForCausalLM"],
        "auto_map": {"AutoConfig": "configuration_internlm2.InternLM2Config"},
    }))
    with pytest.raises(TuneforgeError, match=r"model_type 'internlm2'.*runs no code shipped with a checkpoint.*conversion commands"):
        load_hf_config(str(tmp_path))
