"""A plugin module for tests: the plugin's own npu record on the CPU device type the STAND-IN torch_npu maps the NPU onto.

Registered in place of ``tuneforge_ascend.plugin`` (``plugin_installed``) by the tests
that run the device path on the stand-in; a module, so that a new process (the device
conformance kit's all-reduce) can register it the same way.
"""

import tuneforge_ascend.plugin
from tuneforge.api import hookimpl

TUNEFORGE_API = tuneforge_ascend.plugin.TUNEFORGE_API


@hookimpl
def tuneforge_devices():
    yield tuneforge_ascend.plugin.npu_device(torch_device="cpu")
