"""The hooks of tuneforge-deepspeed: the ``deepspeed`` parallel backend (ZeRO-2 and ZeRO-3).

Registering imports neither DeepSpeed nor torch: ``zero.training_args`` imports
DeepSpeed in each training process.
"""

from __future__ import annotations

from tuneforge.api import DoctorChecks, ParallelBackend, hookimpl, torchrun_command

from . import zero

TUNEFORGE_API = "1.0"  # the tuneforge.api version this plugin was written for


@hookimpl
def tuneforge_parallel_backends():
    yield ParallelBackend(
        name="deepspeed",
        description="DeepSpeed ZeRO-2 or ZeRO-3 (gradients, optimizer state and, with ZeRO-3, weights sharded), "
        "optionally offloaded to CPU memory, torchrun",
        launch_command=torchrun_command,  # the core's: a failed process ends the run in one line
        training_args=zero.training_args,
        # ZeRO-3 does (ZeRO-2 keeps whole weights)
        shards_parameters=True,
        fast_path_off=zero.fast_path_off,  # ZeRO-3: the chunked loss (refused when asked for: zero.check)
        check=zero.check,
        memory_layout=zero.memory_layout,
        # ZeRO's checkpoints hold optimizer state partitioned for the processes that wrote them
        resumes_on_other_process_counts=False,
        options=zero.ZeroOptions,
    )


@hookimpl
def tuneforge_doctor_checks():
    # `tuneforge doctor` imports it in a subprocess: DeepSpeed built for another torch fails there, not mid-run
    return DoctorChecks(imports={"deepspeed": "deepspeed>=0.19"})
