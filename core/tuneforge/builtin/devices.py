"""Built-in devices (an internal plugin): CPU, CUDA, Apple MPS."""

from tuneforge import hookimpl
from tuneforge.records import Device, FastPath

# On CUDA every part of the fast path pays for itself (docs/performance.md).
CUDA_FAST_PATH = FastPath(
    packing=True, varlen_attention=True, chunked_loss=True, fused_kernels=True, gradient_checkpointing=True
)
# Apple GPUs have no Triton kernels, so only activation recomputation is on by default.
MPS_FAST_PATH = FastPath(gradient_checkpointing=True)


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def _cuda_bf16() -> bool:
    import torch

    return torch.cuda.is_available() and torch.cuda.is_bf16_supported()


def _cuda_peak_memory() -> int:
    import torch

    return torch.cuda.max_memory_allocated() if torch.cuda.is_available() else 0


def _cuda_empty_cache() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _cuda_prepare_training() -> None:
    import torch

    # cuDNN's attention backward (torch's default SDPA kernel on H100/H200 from torch 2.11, in bf16
    # and fp16) returns NaN query gradients when a mask is passed and the length is 64 past a multiple
    # of 128 (torch issue 196678): padded batches, as GRPO and DPO train on, turn the weights NaN.
    # Flash and memory-efficient attention take over.
    torch.backends.cuda.enable_cudnn_sdp(False)


def _mps_available() -> bool:
    import torch

    return bool(getattr(torch.backends, "mps", None)) and torch.backends.mps.is_available()


@hookimpl
def tuneforge_devices():
    yield Device(
        name="cpu",
        description="The CPU (float32)",
        torch_device="cpu",
        is_available=lambda: True,
        distributed_backend="gloo",
        priority=0,
    )
    yield Device(
        name="cuda",
        description="NVIDIA GPUs through CUDA (bf16 where supported)",
        torch_device="cuda",
        is_available=_cuda_available,
        supports_bf16=_cuda_bf16,
        distributed_backend="nccl",
        peak_memory=_cuda_peak_memory,
        empty_cache=_cuda_empty_cache,
        # Packed batches change size every step; with fixed segments the allocator keeps
        # the blocks of every size it saw (measured: 30.9 GiB reserved for 24.0 GiB in use
        # on a 7B LoRA run; 24.7 GiB reserved with expandable segments).
        environment={"PYTORCH_CUDA_ALLOC_CONF": "expandable_segments:True"},
        fast_path=CUDA_FAST_PATH,
        prepare_training=_cuda_prepare_training,
        priority=10,
    )
    yield Device(
        name="mps",
        description="Apple silicon GPUs through Metal",
        torch_device="mps",
        is_available=_mps_available,
        fast_path=MPS_FAST_PATH,
        priority=5,
    )
