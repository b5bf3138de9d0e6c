"""InternLM3 checkpoints are matched, trained with LoRA and generate; InternLM2 weights convert exactly."""

import json

import pytest
import torch

from tuneforge.testing import registry, run_cli

from test_internlm_templates import TOOL_CONVERSATION, WEATHER_TOOL


@pytest.fixture(scope="session")
def tiny_internlm3(tmp_path_factory, internlm_tokenizer_dir):
    from tuneforge_internlm.testing import tiny_internlm3_dir

    return tiny_internlm3_dir(tmp_path_factory.mktemp("tiny-internlm3") / "model", tokenizer_dir=internlm_tokenizer_dir)


def invoke(*args):
    return run_cli(*args, ok=False)


def test_registers_the_family_templates_and_command(manager):
    records = registry(manager)
    assert manager.infos["internlm"].registers == {
        "model_families": ["internlm3"],
        "chat_templates": ["internlm2", "internlm3"],
    }
    family = records.get("model_families", "internlm3")
    assert family.default_template == "internlm3"
    assert "internlm2-to-llama" in invoke("--help").output


def test_an_internlm3_checkpoint_picks_its_family_over_llama(manager, tiny_internlm3):
    from transformers import AutoConfig, AutoModelForCausalLM

    from tuneforge.api import load_hf_config, match_family

    config = load_hf_config(tiny_internlm3)
    assert config.model_type == "internlm3" and config.architectures == ["InternLM3ForCausalLM"]
    assert match_family(config).name == "internlm3"
    assert match_family(AutoConfig.for_model("internlm3")).name == "internlm3"

    model = AutoModelForCausalLM.from_pretrained(tiny_internlm3, dtype=torch.float32)
    linear = {name.rsplit(".", 1)[-1] for name, module in model.named_modules() if isinstance(module, torch.nn.Linear)}
    assert set(registry(manager).get("model_families", "internlm3").lora_target_modules) <= linear


def test_internlm3_trains_multi_turn_tool_data_with_lora_and_generates(manager, tiny_internlm3, tmp_path):
    from safetensors.torch import load_file

    from tuneforge.api import load_for_inference, read_run_record

    rows = [{"messages": TOOL_CONVERSATION, "tools": [WEATHER_TOOL]}] * 2 + [
        {"messages": [{"role": "user", "content": "My order is late."}, {"role": "assistant", "content": "Which order?"},
                      {"role": "user", "content": "A-17."}, {"role": "assistant", "content": "It ships tomorrow."}]}] * 2
    data = tmp_path / "support.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    out = tmp_path / "run"
    result = invoke("sft", "--model", tiny_internlm3, "--dataset", data, "--output-dir", out, "--max-steps", 2,
                    "--per-device-batch-size", 2, "--save-steps", 100, "--max-length", 512, "--lora-rank", 4,
                    "--learning-rate", 1e-2)
    assert result.exit_code == 0, result.output

    run = read_run_record(out)
    assert (run.model_family, run.template, run.tuner) == ("internlm3", "internlm3", "lora")
    weights = load_file(out / "adapter_model.safetensors")
    adapted = {key.split(".lora_B")[0].rsplit(".", 1)[-1] for key in weights if "lora_B" in key}
    assert adapted == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}

    loaded = load_for_inference(str(out))
    prompt = loaded.template.prompt(TOOL_CONVERSATION[:2], tools=[WEATHER_TOOL])
    ids = torch.tensor([prompt])
    with torch.no_grad():
        generated = loaded.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=4, do_sample=False)
    assert generated.shape[1] > ids.shape[1] and generated[0, : ids.shape[1]].tolist() == prompt


# -- InternLM2: fused wqkv -----------------------------------------------------------------


def _fuse(q, k, v, num_heads, num_kv_heads, head_dim):
    """The InternLM2 wqkv layout: per key/value head, its query heads, then its key, then its value."""
    groups = num_heads // num_kv_heads
    q = q.reshape(num_kv_heads, groups, head_dim, -1)
    k = k.reshape(num_kv_heads, 1, head_dim, -1)
    v = v.reshape(num_kv_heads, 1, head_dim, -1)
    return torch.cat([q, k, v], dim=1).reshape((num_heads + 2 * num_kv_heads) * head_dim, -1)


