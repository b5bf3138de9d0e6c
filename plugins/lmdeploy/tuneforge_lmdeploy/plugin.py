"""Registers the ``lmdeploy`` inference engine; LMDeploy itself is imported only when an engine is created.

The record is there wherever the plugin is installed (``tuneforge plugins`` and
``tuneforge list`` show it); creating the engine where LMDeploy cannot run (no CUDA
device, or the ``lmdeploy`` package missing) is refused with one sentence before any
weights load (``tuneforge_lmdeploy.engine.check_runnable``).
"""

from dataclasses import asdict, dataclass, fields
from typing import Optional

from tuneforge.api import DoctorChecks, InferenceEngine, TuneforgeError, hookimpl, option

TUNEFORGE_API = "1.0"  # the tuneforge.api version this plugin was written for


@dataclass
class LMDeployOptions:
    """LMDeploy's own options (``--engine lmdeploy --help``); the factory receives each as a keyword argument."""

    backend: str = option("pytorch", "LMDeploy's engine: pytorch (Triton kernels, LoRA adapters) or turbomind (its CUDA engine, where its binaries are installed; no adapters).", group="engine")
    tp: int = option(1, "GPUs one model is split across (tensor parallelism).", group="engine")
    session_len: Optional[int] = option(None, "Context length served (prompt and answer); default: the model's.", group="engine")
    cache_max_entry_count: float = option(0.8, "Share of the free GPU memory (after the weights) LMDeploy takes for the KV cache, above 0 and below 1.", group="engine")
    dtype: str = option("auto", "Weight dtype: auto, bfloat16 or float16 (--torch-dtype sets it too; LMDeploy has no float32: auto serves a float32 checkpoint in float16).", group="engine")
    model_format: Optional[str] = option(None, "The checkpoint's weight format: hf, awq, gptq, compressed-tensors or fp8; default: read from the checkpoint's quantization_config.", group="engine")
    eager_mode: bool = option(False, "Skip CUDA graphs (faster start, slower decoding steps).", group="engine")
    max_prefill_token_num: int = option(8192, "Most prompt tokens one prefill step takes (longer prompts are split).", group="engine")
    enable_prefix_caching: bool = option(False, "Reuse the KV cache of prompt prefixes shared between requests.", group="engine")


def create_lmdeploy(model, *, batch_size: int | None = None, torch_dtype: str | None = None, device: str | None = None, **options):
    """The engine, with ``options`` the fields of ``LMDeployOptions`` (their defaults where left out)."""
    from .engine import LMDeployEngine, check_options, check_runnable

    unknown = sorted(set(options) - {f.name for f in fields(LMDeployOptions)})
    if unknown:
        raise TuneforgeError(f"The lmdeploy engine has no option {unknown[0]!r}; `tuneforge infer --engine lmdeploy --help` lists its options.")
    chosen = asdict(LMDeployOptions(**options))
    if torch_dtype not in (None, "auto"):
        chosen["dtype"] = torch_dtype
    check_options(batch_size=batch_size, **{k: v for k, v in chosen.items() if k not in ("eager_mode", "enable_prefix_caching")})
    check_runnable(device=device, backend=chosen["backend"])  # before anything loads: a CUDA device, the lmdeploy package
    return LMDeployEngine(model, batch_size=batch_size, **chosen)


@hookimpl
def tuneforge_inference_engines():
    yield InferenceEngine(
        name="lmdeploy",
        description="LMDeploy: continuous batching, paged KV cache, LoRA adapters per request, AWQ checkpoints (CUDA GPUs only)",
        create=create_lmdeploy,
        options=LMDeployOptions,
        common_options=("batch_size", "torch_dtype", "device"),  # LMDeploy picks its own attention kernels
    )


@hookimpl
def tuneforge_doctor_checks():
    # Where lmdeploy is installed, `tuneforge doctor` imports it in a subprocess: it pins torch and peft, so a
    # mismatched set fails there. Where it is not, nothing is wrong: the engine is refused with what to install.
    import importlib.util

    return DoctorChecks(imports={"lmdeploy": "tuneforge-lmdeploy[engine]"} if importlib.util.find_spec("lmdeploy") else {})
