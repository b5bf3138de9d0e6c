"""The deepspeed backend: its options, their check, and the DeepSpeed config it hands the Trainer.

The Trainer's DeepSpeed integration (``TrainingArguments(deepspeed=<dict>)``) does the
work; this module only writes the config. Batch sizes, gradient accumulation, clipping,
bf16/fp16 and the bucket sizes are ``"auto"``: transformers fills them from the run's
options and the model's hidden size, so they always agree with what tuneforge trains.
The optimizer and scheduler stay the Trainer's own (torch's AdamW): DeepSpeed's own
optimizers are compiled ops (its CPU Adam among them), which a CPU-only machine would
build on the first run for minutes.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import warnings
from dataclasses import dataclass
from typing import Literal

from tuneforge.api import TuneforgeError, option

INSTALL = 'DS_BUILD_OPS=0 pip install --no-build-isolation "deepspeed>=0.19"'


@dataclass
class ZeroOptions:
    """The options of the deepspeed backend: ``--parallel-backend deepspeed --help`` lists them."""

    zero_stage: Literal[2, 3] = option(3, "DeepSpeed ZeRO stage: 2 shards gradients and optimizer state, 3 shards the weights too.", group="training")
    offload_optimizer: bool = option(False, "Keep the optimizer state (and its step) in CPU memory instead of on the accelerator (DeepSpeed ZeRO-Offload).", group="training")
    offload_parameters: bool = option(False, "Keep the weights in CPU memory between uses, brought to the accelerator layer by layer (ZeRO-3 only; DeepSpeed ZeRO-Infinity).", group="training")


ZERO3_CHUNKED_LOSS = (
    "the chunked loss reads the output layer's weight after the forward pass, where ZeRO-3 holds only this process's piece of it"
)


def fast_path_off(config) -> dict[str, str]:
    """The fast-path options ZeRO cannot run, each with why (``ParallelBackend.fast_path_off``).

    ZeRO-3: the chunked loss. ZeRO-2 keeps whole weights and runs it (its steps are the
    plain loss's, to float32 rounding, on 2 CPU processes).
    """
    return {"chunked_loss": ZERO3_CHUNKED_LOSS} if getattr(config, "zero_stage", 3) == 3 else {}


def check(config, device) -> None:
    """Refuse, before any process starts, what the deepspeed backend cannot do as asked."""
    check_options(config)
    if config.zero_stage == 3 and getattr(config, "chunked_loss", None):
        raise TuneforgeError(
            "--chunked-loss reads the output layer's weight outside the forward pass, where ZeRO-3 holds only this "
            "process's piece of it; leave --chunked-loss out, or pass --zero-stage 2."
        )
    if importlib.util.find_spec("deepspeed") is None:
        raise TuneforgeError(f"--parallel-backend deepspeed needs the deepspeed package, which is not installed; install it with `{INSTALL}`.")


def check_options(options) -> None:
    """Refuse options of this backend that do not go together (``tuneforge plan`` asks too)."""
    if options.offload_parameters and options.zero_stage != 3:
        raise TuneforgeError(
            f"--offload-parameters needs --zero-stage 3 (ZeRO-{options.zero_stage} keeps whole weights on every device); "
            f"pass --zero-stage 3, or leave --offload-parameters out."
        )


def memory_layout(options) -> dict:
    """What each process holds under these options, for ``tuneforge plan`` (``ParallelBackend.memory_layout``).

    ZeRO keeps a float32 master copy of the trainable weights with the optimizer state.
    """
    check_options(options)
    offloaded = [state for state, on in (("optimizer_state", options.offload_optimizer), ("parameters", options.offload_parameters)) if on]
    return {
        "sharded": ("gradients", "optimizer_state") + (("parameters",) if options.zero_stage == 3 else ()),
        "float32_master_weights": True,
        "offloaded": tuple(offloaded),
    }


def deepspeed_config(config) -> dict:
    """The DeepSpeed config of a run with these options (``"auto"``: transformers fills it in)."""
    zero: dict = {
        "stage": config.zero_stage,
        "contiguous_gradients": True,
        "overlap_comm": True,
        "reduce_bucket_size": "auto",
    }
    if config.zero_stage == 3:
        zero.update(
            {
                "stage3_prefetch_bucket_size": "auto",
                "stage3_param_persistence_threshold": "auto",
                # the final save gathers whole weights, so the output reads like any other run's
                "stage3_gather_16bit_weights_on_model_save": True,
            }
        )
    if config.offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu"}
    if config.offload_parameters:
        zero["offload_param"] = {"device": "cpu"}
    return {
        "train_batch_size": "auto",
        "train_micro_batch_size_per_gpu": "auto",
        "gradient_accumulation_steps": "auto",
        "gradient_clipping": "auto",
        "bf16": {"enabled": "auto"},
        "fp16": {"enabled": "auto"},
        "zero_optimization": zero,
        # torch's AdamW steps the offloaded state on the CPU (DeepSpeed's CPU Adam would be built first)
        "zero_force_ds_cpu_optimizer": False,
        "steps_per_print": 2**31 - 1,  # the Trainer logs the steps
        "wall_clock_breakdown": False,
    }


def training_args(config) -> dict:
    """The ``TrainingArguments`` fields of the deepspeed backend; called in each training process."""
    skip_shared_memory_build()
    one_process_group()
    # DeepSpeed's collectives call torch's older names, which warn at every step.
    warnings.filterwarnings("ignore", message=r"`torch\.distributed\.\w+` is deprecated", category=FutureWarning)
    log(describe(config))
    return {"deepspeed": deepspeed_config(config)}


def describe(config) -> str:
    """What each process holds, for the log: ``DeepSpeed ZeRO-3: ... sharded over 2 processes``."""
    sharded = "weights, gradients and optimizer state" if config.zero_stage == 3 else "gradients and optimizer state"
    offloaded = [what for what, on in (("optimizer state", config.offload_optimizer), ("weights", config.offload_parameters)) if on]
    where = f"; {' and '.join(offloaded)} in CPU memory" if offloaded else ""
    return f"DeepSpeed ZeRO-{config.zero_stage}: {sharded} sharded over {_processes()}{where}"


def _processes() -> str:
    count = int(os.environ.get("WORLD_SIZE", "1"))
    return f"{count} process" if count == 1 else f"{count} processes"


def log(message: str) -> None:
    if os.environ.get("RANK", "0") == "0":  # the main process speaks for all
        print(f"[tuneforge] {message}", file=sys.stderr, flush=True)


def skip_shared_memory_build() -> None:
    """On CPU processes, keep DeepSpeed from compiling its shared-memory collectives.

    DeepSpeed's CPU accelerator builds a C++ op for all-reduce through shared memory the
    first time a process group starts (minutes on a small machine); marked incompatible,
    the collectives go through torch.distributed (gloo), as every other backend's do.
    On an accelerator DeepSpeed has no such op, and nothing changes.
    """
    from deepspeed.accelerator import get_accelerator

    if get_accelerator().device_name() == "cpu":
        import deepspeed.ops

        deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False


def one_process_group() -> None:
    """Give a run of one process (no launcher started it) what DeepSpeed needs of a launcher.

    DeepSpeed initialises torch.distributed from a launcher's environment (without one
    it looks for MPI) and reads ``LOCAL_RANK``: the process gets a group of one, in
    memory (no port), and ``LOCAL_RANK=0``, as torchrun would give it. The run closes
    the group at its end; the variable stays for the rest of this process, which a
    command line run ends.
    """
    import torch.distributed as dist

    if dist.is_initialized() or "WORLD_SIZE" in os.environ:
        return
    from deepspeed.accelerator import get_accelerator

    os.environ.setdefault("LOCAL_RANK", "0")
    dist.init_process_group(get_accelerator().communication_backend_name(), store=dist.HashStore(), rank=0, world_size=1)
