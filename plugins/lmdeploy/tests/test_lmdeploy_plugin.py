"""What runs everywhere: the plugin registers and lists, and where LMDeploy cannot run the engine is
refused with one sentence before any weights load; options and adapters LMDeploy would mishandle are
refused before it starts."""

import json
import shutil

import pytest

from tuneforge.api import TuneforgeError, create_engine
from tuneforge.testing import make_lora_adapter, run_cli
from tuneforge_lmdeploy.engine import INSTALL, _Penalties, adapter_problem, check_quantization, why_not_runnable

RUNNABLE = why_not_runnable() is None


def test_the_plugin_registers_and_is_listed():
    listed = run_cli("plugins").output
    assert "tuneforge-lmdeploy" in listed and "lmdeploy" in listed
    assert "lmdeploy" in run_cli("list").output
    flags = run_cli("deploy", "--engine", "lmdeploy", "--help").output
    for flag in ("--backend", "--tp", "--session-len", "--cache-max-entry-count", "--model-format"):
        assert flag in flags


@pytest.fixture(scope="module")
def weightless_dir(tiny_llama_dir, tmp_path_factory):
    """The tiny Llama with its weights file replaced by garbage: only a refusal before loading weights passes it."""
    path = tmp_path_factory.mktemp("weightless") / "model"
    shutil.copytree(tiny_llama_dir, path)
    for weights in path.glob("*.safetensors"):
        weights.write_bytes(b"not weights")
    return str(path)


@pytest.mark.skipif(RUNNABLE, reason="LMDeploy runs here, so it is not refused")
def test_without_a_cuda_gpu_the_engine_is_refused_in_one_sentence_before_loading_weights(weightless_dir, tmp_path):
    with pytest.raises(TuneforgeError) as refused:
        create_engine("lmdeploy", weightless_dir)
    message = str(refused.value)
    assert message == why_not_runnable() and message.count(". ") == 0 and message.endswith(".")
    assert "needs a CUDA GPU" in message or "needs the lmdeploy package" in message
    requests = tmp_path / "in.jsonl"
    requests.write_text(json.dumps({"messages": [{"role": "user", "content": "hi"}]}) + "\n")
    result = run_cli("infer", "--model", weightless_dir, "--engine", "lmdeploy", "--input", requests, "--output", tmp_path / "out.jsonl", ok=False)
    assert result.exit_code != 0 and message in result.output
    assert not (tmp_path / "out.jsonl").exists()


def test_without_the_package_the_sentence_says_what_to_install(monkeypatch, weightless_dir):
    """On a machine with a GPU (simulated: there is none here) but no lmdeploy package."""
    import importlib.util

    if importlib.util.find_spec("lmdeploy") is not None:
        pytest.skip("lmdeploy is installed here")
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    with pytest.raises(TuneforgeError, match=r"needs the lmdeploy package, which does not import here") as refused:
        create_engine("lmdeploy", weightless_dir)
    assert str(refused.value).endswith(f"install it with {INSTALL}.")
    with pytest.raises(TuneforgeError, match="runs only on CUDA GPUs, not on --device 'cpu'"):
        create_engine("lmdeploy", weightless_dir, device="cpu")


@pytest.mark.parametrize("option, value, message", [
    ("backend", "vulkan", "'backend' is 'vulkan'; it must be pytorch or turbomind"),
    ("cache_max_entry_count", 1.0, "'cache_max_entry_count' is 1.0; it must be a number above 0 and below 1"),
    ("dtype", "float32", "LMDeploy serves no float32"),
    ("tp", 0, "'tp' is 0; it must be an integer of at least 1"),
    ("model_format", "gguf", "'model_format' is 'gguf'"),
    ("batch_size", 0, "'batch_size' is 0"),
    ("beam_width", 4, "does not take the option 'beam_width'"),
])
def test_bad_options_are_refused_before_anything_loads(weightless_dir, option, value, message):
    with pytest.raises(TuneforgeError, match=message.replace("(", r"\(").replace(")", r"\)")):
        create_engine("lmdeploy", weightless_dir, **{option: value})


def test_adapters_lmdeploy_would_serve_wrongly_are_named(tiny_llama_dir, tmp_path):
    adapter = make_lora_adapter(tiny_llama_dir, tmp_path / "lora", seed=1, run_record=False)
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert adapter_problem(config) is None  # what tuneforge's LoRA runs save is served as peft applies it
    assert "DoRA" in adapter_problem({**config, "use_dora": True})
    assert "use_rslora" in adapter_problem({**config, "use_rslora": True})
    assert "rank_pattern" in adapter_problem({**config, "rank_pattern": {"q_proj": 8}})
    assert "lm_head" in adapter_problem({**config, "modules_to_save": ["lm_head"]})
    assert "'all-linear'" in adapter_problem({**config, "target_modules": "all-linear"})


def test_a_quantization_lmdeploy_does_not_load_is_refused_by_name():
    from transformers import LlamaConfig

    config = LlamaConfig(quantization_config={"quant_method": "bitsandbytes", "load_in_4bit": True})
    with pytest.raises(TuneforgeError, match="quantized with bitsandbytes, which LMDeploy does not load"):
        check_quantization("m", config, None)
    check_quantization("m", LlamaConfig(quantization_config={"quant_method": "awq", "bits": 4, "group_size": 128}), None)
    check_quantization("m", LlamaConfig(), None)


def test_presence_and_frequency_penalties_lower_the_logits_of_generated_tokens():
    import torch

    penalties = _Penalties(presence=0.5, frequency=1.0)
    scores = torch.zeros(6)
    assert torch.equal(penalties(torch.tensor([0, 0, 4, 5]), scores), scores)  # the prefill: nothing generated yet
    # Three steps later the row holds the padded prompt [4, 5] and the generated 2, 3, 2.
    penalties.step = 3
    out = penalties(torch.tensor([0, 4, 5, 2, 3, 2]), scores)
    assert out.tolist() == [0.0, 0.0, -2.5, -1.5, 0.0, 0.0]
    assert penalties.step == 4


def test_a_random_awq_checkpoint_has_the_layout_lmdeploy_loads(tiny_llama_dir, tmp_path):
    """AutoAWQ's GEMM layout (what LMDeploy's PyTorch engine reads for quant_method awq), for the AWQ speed figures."""
    from safetensors import safe_open

    from tuneforge_lmdeploy.awq_random import convert

    target = convert(tiny_llama_dir, tmp_path / "awq", group_size=32)
    config = json.loads((target / "config.json").read_text())
    assert config["quantization_config"] == {"quant_method": "awq", "bits": 4, "group_size": 32, "version": "gemm", "zero_point": True}
    with safe_open(str(target / "model.safetensors"), framework="pt") as weights:
        names = set(weights.keys())
        assert not any(n.endswith("proj.weight") for n in names)
        k = "model.layers.0.self_attn.k_proj"
        assert weights.get_slice(k + ".qweight").get_shape() == [config["hidden_size"], 32 // 8]  # [in, out/8] int32
        assert weights.get_slice(k + ".scales").get_shape() == [config["hidden_size"] // 32, 32]
        assert weights.get_slice(k + ".qzeros").get_shape() == [config["hidden_size"] // 32, 32 // 8]
        assert "model.embed_tokens.weight" in names and str(weights.get_tensor("model.norm.weight").dtype) == "torch.float16"
    assert (target / "tokenizer.json").is_file()
    with pytest.raises(TuneforgeError, match="whole groups of 48"):
        convert(tiny_llama_dir, tmp_path / "bad", group_size=48)
