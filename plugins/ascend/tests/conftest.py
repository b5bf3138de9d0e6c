"""Fixtures: the ascend plugin on a fresh plugin manager; the stand-in torch_npu for the device path.

No NPU and no CANN toolkit exist where these tests run. The tests of the record, its
refusals, the fast-path choice and the launch environment run for real; those that
exercise the device path use the STAND-IN torch_npu of ``stand_in/torch_npu`` (it maps
the NPU calls onto the CPU), through the fixtures whose names say so.
The fixtures smollm2_dir, tiny_llama_dir ... come from tuneforge.testing.pytest_plugin.
"""

import os
import sys
from pathlib import Path

import pytest

os.environ["TUNEFORGE_LOAD_PLUGINS"] = ""  # never autoload whatever else is installed

import tuneforge_ascend.plugin
from tuneforge.testing import manager_fixture, one_thread_fixture

STAND_IN_DIR = Path(__file__).parent / "stand_in"

one_thread = one_thread_fixture()
manager = manager_fixture(tuneforge_ascend.plugin, "ascend", "tuneforge-ascend")


def _forget_torch_npu():
    """Take the stand-in's modules out of this process again (it leaves torch.npu unset, so no library took it for an NPU)."""
    for name in [n for n in sys.modules if n == "torch_npu" or n.startswith("torch_npu.")]:
        del sys.modules[name]


@pytest.fixture(scope="module")
def stand_in_torch_npu():
    """The STAND-IN torch_npu (NPU calls on the CPU), importable for one test module, its call counts reset."""
    # DeepSpeed picks its accelerator once per process, an NPU one where torch_npu imports: keep
    # the CPU one it picks here anyway, for whatever runs in this process later.
    before = os.environ.get("DS_ACCELERATOR")
    os.environ["DS_ACCELERATOR"] = "cpu"
    sys.path.insert(0, str(STAND_IN_DIR))
    try:
        import torch_npu

        assert torch_npu.STAND_IN, "the stand-in torch_npu, not a real one, must be first on the path"
        torch_npu.calls.clear()
        yield torch_npu
    finally:
        sys.path.remove(str(STAND_IN_DIR))
        _forget_torch_npu()
        if before is None:
            os.environ.pop("DS_ACCELERATOR", None)
        else:
            os.environ["DS_ACCELERATOR"] = before


@pytest.fixture(scope="module")
def npu_plugin_on_the_stand_in_torch_npu(stand_in_torch_npu):
    """The plugin module registering the plugin's npu record on the STAND-IN torch_npu (``plugin_installed`` takes it)."""
    import npu_on_the_stand_in

    yield npu_on_the_stand_in
    sys.modules.pop("npu_on_the_stand_in", None)


@pytest.fixture(scope="session")
def stand_in_env():
    """The environment of a subprocess that imports the STAND-IN torch_npu (and this plugin from its folder)."""
    path = [str(STAND_IN_DIR), str(Path(__file__).parents[1]), os.environ.get("PYTHONPATH", "")]
    return {"PYTHONPATH": os.pathsep.join(p for p in path if p), "DS_ACCELERATOR": "cpu"}
