"""The npu device path on the STAND-IN torch_npu, in a process of its own: sft, infer, rlhf, and the device conformance kit.

Started by ``test_ascend_stand_in.py`` with this folder first on ``PYTHONPATH``, so the
``torch_npu`` it imports is the stand-in (the NPU calls mapped onto the CPU); a process of
its own keeps what a run leaves behind (the chosen attention kernel, the ``hccl`` backend
the stand-in registers) out of the test process. The npu record is the plugin's own, on
the CPU device type (``npu_on_the_stand_in``). It runs ``tuneforge sft --device npu`` with
the given flags, ``tuneforge infer --device npu`` on that run, ``tuneforge rlhf --method dpo --device npu``
(tuneforge-dpo) on the preference pairs with the flags of the JSON list DPO_FLAGS, then
``tuneforge.testing.device_conformance`` on the record, where that kit is installed.
Prints, as its last line, JSON: the operators the stand-in ran after each step, the
Ascend environment variables as the run left them, and each conformance check's outcome.

    python train_and_answer.py MODEL DATA RUN_DIR QUESTIONS ANSWERS PAIRS DPO_DIR DPO_FLAGS KIT_DIR SFT_FLAGS...
"""

import importlib.util
import json
import os
import sys

import torch

import npu_on_the_stand_in
import torch_npu
import tuneforge_ascend.plugin
import tuneforge_dpo.plugin
from tuneforge.testing import plugin_installed, run_cli


def main(model, data, run_dir, questions, answers, pairs, dpo_dir, dpo_flags, kit_dir, *flags):
    assert torch_npu.STAND_IN, "the stand-in torch_npu must be first on the path"
    torch.set_num_threads(1)
    for key in tuneforge_ascend.plugin.ENVIRONMENT:
        os.environ.pop(key, None)
    report = {}
    dpo = (tuneforge_dpo.plugin, "dpo", "tuneforge-dpo")
    with plugin_installed(npu_on_the_stand_in, "ascend", "tuneforge-ascend", also=[dpo]):
        run_cli("sft", "--model", model, "--dataset", data, "--output-dir", run_dir, "--device", "npu", *flags)
        report["trained"] = dict(torch_npu.calls)
        report["environment"] = {key: os.environ.get(key) for key in tuneforge_ascend.plugin.ENVIRONMENT}
        run_cli("infer", "--model", run_dir, "--device", "npu", "--engine", "pt", "--input", questions, "--output", answers,
                "--max-new-tokens", 4)
        report["answered"] = dict(torch_npu.calls)
        run_cli("rlhf", "--method", "dpo", "--model", model, "--dataset", pairs, "--output-dir", dpo_dir, "--device", "npu",
                *json.loads(dpo_flags))
        report["preferred"] = dict(torch_npu.calls)
        if importlib.util.find_spec("tuneforge.testing.device_conformance") is not None:
            from tuneforge.testing.device_conformance import run_conformance

            report["conformance"] = run_conformance("npu", model, kit_dir)
    print(json.dumps(report))


if __name__ == "__main__":
    main(*sys.argv[1:])
