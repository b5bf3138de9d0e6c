"""The Mistral plugin: registered through tuneforge's hooks, and its family fits real Mistral checkpoints."""

import pytest

import tuneforge_mistral.plugin
from tuneforge.testing import plugin_installed, registry

PLUGIN_NAME = "mistral"


@pytest.fixture
def manager():
    """A fresh manager with the core's defaults and this plugin, installed process-wide."""
    with plugin_installed(tuneforge_mistral.plugin, PLUGIN_NAME, "tuneforge-mistral") as manager:
        yield manager


@pytest.fixture(scope="module")
def tiny_mistral_dir(tmp_path_factory, smollm2_dir):
    from tuneforge.testing import tiny_model_dir

    return tiny_model_dir(tmp_path_factory.mktemp("tiny-mistral"), model_type="mistral", tokenizer_dir=smollm2_dir)


def test_registers_the_mistral_family(manager):
    records = registry(manager)

    family = records.get("model_families", "mistral")
    assert family.architectures == ("MistralForCausalLM",)
    assert family.model_types == ("mistral",)
    assert family.default_template == "default"
    assert set(family.lora_target_modules) == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    assert records.provider("model_families", "mistral") == PLUGIN_NAME
    assert manager.infos[PLUGIN_NAME].registers == {"model_families": ["mistral"]}


def test_registers_no_chat_template(manager):
    # The tokenizer's own template ("default") serves Mistral; the plugin adds none.
    assert registry(manager).providers["chat_templates"].get("mistral") is None
    assert "chat_templates" not in manager.infos[PLUGIN_NAME].registers


def test_a_mistral_checkpoint_matches_the_family(manager, tiny_mistral_dir):
    from tuneforge.api import load_hf_config, match_family

    config = load_hf_config(tiny_mistral_dir)
    assert config.architectures == ["MistralForCausalLM"]
    assert match_family(config).name == "mistral"


def test_a_config_with_only_the_model_type_matches(manager):
    from transformers import AutoConfig

    config = AutoConfig.for_model("mistral")  # no architectures, as in some hand-written configs
    assert not config.architectures
    from tuneforge.api import match_family

    assert match_family(config).name == "mistral"


def test_loads_and_runs_a_forward_pass(manager, tiny_mistral_dir):
    import torch
    from transformers import AutoTokenizer

    from tuneforge.api import load_hf_config, load_model, match_family

    family = match_family(load_hf_config(tiny_mistral_dir))
    model = load_model(tiny_mistral_dir, family, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(tiny_mistral_dir)
    batch = tokenizer(["The capital of France is"], return_tensors="pt")

    with torch.no_grad():
        logits = model(**batch).logits

    assert type(model).__name__ == "MistralForCausalLM"
    assert logits.shape == (1, batch["input_ids"].shape[1], len(tokenizer))
    assert torch.isfinite(logits).all()


def test_lora_targets_exist_and_train(manager, tiny_mistral_dir):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    family = registry(manager).get("model_families", "mistral")
    model = AutoModelForCausalLM.from_pretrained(tiny_mistral_dir, dtype=torch.float32)
    module_names = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    assert set(family.lora_target_modules) <= module_names

    model = get_peft_model(model, LoraConfig(r=4, target_modules=list(family.lora_target_modules)))
    ids = torch.tensor([[1, 2, 3, 4, 5, 6]])
    model(input_ids=ids, labels=ids).loss.backward()

    adapted = {name.split(".lora_B")[0].rsplit(".", 1)[-1] for name, p in model.named_parameters() if "lora_B" in name}
    assert adapted == set(family.lora_target_modules)
    assert all(p.grad is not None for name, p in model.named_parameters() if "lora_B" in name)
