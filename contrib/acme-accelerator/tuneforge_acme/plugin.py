"""The acme device: what a plugin for an enterprise's own accelerator looks like.

Its "hardware" is the CPU under another name (``torch_device="cpu"``), so it runs
anywhere; a real plugin points ``torch_device`` at its torch backend (``"npu"``,
``"xpu"``, a privateuse1 name), and fills the callables below from its runtime
(``torch_acme.is_available()``, ``torch_acme.max_memory_allocated()``, ...). The
core asks this record, never the device's name, for all it needs: the torch device
type, bf16, the distributed backend, memory statistics, cache emptying, allocator
environment, the fast-path defaults and the device's own options.

Only ``tuneforge.api`` is imported, and nothing heavy: this module is imported
by every ``tuneforge`` command.
"""

from __future__ import annotations

from dataclasses import dataclass

from tuneforge.api import Device, FastPath, FastPathOptions, hookimpl, option

TUNEFORGE_API = "1.0"  # the tuneforge.api version this plugin was written for

MEMORY_POOLS = ("shared", "dedicated")


@dataclass
class AcmeOptions(FastPathOptions):
    """What ``--device acme`` adds to a command's flags and YAML keys.

    Subclassing ``FastPathOptions`` keeps the core's fast-path switches
    (``--fused-norm``, ``--chunked-loss``, ...); the field below is acme's own (a real
    plugin hands it to its runtime). The core checks the choices, and stores the
    options in the run record under the device, so a run says what it ran with.
    """

    acme_memory_pool: str = option(
        "shared", "Which memory pool the acme runtime allocates from.", choices=list(MEMORY_POOLS), group="training"
    )


def _is_available() -> bool:
    # A real plugin asks its runtime here, catching the ImportError of a missing one
    # (the device is then simply not available, and never the default).
    return True


def _peak_memory() -> int:
    # A real plugin returns its runtime's peak allocation in bytes; 0 means "not measured".
    return 0


@hookimpl
def tuneforge_devices():
    yield Device(
        name="acme",
        description="Acme accelerator (here: the CPU under another name)",
        torch_device="cpu",
        is_available=_is_available,
        supports_bf16=lambda: False,
        distributed_backend="gloo",
        peak_memory=_peak_memory,
        empty_cache=lambda: None,
        environment={"ACME_ALLOCATOR": "expandable"},
        # Acme's defaults for the options a user leaves unset: pack samples and compute
        # the loss in chunks; checkpointing and the fused kernels stay off.
        fast_path=FastPath(packing=True, chunked_loss=True),
        priority=-10,  # never the default: a user asks for it with --device acme
        options=AcmeOptions,
    )

