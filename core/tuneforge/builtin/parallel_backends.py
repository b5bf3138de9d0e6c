"""Built-in parallel backends (an internal plugin): one process, DDP, FSDP."""

import os
import sys

from tuneforge import hookimpl
from tuneforge.records import ParallelBackend


def torchrun_command(nproc: int) -> list[str]:
    """torchrun for ``nproc`` processes on this machine (the core adds the nodes of a run on several)."""
    return [sys.executable, "-m", "tuneforge.training.torchrun", "--standalone", f"--nproc-per-node={nproc}"]


def _fsdp_args(config) -> dict:
    """FSDP2 (``fully_shard`` on each decoder layer, then the whole model) through accelerate.

    FSDP's own activation checkpointing replaces the Trainer's (transformers refuses both).
    """
    checkpointing = bool(config.gradient_checkpointing)
    return {
        "fsdp": True,
        "fsdp_config": {"version": 2, "reshard_after_forward": True, "activation_checkpointing": checkpointing},
        "gradient_checkpointing": False,
    }


def _on_local_device(config, device) -> dict:
    """A quantized base loads straight onto this process's device (torchrun's LOCAL_RANK; 0 in one process)."""
    return {"device_map": {"": int(os.environ.get("LOCAL_RANK", 0))}}


@hookimpl
def tuneforge_parallel_backends():
    yield ParallelBackend(
        name="single",
        description="One process on one device",
        launch_command=lambda nproc: None,
        supports_quantized_base=True,
        load_kwargs=_on_local_device,
    )
    yield ParallelBackend(
        name="ddp",
        description="Data parallel: one process per device, launched with torchrun",
        launch_command=torchrun_command,
        training_args=lambda config: {"ddp_find_unused_parameters": False},
        supports_quantized_base=True,
        load_kwargs=_on_local_device,
    )
    yield ParallelBackend(
        name="fsdp",
        description="Fully sharded data parallel, FSDP2 (weights, gradients and optimizer state sharded), torchrun",
        launch_command=torchrun_command,
        training_args=_fsdp_args,
        shards_parameters=True,
        min_processes=2,  # accelerate refuses FSDP in one process ("only works in distributed training")
        # accelerate upcasts trainable weights to float32 for FSDP2's mixed precision
        memory_layout=lambda options: {"sharded": ("parameters", "gradients", "optimizer_state"), "float32_weights": True},
    )
