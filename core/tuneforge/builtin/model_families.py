"""Built-in model families (an internal plugin): generic Llama-style checkpoints."""

from tuneforge import hookimpl
from tuneforge.records import ModelFamily

LLAMA_LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@hookimpl
def tuneforge_model_families():
    yield ModelFamily(
        name="llama",
        description="Llama-style decoders (Llama 2/3, SmolLM2, and others with the same layout)",
        architectures=("LlamaForCausalLM",),
        model_types=("llama",),
        default_template="default",
        lora_target_modules=LLAMA_LINEAR,
    )
    yield ModelFamily(
        name="causal-lm",
        description="Any transformers causal LM no other family claims (tokenizer's own template, LoRA on all linear layers)",
        default_template="default",
        lora_target_modules=("all-linear",),
        priority=-100,
    )
