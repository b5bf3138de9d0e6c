"""Qwen checkpoints are matched, trained with LoRA through `tuneforge sft`, and generate.

The checkpoints are tiny random-weight models built from the transformers config
classes of each family, with a tokenizer that has Qwen's chat and tool tokens.
"""

import json

import pytest
import torch

from tuneforge.api import IGNORE_INDEX
from tuneforge.testing import registry, run_cli

from test_qwen_templates import TOOL_CONVERSATION, WEATHER_TOOL

FAMILIES = {"qwen2": "qwen2", "qwen3": "qwen3", "qwen3_moe": "qwen3-moe"}
ARCHITECTURES = {"qwen2": "Qwen2ForCausalLM", "qwen3": "Qwen3ForCausalLM", "qwen3_moe": "Qwen3MoeForCausalLM"}


@pytest.fixture(scope="session")
def tiny_dirs(tmp_path_factory, qwen_tokenizer_dir):
    from tuneforge_qwen.testing import tiny_qwen_dir

    root = tmp_path_factory.mktemp("tiny-qwen")
    return {kind: tiny_qwen_dir(root / kind, kind, tokenizer_dir=qwen_tokenizer_dir) for kind in FAMILIES}


def test_registers_families_and_templates(manager):
    records = registry(manager)
    assert manager.infos["qwen"].registers == {
        "model_families": ["qwen2", "qwen3", "qwen3-moe"],
        "chat_templates": ["qwen2", "qwen2_5", "qwen3", "qwen3-nothink", "qwen3-answer-only"],
    }
    assert records.get("model_families", "qwen2").default_template == "qwen2_5"
    assert records.get("model_families", "qwen3").default_template == "qwen3"
    assert records.get("model_families", "qwen3-moe").lora_target_modules == ("q_proj", "k_proj", "v_proj", "o_proj")


@pytest.mark.parametrize("kind", list(FAMILIES))
def test_a_checkpoint_picks_its_family_and_the_lora_targets_exist(manager, tiny_dirs, kind):
    from transformers import AutoConfig, AutoModelForCausalLM

    from tuneforge.api import load_hf_config, match_family

    config = load_hf_config(tiny_dirs[kind])
    assert config.architectures == [ARCHITECTURES[kind]]
    family = match_family(config)
    assert family.name == FAMILIES[kind]
    assert match_family(AutoConfig.for_model(kind)).name == FAMILIES[kind]  # model_type alone is enough

    model = AutoModelForCausalLM.from_pretrained(tiny_dirs[kind], dtype=torch.float32)
    linear = {name.rsplit(".", 1)[-1] for name, module in model.named_modules() if isinstance(module, torch.nn.Linear)}
    assert set(family.lora_target_modules) <= linear


def _write_rows(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def _sft(model, data, out, *extra):
    args = ["sft", "--model", model, "--dataset", data, "--output-dir", out, "--max-steps", 2,
            "--per-device-batch-size", 2, "--logging-steps", 1, "--save-steps", 100, "--max-length", 512,
            "--lora-rank", 4, "--learning-rate", 1e-2, *extra]
    run_cli(*args)
    return out


def test_qwen3_trains_on_tool_calls_and_generates(manager, tiny_dirs, tmp_path):
    from safetensors.torch import load_file

    from tuneforge.api import load_for_inference, read_run_record, validate_conversation

    row = {"messages": TOOL_CONVERSATION, "tools": [WEATHER_TOOL]}
    data = _write_rows(tmp_path / "tools.jsonl", [row] * 4)
    out = _sft(tiny_dirs["qwen3"], data, tmp_path / "run")

    run = read_run_record(out)
    assert (run.model_family, run.template, run.tuner) == ("qwen3", "qwen3", "lora")
    weights = load_file(out / "adapter_model.safetensors")
    adapted = {key.split(".lora_B")[0].rsplit(".", 1)[-1] for key in weights if "lora_B" in key}
    assert adapted == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    assert any(v.abs().sum() > 0 for k, v in weights.items() if "lora_B" in k)

    loaded = load_for_inference(str(out))
    assert loaded.template_name == "qwen3" and loaded.family.name == "qwen3"
    # The loss of this row covers the calls and the answer, not the tool results.
    encoded = loaded.template.encode(validate_conversation(row)["messages"], tools=row["tools"])
    learned = loaded.tokenizer.decode([t for t, label in zip(encoded.input_ids, encoded.labels) if label != IGNORE_INDEX])
    assert "<tool_call>" in learned and "get_weather" in learned and "temp" not in learned

    prompt = loaded.template.prompt(TOOL_CONVERSATION[:1], tools=[WEATHER_TOOL])
    ids = torch.tensor([prompt], device=loaded.device)
    with torch.no_grad():
        generated = loaded.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=4, do_sample=False)
    assert generated.shape[1] > ids.shape[1]
    assert generated[0, : ids.shape[1]].tolist() == prompt


