"""Built-in parallel backends (an internal plugin): one process, DDP, FSDP."""

import os
import sys
from dataclasses import dataclass

from tuneforge import hookimpl
from tuneforge.errors import TuneforgeError
from tuneforge.options import option
from tuneforge.records import ParallelBackend


def torchrun_command(nproc: int) -> list[str]:
    """torchrun for ``nproc`` processes on this machine (the core adds the nodes of a run on several)."""
    return [sys.executable, "-m", "tuneforge.training.torchrun", "--standalone", f"--nproc-per-node={nproc}"]


@dataclass
class FsdpOptions:
    """The options of the fsdp backend: ``--parallel-backend fsdp --help`` lists them."""

    fsdp_offload: bool = option(False, "Keep each process's shard of the weights, their gradients and the optimizer state in CPU memory, the optimizer stepping there; weights come to the accelerator as each layer is gathered (FSDP2's CPUOffloadPolicy; an accelerator only).", group="training")


def _fsdp_args(config) -> dict:
    """FSDP2 (``fully_shard`` on each decoder layer, then the whole model) through accelerate.

    FSDP's own activation checkpointing replaces the Trainer's (transformers refuses both).
    ``fsdp_offload`` becomes accelerate's ``cpu_offload`` (FSDP2's ``CPUOffloadPolicy``).
    Checkpoints are sharded: each process writes its own shards of the weights and the
    optimizer state (torch's distributed checkpoint), so no process ever holds the whole
    state, and a resume on another number of processes reads them resharded; the
    published model is gathered whole (``TuneforgeTrainer.save_model``).
    """
    checkpointing = bool(config.gradient_checkpointing)
    fsdp_config = {
        "version": 2, "reshard_after_forward": True, "activation_checkpointing": checkpointing,
        "state_dict_type": "SHARDED_STATE_DICT",
    }
    if getattr(config, "fsdp_offload", False):
        fsdp_config["cpu_offload"] = True
    return {"fsdp": True, "fsdp_config": fsdp_config, "gradient_checkpointing": False}


def _fsdp_check(config, device) -> None:
    """Refuse, before any process starts, an FSDP run that cannot go as asked."""
    if getattr(config, "fsdp_offload", False) and device.torch_device == "cpu":
        raise TuneforgeError(
            f"--fsdp-offload keeps the shards in CPU memory, where a --device {device.name} run keeps everything already, "
            "and FSDP2's offload pins that memory for an accelerator this run does not use; leave --fsdp-offload out."
        )


def _fsdp_memory_layout(options) -> dict:
    """What each process holds under FSDP2, for ``tuneforge plan``."""
    offloaded = ("parameters", "gradients", "optimizer_state") if getattr(options, "fsdp_offload", False) else ()
    # accelerate upcasts trainable weights to float32 for FSDP2's mixed precision
    return {"sharded": ("parameters", "gradients", "optimizer_state"), "float32_weights": True, "offloaded": offloaded}


def _fsdp_fast_path_off(config) -> dict[str, str]:
    """The fast-path options FSDP2 through accelerate cannot honour (``ParallelBackend.fast_path_off``).

    The chunked loss runs (the output layer's weight is read gathered: ``training.loss``);
    the checkpointing is accelerate's, which recomputes whole decoder layers.
    """
    return {
        "checkpointing_policy": "FSDP's activation checkpointing (accelerate's) recomputes whole decoder layers, "
        "so the selective policy, which keeps the attention output, does not apply",
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
        memory_layout=_fsdp_memory_layout,
        check=_fsdp_check,
        fast_path_off=_fsdp_fast_path_off,
        options=FsdpOptions,
    )
