"""tuneforge export --format gptq: symmetric 4-bit groups (GPTQ's default), loaded back by transformers.

One export of the tiny LoRA run (group size 64, no --max-quality-loss) is checked; the
parts it shares with the awq exporter (template, record, refusal) are checked there.
"""

import json

import pytest

pytest.importorskip("llmcompressor", reason="llmcompressor is not installed here; the README's test command runs these tests in .venv-awq")

from tuneforge.testing import run_cli

pytestmark = pytest.mark.usefixtures("one_torch_thread", "awq_plugin")


@pytest.fixture(scope="module")
def exported(tiny_run, tmp_path_factory, awq_plugin):
    out = tmp_path_factory.mktemp("gptq-export") / "gptq"
    result = run_cli("export", "--model", tiny_run, "--format", "gptq", "--output-dir", out, "--group-size", 64,
                     "--num-calibration-samples", 8, "--quality-rows", 4, "--quality-prompts", 2, "--quality-max-new-tokens", 8)
    return out, result.output


def test_the_checkpoint_is_symmetric_4_bit_groups_of_64_without_zero_points(exported):
    from safetensors import safe_open

    out, _ = exported
    weights = json.loads((out / "config.json").read_text())["quantization_config"]["config_groups"]["group_0"]["weights"]
    assert (weights["num_bits"], weights["strategy"], weights["group_size"], weights["symmetric"]) == (4, "group", 64, True)
    with safe_open(str(out / "model.safetensors"), "pt") as tensors:
        names = set(tensors.keys())
        scales = tensors.get_tensor("model.layers.0.mlp.down_proj.weight_scale")
    assert "model.layers.0.mlp.down_proj.weight_packed" in names
    assert not [name for name in names if name.endswith("weight_zero_point")]
    assert tuple(scales.shape) == (64, 128 // 64)  # one scale per group of 64 inputs


def test_it_loads_generates_and_reports_its_quality(exported):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out, output = exported
    model = AutoModelForCausalLM.from_pretrained(out)
    tokenizer = AutoTokenizer.from_pretrained(out)
    ids = tokenizer.apply_chat_template([{"role": "user", "content": "Spell the word lamp."}], add_generation_prompt=True, return_tensors="pt", return_dict=False)
    with torch.inference_mode():
        answer = model.generate(ids, max_new_tokens=4, do_sample=False)
    assert answer.shape[1] == ids.shape[1] + 4 or answer[0, -1].item() in (tokenizer.eos_token_id, *model.generation_config.eos_token_id)
    record = json.loads((out / "tuneforge_export.json").read_text())
    assert record["exporter"] == "gptq" and record["quantization"]["symmetric"] is True
    report = json.loads((out / "quality_report.json").read_text())
    assert report["format"] == "gptq" and report["greedy"]["prompts"] == 2 and report["passed"] is True
    assert "quality of the gptq export against the merged model" in output