@pytest.fixture(scope="module")
def internlm2_pair(tmp_path_factory, internlm_tokenizer_dir):
    """A tiny Llama and the same weights written as an InternLM2 checkpoint (names, fused wqkv, config)."""
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM

    from tuneforge.testing import tiny_model_dir

    root = tmp_path_factory.mktemp("internlm2")
    llama_dir = tiny_model_dir(root / "llama", tokenizer_dir=internlm_tokenizer_dir, num_heads=4, num_kv_heads=2,
                               tie_word_embeddings=False, initializer_range=0.2)
    llama = AutoModelForCausalLM.from_pretrained(llama_dir, dtype=torch.float32)
    c = llama.config
    head_dim = c.hidden_size // c.num_attention_heads
    state = llama.state_dict()
    fused = {"model.tok_embeddings.weight": state["model.embed_tokens.weight"], "model.norm.weight": state["model.norm.weight"],
             "output.weight": state["lm_head.weight"]}
    for i in range(c.num_hidden_layers):
        p = f"model.layers.{i}"
        fused[f"{p}.attention.wqkv.weight"] = _fuse(state[f"{p}.self_attn.q_proj.weight"], state[f"{p}.self_attn.k_proj.weight"],
                                                    state[f"{p}.self_attn.v_proj.weight"], c.num_attention_heads,
                                                    c.num_key_value_heads, head_dim)
        fused[f"{p}.attention.wo.weight"] = state[f"{p}.self_attn.o_proj.weight"]
        fused[f"{p}.feed_forward.w1.weight"] = state[f"{p}.mlp.gate_proj.weight"]
        fused[f"{p}.feed_forward.w3.weight"] = state[f"{p}.mlp.up_proj.weight"]
        fused[f"{p}.feed_forward.w2.weight"] = state[f"{p}.mlp.down_proj.weight"]
        fused[f"{p}.attention_norm.weight"] = state[f"{p}.input_layernorm.weight"]
        fused[f"{p}.ffn_norm.weight"] = state[f"{p}.post_attention_layernorm.weight"]
    src = root / "internlm2"
    src.mkdir()
    save_file({k: v.contiguous() for k, v in fused.items()}, src / "model.safetensors")
    config = {
        "architectures": ["InternLM2ForCausalLM"], "model_type": "internlm2", "bias": False,
        "auto_map": {"AutoConfig": "configuration_internlm2.InternLM2Config",
                     "AutoModelForCausalLM": "modeling_internlm2.InternLM2ForCausalLM"},
        **{key: getattr(c, key) for key in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                                            "num_attention_heads", "num_key_value_heads", "rms_norm_eps",
                                            "max_position_embeddings", "bos_token_id", "eos_token_id", "pad_token_id")},
        "rope_theta": c.rope_parameters["rope_theta"], "hidden_act": "silu", "tie_word_embeddings": False,
    }
    (src / "config.json").write_text(json.dumps(config))
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (src / name).write_bytes((root / "llama" / name).read_bytes())
    return llama, src


def test_internlm2_converts_to_a_llama_with_the_same_outputs(manager, internlm2_pair, tmp_path):
    from transformers import AutoModelForCausalLM

    from tuneforge.api import load_hf_config, match_family

    llama, src = internlm2_pair
    dst = tmp_path / "converted"
    result = invoke("internlm2-to-llama", src, dst)
    assert result.exit_code == 0, result.output
    assert "--template internlm2" in result.output

    converted = AutoModelForCausalLM.from_pretrained(dst, dtype=torch.float32)
    ids = torch.tensor([[5, 17, 300, 42, 9, 1000, 7]])
    with torch.no_grad():
        assert torch.allclose(converted(input_ids=ids).logits, llama(input_ids=ids).logits, atol=1e-5)
    assert match_family(load_hf_config(str(dst))).name == "llama"
    assert (dst / "tokenizer.json").is_file()


def test_internlm2_conversion_refuses_other_checkpoints_and_busy_outputs(manager, internlm2_pair, tiny_internlm3, tmp_path):
    _, src = internlm2_pair
    result = invoke("internlm2-to-llama", tiny_internlm3, tmp_path / "x")
    assert result.exit_code != 0 and "'internlm3' checkpoint, not an InternLM2 one" in result.output
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "file").write_text("x")
    result = invoke("internlm2-to-llama", src, busy)
    assert result.exit_code != 0 and "is not empty" in result.output


def test_the_support_dialogue_example_config_is_valid(manager):
    from pathlib import Path

    from tuneforge.testing import sft_config

    path = Path(__file__).parents[1] / "examples" / "support-dialogue-internlm3-qlora.yaml"
    config = sft_config(path)
    assert (config.train_type, config.packing, config.template) == ("qlora", True, None)
    registry(manager).get("tuners", config.train_type)


def test_an_internlm3_tool_call_comes_back_parsed_from_the_engine(manager, tiny_internlm3, tmp_path):
    """InternLM's call markers are special tokens: the engine keeps them in the text its template parses."""
    from tuneforge.api import ChatRequest, SamplingParams, create_engine
    from tuneforge.testing import WEATHER_CALL, WEATHER_TOOLS, tool_calling_model_dir

    model = tool_calling_model_dir(tmp_path / "internlm3-tools", base_dir=tiny_internlm3, template="internlm3")
    engine = create_engine("pt", model)  # the family picks the internlm3 template by itself
    try:
        request = ChatRequest(WEATHER_CALL[:1], tools=WEATHER_TOOLS, sampling=SamplingParams(max_tokens=60))
        [[answer]] = engine.generate([request])
        assert answer.finish_reason == "tool_calls", answer
        [call] = answer.tool_calls
        assert call["function"]["name"] == "get_weather" and json.loads(call["function"]["arguments"]) == {"city": "Vienna"}
        deltas = list(engine.stream(request))
        assert "<|action_start|>" not in "".join(deltas)
    finally:
        engine.close()
