"""A plugin module for tests: the plugin's own npu record on the CPU device type the STAND-IN torch_npu maps the NPU onto.

Registered in place of ``tuneforge_ascend.plugin`` (``plugin_installed``) by the tests
that run the device path on the stand-in; a module, so that a new process (the device
conformance kit's all-reduce) can register it the same way.

Run as ``python -m npu_on_the_stand_in ARGS...`` (``tuneforge.testing.Server``'s
``module``), it runs ``tuneforge ARGS...`` with this record registered, and on exit
prints one line, ``stand-in torch_npu calls: {...}``: the stand-in's counts of the calls
that ran in that process.
"""

import tuneforge_ascend.plugin
from tuneforge.api import hookimpl

TUNEFORGE_API = tuneforge_ascend.plugin.TUNEFORGE_API
CALLS_LINE = "stand-in torch_npu calls: "


@hookimpl
def tuneforge_devices():
    yield tuneforge_ascend.plugin.npu_device(torch_device="cpu")


def _main() -> None:
    import json

    import torch_npu

    import npu_on_the_stand_in  # this module under its own name, as the plugin manager keeps it
    from tuneforge.testing import main_with_plugin

    assert torch_npu.STAND_IN, "the stand-in torch_npu must be first on the path"
    try:
        main_with_plugin(npu_on_the_stand_in, "ascend", "tuneforge-ascend")
    finally:
        print(CALLS_LINE + json.dumps(dict(torch_npu.calls)), flush=True)


if __name__ == "__main__":
    _main()
