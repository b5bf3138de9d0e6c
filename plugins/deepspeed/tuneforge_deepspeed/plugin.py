"""The hooks of tuneforge-deepspeed: the ``deepspeed`` parallel backend (ZeRO-2 and ZeRO-3).

Registering imports neither DeepSpeed nor torch: ``zero.training_args`` imports
DeepSpeed in each training process.
"""

from __future__ import annotations

import sys

from tuneforge.api import ParallelBackend, hookimpl

from . import zero

TUNEFORGE_API = "1.0"  # the tuneforge.api version this plugin was written for


def _torchrun(nproc: int):
    """torchrun for ``nproc`` processes on this machine (None: the run stays in this process)."""
    if nproc <= 1:
        return None
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}"]


@hookimpl
def tuneforge_parallel_backends():
    yield ParallelBackend(
        name="deepspeed",
        description="DeepSpeed ZeRO-2 or ZeRO-3 (gradients, optimizer state and, with ZeRO-3, weights sharded), "
        "optionally offloaded to CPU memory, torchrun",
        launch_command=_torchrun,
        training_args=zero.training_args,
        # ZeRO-3 does (ZeRO-2 keeps whole weights): the chunked loss is off unless asked for, and refused with ZeRO-3
        shards_parameters=True,
        check=zero.check,
        options=zero.ZeroOptions,
    )
