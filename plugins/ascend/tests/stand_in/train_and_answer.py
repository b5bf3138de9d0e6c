"""Run ``tuneforge sft --device npu`` then ``tuneforge infer --device npu`` on the STAND-IN torch_npu, in a process of its own.

Started by ``test_ascend_stand_in.py`` with this folder first on ``PYTHONPATH``, so the
``torch_npu`` it imports is the stand-in (the NPU calls mapped onto the CPU); a process of
its own keeps what a run leaves behind (the chosen attention kernel, the ``hccl`` backend
the stand-in registers) out of the test process. The npu record is the plugin's own,
on the CPU device type. Prints, as its last line, JSON: the operators the stand-in ran,
and the Ascend environment variables as the run left them.

    python train_and_answer.py MODEL DATA RUN_DIR QUESTIONS ANSWERS SFT_FLAGS...
"""

import json
import os
import sys

import torch

import torch_npu
import tuneforge_ascend.plugin
from tuneforge.api import hookimpl
from tuneforge.testing import plugin_installed, run_cli


class NpuOnTheStandIn:
    """The plugin's npu record, on the CPU device type the stand-in torch_npu maps the NPU onto."""

    @hookimpl
    def tuneforge_devices(self):
        yield tuneforge_ascend.plugin.npu_device(torch_device="cpu")


def main(model, data, run_dir, questions, answers, *flags):
    assert torch_npu.STAND_IN, "the stand-in torch_npu must be first on the path"
    torch.set_num_threads(1)
    for key in tuneforge_ascend.plugin.ENVIRONMENT:
        os.environ.pop(key, None)
    with plugin_installed(NpuOnTheStandIn(), "ascend", "tuneforge-ascend"):
        run_cli("sft", "--model", model, "--dataset", data, "--output-dir", run_dir, "--device", "npu", *flags)
        trained = dict(torch_npu.calls)
        environment = {key: os.environ.get(key) for key in tuneforge_ascend.plugin.ENVIRONMENT}
        run_cli("infer", "--model", run_dir, "--device", "npu", "--engine", "pt", "--input", questions, "--output", answers,
                "--max-new-tokens", 4)
    print(json.dumps({"trained": trained, "answered": dict(torch_npu.calls), "environment": environment}))


if __name__ == "__main__":
    main(*sys.argv[1:])
