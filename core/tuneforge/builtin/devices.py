"""Built-in devices (an internal plugin): CPU, CUDA, Apple MPS."""

from tuneforge import hookimpl
from tuneforge.records import Device


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def _cuda_bf16() -> bool:
    import torch

    return torch.cuda.is_available() and torch.cuda.is_bf16_supported()


def _cuda_memory() -> int:
    import torch

    return torch.cuda.max_memory_allocated() if torch.cuda.is_available() else 0


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
        memory_allocated=_cuda_memory,
        priority=10,
    )
    yield Device(
        name="mps",
        description="Apple silicon GPUs through Metal",
        torch_device="mps",
        is_available=_mps_available,
        priority=5,
    )
