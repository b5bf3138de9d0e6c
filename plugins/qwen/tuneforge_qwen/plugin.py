"""The Qwen plugin: model families and chat templates for Qwen2, Qwen2.5, Qwen3 and Qwen3-MoE.

Only records are built here; the template code is imported when a template is built.
"""

from tuneforge.api import ChatTemplate, ModelFamily, hookimpl

TUNEFORGE_API = "1.0"  # the tuneforge.api version this plugin was written for

DENSE_LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
# Qwen3-MoE keeps its experts as fused parameters, not linear layers: LoRA adapts attention.
MOE_ATTENTION = ("q_proj", "k_proj", "v_proj", "o_proj")


@hookimpl
def tuneforge_model_families():
    yield ModelFamily(
        name="qwen2",
        description="Qwen2 and Qwen2.5 dense, base, instruct and coder (Qwen2ForCausalLM)",
        architectures=("Qwen2ForCausalLM",),
        model_types=("qwen2",),
        default_template="qwen2_5",
        lora_target_modules=DENSE_LINEAR,
    )
    yield ModelFamily(
        name="qwen3",
        description="Qwen3 dense, base and instruct, with reasoning (Qwen3ForCausalLM)",
        architectures=("Qwen3ForCausalLM",),
        model_types=("qwen3",),
        default_template="qwen3",
        lora_target_modules=DENSE_LINEAR,
    )
    yield ModelFamily(
        name="qwen3-moe",
        description="Qwen3 mixture of experts (Qwen3MoeForCausalLM); LoRA on attention",
        architectures=("Qwen3MoeForCausalLM",),
        model_types=("qwen3_moe",),
        default_template="qwen3",
        lora_target_modules=MOE_ATTENTION,
    )


def _build(name):
    def build(tokenizer):
        from tuneforge_qwen import templates

        return getattr(templates, f"build_{name}")(tokenizer)

    return build


@hookimpl
def tuneforge_chat_templates():
    yield ChatTemplate(
        name="qwen2",
        description="Qwen2 ChatML, default system 'You are a helpful assistant.', <tool_call> tools",
        build=_build("qwen2"),
    )
    yield ChatTemplate(
        name="qwen2_5",
        description="Qwen2.5 ChatML, default system 'You are Qwen, created by Alibaba Cloud...', <tool_call> tools",
        build=_build("qwen2_5"),
    )
    yield ChatTemplate(
        name="qwen3",
        description="Qwen3 ChatML with thinking: <think> blocks learned, dropped from earlier turns, <tool_call> tools",
        build=_build("qwen3"),
    )
    yield ChatTemplate(
        name="qwen3-nothink",
        description="Qwen3 with enable_thinking=False: an empty <think> block in the prompt, answers only",
        build=_build("qwen3_nothink"),
    )
    yield ChatTemplate(
        name="qwen3-answer-only",
        description="Qwen3 with thinking shown but not learned: the loss covers the answers only",
        build=_build("qwen3_answer_only"),
    )