@pytest.mark.parametrize("kind", ["qwen2", "qwen3_moe"])
def test_qwen2_and_qwen3_moe_train_a_few_lora_steps(manager, tiny_dirs, tmp_path, kind):
    from tuneforge.api import load_for_inference, read_run_record

    rows = [{"messages": [{"role": "user", "content": f"What is {i} plus {i}?"},
                          {"role": "assistant", "content": f"{2 * i}."}]} for i in range(4)]
    out = _sft(tiny_dirs[kind], _write_rows(tmp_path / "sums.jsonl", rows), tmp_path / "run")
    run = read_run_record(out)
    assert run.model_family == FAMILIES[kind]
    assert run.template == ("qwen2_5" if kind == "qwen2" else "qwen3")
    assert run.train_metrics["global_step"] == 2

    loaded = load_for_inference(str(out))
    ids = torch.tensor([loaded.template.prompt([{"role": "user", "content": "What is 5 plus 5?"}])])
    with torch.no_grad():
        generated = loaded.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=3, do_sample=False)
    assert generated.shape[1] > ids.shape[1]


def test_qwen3_reasoning_rows_train_with_the_answer_only_template(manager, tiny_dirs, tmp_path):
    from tuneforge.api import read_run_record

    rows = [{"messages": [{"role": "user", "content": "2+2?"},
                          {"role": "assistant", "reasoning_content": "Two and two.", "content": "4"}]}] * 2
    out = _sft(tiny_dirs["qwen3"], _write_rows(tmp_path / "r.jsonl", rows), tmp_path / "run", "--template", "qwen3-answer-only")
    assert read_run_record(out).template == "qwen3-answer-only"


def test_the_meeting_minutes_example_config_is_valid(manager):
    from pathlib import Path

    from tuneforge.testing import sft_config

    path = Path(__file__).parents[1] / "examples" / "meeting-minutes-qwen3.yaml"
    config = sft_config(path)
    assert (config.template, config.max_length, config.train_type) == ("qwen3-nothink", 32768, "lora")
    assert "## Action items" in config.system
    registry(manager).get("chat_templates", config.template)  # names a template this plugin registers


def test_thinking_is_switched_per_request(manager, qwen_tokenizer_dir, tmp_path):
    """A request's template_options reach the template: enable_thinking=False prompts with the empty think block."""
    from tuneforge.api import ChatRequest, SamplingParams, create_engine
    from tuneforge_qwen.testing import tiny_qwen_dir

    engine = create_engine("pt", tiny_qwen_dir(tmp_path / "qwen3", "qwen3", tokenizer_dir=qwen_tokenizer_dir))
    try:
        def prompt_tokens(**options):
            request = ChatRequest([{"role": "user", "content": "hi"}], sampling=SamplingParams(max_tokens=1), template_options=options or None)
            return engine.generate([request])[0][0].prompt_tokens

        thinking, plain = prompt_tokens(), prompt_tokens(enable_thinking=False)
        assert plain > thinking  # "<think>\n\n</think>\n\n" closes the reasoning before the answer
        with pytest.raises(Exception, match="takes no option 'temperature'"):
            prompt_tokens(temperature=0.5)
    finally:
        engine.close()
