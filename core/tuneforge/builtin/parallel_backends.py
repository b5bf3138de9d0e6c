"""Built-in parallel backends (an internal plugin): one process, DDP, FSDP."""

import sys

from tuneforge import hookimpl
from tuneforge.records import ParallelBackend


def _torchrun(nproc: int):
    if nproc <= 1:
        return None
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}"]


def _fsdp_args(config) -> dict:
    return {
        "fsdp": "full_shard auto_wrap",
        "fsdp_config": {"use_orig_params": True, "activation_checkpointing": bool(config.gradient_checkpointing)},
    }


@hookimpl
def tuneforge_parallel_backends():
    yield ParallelBackend(
        name="single",
        description="One process on one device",
        launch_command=lambda nproc: None,
    )
    yield ParallelBackend(
        name="ddp",
        description="Data parallel: one process per device, launched with torchrun",
        launch_command=_torchrun,
        training_args=lambda config: {"ddp_find_unused_parameters": False},
    )
    yield ParallelBackend(
        name="fsdp",
        description="Fully sharded data parallel (weights, gradients and optimizer state sharded), torchrun",
        launch_command=_torchrun,
        training_args=_fsdp_args,
        shards_parameters=True,
    )
