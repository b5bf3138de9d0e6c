"""The Mistral model family.

tuneforge imports this module through the entry point in pyproject.toml and calls
the hooks below. A hook only returns records (plain data): nothing heavy is
imported here, so `tuneforge --help` and `tuneforge plugins` stay fast.
"""

from tuneforge.api import ModelFamily, hookimpl

TUNEFORGE_API = "1.0"  # the tuneforge.api version this plugin was written for


@hookimpl
def tuneforge_model_families():
    yield ModelFamily(
        name="mistral",
        description="Mistral 7B and relatives (MistralForCausalLM)",
        # Matched against the checkpoint's config.json: either one claims it.
        architectures=("MistralForCausalLM",),
        model_types=("mistral",),
        # Mistral's instruct tokenizers ship their own chat template, so "default"
        # (the tokenizer's own) fits and this plugin needs no ChatTemplate.
        default_template="default",
        # The seven projections of each decoder layer (the Llama layout): the
        # usual LoRA recipe, named so a run records exactly what it adapted.
        lora_target_modules=("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"),
    )
