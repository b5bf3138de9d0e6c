"""tuneforge export --format awq: a W4A16 compressed-tensors checkpoint that transformers loads, with its quality report.

One export of a LoRA run of a tiny random Llama (group size 32, calibrated on 8 of the
run's training rows, measured on its 4 validation rows) is checked from several sides;
a second one of the same run, with a --max-quality-loss it cannot meet, must leave
nothing at its --output-dir and keep the merged model beside it.
"""

import json
from pathlib import Path

import pytest

pytest.importorskip("llmcompressor", reason="llmcompressor is not installed here; the README's test command runs these tests in .venv-awq")

from tuneforge.testing import run_cli

pytestmark = pytest.mark.usefixtures("one_torch_thread", "awq_plugin")

QUICK = ["--num-calibration-samples", 8, "--quality-rows", 4, "--quality-prompts", 4, "--quality-max-new-tokens", 8]


@pytest.fixture(scope="module")
def exported(tiny_run, tmp_path_factory, awq_plugin):
    root = tmp_path_factory.mktemp("awq-export")
    result = run_cli("export", "--model", tiny_run, "--format", "awq", "--output-dir", root / "awq", "--group-size", 32,
                     "--max-quality-loss", 0.5, *QUICK)
    run_cli("export", "--model", tiny_run, "--format", "merged", "--output-dir", root / "merged")
    return root / "awq", root / "merged", result.output


def test_the_checkpoint_is_4_bit_asymmetric_groups_of_32_in_compressed_tensors(exported):
    from safetensors import safe_open

    out, _, _ = exported
    config = json.loads((out / "config.json").read_text())["quantization_config"]
    assert config["quant_method"] == "compressed-tensors" and config["format"] == "pack-quantized"
    assert config["ignore"] == ["lm_head"]
    weights = config["config_groups"]["group_0"]["weights"]
    assert (weights["num_bits"], weights["type"], weights["strategy"], weights["group_size"], weights["symmetric"]) == (4, "int", "group", 32, False)
    with safe_open(str(out / "model.safetensors"), "pt") as tensors:
        names = set(tensors.keys())
        packed = tensors.get_tensor("model.layers.0.mlp.down_proj.weight_packed")
    assert {"model.layers.0.self_attn.q_proj.weight_scale", "model.layers.0.self_attn.q_proj.weight_zero_point"} <= names
    assert "model.layers.0.self_attn.q_proj.weight" not in names and "model.embed_tokens.weight" in names
    assert tuple(packed.shape) == (64, 128 * 4 // 32)  # eight 4-bit weights per int32


def test_transformers_loads_it_and_its_logits_stay_near_the_merged_models(exported):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out, merged_dir, _ = exported
    quantized = AutoModelForCausalLM.from_pretrained(out)
    merged = AutoModelForCausalLM.from_pretrained(merged_dir)
    ids = AutoTokenizer.from_pretrained(out)("Spell the word garden, then count to five.", return_tensors="pt").input_ids
    with torch.inference_mode():
        a, b = quantized(ids).logits, merged(ids).logits
    error = (a - b).pow(2).mean().sqrt() / b.pow(2).mean().sqrt()
    # 26% of the logits' RMS on this random model (no outliers for AWQ to protect; 4 bits in groups of 32)
    assert 0 < error < 0.4, f"quantized logits differ from the merged model's by {error:.1%} of their RMS"
    assert a[0, -1].argmax() == b[0, -1].argmax() or error > 0.1


def test_the_tokenizer_carries_the_trained_chat_template(exported):
    from transformers import AutoTokenizer

    out, merged_dir, _ = exported
    assert (out / "chat_template.jinja").read_text() == (merged_dir / "chat_template.jinja").read_text()
    conversation = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Spell the word lamp."}]
    ours = AutoTokenizer.from_pretrained(out).apply_chat_template(conversation, add_generation_prompt=True, return_dict=False)
    theirs = AutoTokenizer.from_pretrained(merged_dir).apply_chat_template(conversation, add_generation_prompt=True, return_dict=False)
    assert ours == theirs


def test_the_record_and_the_quality_report_say_what_it_is_and_how_it_compares(exported, tiny_run):
    out, _, output = exported
    record = json.loads((out / "tuneforge_export.json").read_text())
    assert record["exporter"] == "awq" and record["source"] == str(Path(tiny_run).resolve())
    assert record["quantization"]["scheme"] == "W4A16" and record["quantization"]["library"].startswith("llmcompressor 0.14")
    assert record["calibration"] == {"rows_from": "the run's training rows", "samples": 8, "max_length": 512}
    report = json.loads((out / "quality_report.json").read_text())
    assert report["rows_from"] == "the run's validation rows" and report["held_out"] is True and report["passed"] is True
    ppl = report["perplexity"]
    assert ppl["rows"] == 4 and ppl["tokens"] > 0 and 1 < ppl["merged"] < 1e6
    assert ppl["increase"] == pytest.approx(ppl["quantized"] / ppl["merged"] - 1) and abs(ppl["increase"]) < 0.5
    greedy = report["greedy"]
    assert greedy["prompts"] == 4 and 0 <= greedy["exact_match"] <= 1 and 0 <= greedy["token_overlap"] <= 1
    assert record["quality"]["perplexity_increase"] == ppl["increase"]
    assert "quality of the awq export against the merged model, on the run's validation rows:" in output
    assert f"exact match {greedy['exact_matches']}/4" in output
    assert sorted(p.name for p in out.parent.iterdir()) == ["awq", "merged"]  # no staging folder, no merged copy
    assert not (out / ".merged").exists()


def test_past_max_quality_loss_nothing_is_written_and_the_merged_model_is_kept(exported, tiny_run, tmp_path):
    report = json.loads((exported[0] / "quality_report.json").read_text())
    increase = report["perplexity"]["increase"]
    assert increase > 0  # a random model's held-out perplexity only rises with 4-bit noise (so this export must refuse)
    limit = increase / 2
    result = run_cli("export", "--model", tiny_run, "--format", "awq", "--output-dir", tmp_path / "strict", "--group-size", 32,
                     "--max-quality-loss", limit, *QUICK, ok=False)
    assert result.exit_code != 0
    [message] = [line for line in result.output.splitlines() if "--max-quality-loss" in line]
    assert f"{increase:.2%} above the merged model's" in message and f"--max-quality-loss {limit:g}" in message
    assert f"nothing was written to '{tmp_path / 'strict'}'" in message and f"kept in '{tmp_path / 'strict-merged'}'" in message
    assert sorted(p.name for p in tmp_path.iterdir()) == ["strict-merged"]
    kept = tmp_path / "strict-merged"
    assert json.loads((kept / "quality_report.json").read_text())["passed"] is False
    assert json.loads((kept / "tuneforge_export.json").read_text())["exporter"] == "merge-lora"
    assert (kept / "model.safetensors").is_file() and (kept / "chat_template.jinja").is_file()
