"""The ``npu`` device: Ascend NPUs through torch_npu, registered without importing it.

The record answers everything the core asks a device (``tuneforge.api.Device``):
availability, bf16, ``hccl`` for runs over several processes, memory statistics, cache
emptying, the environment an Ascend job needs, the fast-path defaults, and Ascend's own
fused operators (``kernels``: ``tuneforge_ascend.npu``). Each callable imports
torch_npu when it is called; this module imports nothing heavy, since every
``tuneforge`` command imports it. ``tuneforge_doctor_checks`` declares, as data, what
``tuneforge doctor`` checks for this plugin (``tuneforge_ascend.known_bad``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from tuneforge.api import Device, DeviceKernels, DoctorChecks, FastPath, FastPathOptions, hookimpl, option

from . import known_bad, npu

TUNEFORGE_API = "1.0"  # the tuneforge.api version this plugin was written for

# Set before the first allocation unless already set (docs/ascend.md says what each does).
ENVIRONMENT = {
    # The caching allocator maps memory in growable segments: less fragmentation when
    # packed rows change length every step (torch_npu's PYTORCH_CUDA_ALLOC_CONF).
    "PYTORCH_NPU_ALLOC_CONF": "expandable_segments:True",
    # torch_npu hands operators to the device from a queue on its own thread (level 1),
    # so the Python loop runs ahead of the NPU.
    "TASK_QUEUE_ENABLE": "1",
    # Seconds HCCL waits for every process to join a collective's links; its default (120)
    # is shorter than loading a large checkpoint on each process of a node.
    "HCCL_CONNECT_TIMEOUT": "1200",
}

# Every part of tuneforge's fast path that runs on an NPU: packing and the chunked loss
# are plain PyTorch, the fused LoRA layers a plain autograd function; the norm, SwiGLU,
# rotary and varlen attention kernels are Ascend's own (npu.kernels), never torch.compile's.
NPU_FAST_PATH = FastPath(
    packing=True, varlen_attention=True, chunked_loss=True, fused_kernels=True, gradient_checkpointing=True
)


@dataclass
class NpuOptions(FastPathOptions):
    """The fast-path switches of ``--device npu``: the core's, computed by Ascend's operators."""

    fused_norm: Optional[bool] = option(None, "Run the models' Llama-style RMSNorm as torch_npu.npu_rms_norm; default: on.", group="training")
    fused_swiglu: Optional[bool] = option(None, "Run the models' SiLU-gated MLP product as torch_npu.npu_swiglu; default: on.", group="training")
    fused_rope: Optional[bool] = option(None, "Apply the models' rotary embeddings with torch_npu.npu_rotary_mul; default: on.", group="training")


def npu_kernels() -> DeviceKernels:
    """Ascend's fused operators that the installed torch_npu provides."""
    return npu.kernels(DeviceKernels)


def npu_device(torch_device: str = "npu") -> Device:
    """The ``npu`` record. ``torch_device`` is torch_npu's device type; the plugin's tests build
    the record with ``"cpu"``, the device their stand-in torch_npu maps the NPU onto."""
    return Device(
        name="npu",
        description="Ascend NPU through torch_npu (hccl across processes, Ascend's fused operators)",
        torch_device=torch_device,
        is_available=npu.is_available,
        supports_bf16=npu.supports_bf16,
        distributed_backend="hccl",
        peak_memory=npu.peak_memory,
        empty_cache=npu.empty_cache,
        environment=dict(ENVIRONMENT),
        fast_path=NPU_FAST_PATH,
        priority=20,  # the default wherever an NPU is found
        options=NpuOptions,
        kernels=npu_kernels,
        unavailable=npu.unavailable,
    )


@hookimpl
def tuneforge_devices():
    yield npu_device()


@hookimpl
def tuneforge_doctor_checks():
    return DoctorChecks(imports={"torch_npu": npu.matching_torch_npu()}, known_bad=known_bad.known_bad())
