"""The npu record, its refusals without torch_npu, its doctor checks and its fast-path choice: all real, no NPU needed.

Nothing here imports a torch_npu except ``test_a_torch_npu_that_cannot_load_...``,
whose module on the path fails as torch_npu does without Ascend's CANN libraries.
"""

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import tuneforge_ascend.plugin
from tuneforge_ascend import npu
from tuneforge.api import DeviceKernels
from tuneforge.testing import registry, run_cli

ROW = {"messages": [{"role": "user", "content": "What is 2 plus 2?"}, {"role": "assistant", "content": "4."}]}
TORCH_LINE = npu.major_minor(npu.torch_version())
# On an Ascend machine (a real torch_npu installed) the tests of its absence do not apply.
without_torch_npu = pytest.mark.skipif(importlib.util.find_spec("torch_npu") is not None,
                                       reason="a torch_npu is installed here; these tests are of a machine without one")


@without_torch_npu
def test_registers_the_npu_device_without_importing_torch_npu(manager):
    device = registry(manager).get("devices", "npu")
    assert manager.infos["ascend"].registers == {"devices": ["npu"]}
    assert device.torch_device == "npu" and device.distributed_backend == "hccl"
    fast = device.fast_path
    assert (fast.packing, fast.varlen_attention, fast.chunked_loss, fast.fused_kernels, fast.gradient_checkpointing) == (True,) * 5
    assert {"PYTORCH_NPU_ALLOC_CONF", "TASK_QUEUE_ENABLE", "HCCL_CONNECT_TIMEOUT"} <= set(device.environment)
    assert not device.is_available() and not device.supports_bf16() and device.peak_memory() == 0
    assert "torch_npu" not in sys.modules  # asked, and not installed: never imported
    shown = run_cli("plugins").output
    assert "ascend" in shown and "npu" in shown and "tuneforge-ascend" in shown


@without_torch_npu
def test_the_best_available_device_is_still_found_without_torch_npu(manager):
    available = [d.name for d in registry(manager).all("devices") if d.is_available()]
    assert "cpu" in available and "npu" not in available


def _unloadable_model(tiny_llama_dir, tmp_path) -> Path:
    """The tiny model with weights that cannot load: a command that loads them fails otherwise than ours."""
    model = tmp_path / "unloadable"
    shutil.copytree(tiny_llama_dir, model)
    (model / "model.safetensors").write_bytes(b"not weights")
    return model


@without_torch_npu
@pytest.mark.parametrize("command", ["sft", "infer", "deploy"])
def test_without_torch_npu_asking_for_npu_says_what_to_install_before_loading_weights(manager, tiny_llama_dir, tmp_path, command):
    model = _unloadable_model(tiny_llama_dir, tmp_path)
    data = tmp_path / "rows.jsonl"
    data.write_text(json.dumps(ROW) + "\n")
    args = {
        "sft": ["--dataset", data, "--output-dir", tmp_path / "run", "--max-steps", 1],
        "infer": ["--input", data, "--output", tmp_path / "answers.jsonl"],
        "deploy": ["--port", 0],
    }[command]
    result = run_cli(command, "--model", model, "--device", "npu", *args, ok=False)
    assert result.exit_code != 0
    message = " ".join(result.output.split())
    assert "--device npu needs torch_npu, which is not installed" in message
    assert f"pip install 'torch-npu=={TORCH_LINE}.*'" in message and "CANN toolkit" in message
    assert "safetensors" not in message.lower() and not (tmp_path / "run").exists()


@without_torch_npu
def test_a_torch_npu_that_cannot_load_is_named_with_its_fix(tmp_path, monkeypatch):
    site = tmp_path / "site"
    (site / "torch_npu").mkdir(parents=True)
    # What torch_npu raises without Ascend's CANN libraries.
    (site / "torch_npu" / "__init__.py").write_text('raise ImportError("libhccl.so: cannot open shared object file")\n')
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.delitem(sys.modules, "torch_npu", raising=False)
    without_cann = npu.unavailable()
    assert "cannot load torch_npu (ImportError: libhccl.so" in without_cann
    assert "install Ascend's CANN toolkit and source /usr/local/Ascend/ascend-toolkit/set_env.sh" in without_cann
    assert not npu.is_available()

    # The same, with the distribution of a torch_npu built for another torch: the fix is the matching build.
    info = site / "torch_npu-2.5.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: torch-npu\nVersion: 2.5.1\n")
    other_torch = npu.unavailable()
    assert f"torch_npu 2.5.1 is built for torch 2.5, not the installed torch {npu.torch_version()}" in other_torch
    assert f"pip install 'torch-npu=={TORCH_LINE}.*'" in other_torch
    for sentence in (without_cann, other_torch):
        assert sentence.count(". ") == 0 and sentence.endswith(".")  # one sentence


@without_torch_npu
def test_without_torch_npu_the_kernels_are_the_plain_formulas():
    import torch

    kernels = tuneforge_ascend.plugin.npu_kernels()
    assert isinstance(kernels, DeviceKernels) and npu.provided() == {}
    assert kernels.varlen_attention is None  # the core's own attention then, sample by sample
    gate, up = torch.randn(2, 3, 8), torch.randn(2, 3, 8)
    assert torch.equal(kernels.swiglu(gate, up), torch.nn.functional.silu(gate) * up)


def test_npu_options_are_flags_of_sft_with_the_device(manager):
    shown = " ".join(run_cli("sft", "--device", "npu", "--help").output.split())
    assert "torch_npu.npu_rms_norm" in shown and "torch_npu.npu_swiglu" in shown and "torch_npu.npu_rotary_mul" in shown
    assert "torch_npu" not in run_cli("sft", "--help").output


@without_torch_npu
def test_doctor_reports_a_torch_npu_built_for_another_torch(tmp_path):
    """A real `tuneforge doctor` process, with this plugin and a torch-npu 2.5.1 distribution beside the installed torch."""
    site = tmp_path / "site"
    for name, version, entry_points in (("tuneforge_ascend", "0.1.0", "[tuneforge]\nascend = tuneforge_ascend.plugin\n"),
                                        ("torch_npu", "2.5.1", "")):
        info = site / f"{name}-{version}.dist-info"
        info.mkdir(parents=True)
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name.replace('_', '-')}\nVersion: {version}\n")
        if entry_points:
            (info / "entry_points.txt").write_text(entry_points)
    path = [str(site), str(Path(tuneforge_ascend.plugin.__file__).parents[1]), os.environ.get("PYTHONPATH", "")]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in path if p), TUNEFORGE_LOAD_PLUGINS="ascend")
    result = subprocess.run([sys.executable, "-m", "tuneforge.cli", "doctor", "--json"], capture_output=True, text=True,
                            env=env, timeout=300)
    report = json.loads(result.stdout)
    problems = {f["topic"]: f["message"] for f in report["findings"] if f["verdict"] == "problem"}
    bad = problems["known bad (ascend)"]
    assert bad.startswith(f"torch-npu 2.5.1 and torch {npu.torch_version()} do not work together")
    assert f"pip install 'torch-npu=={TORCH_LINE}.*'" in bad
    assert f"pip install 'torch-npu=={TORCH_LINE}.*'" in problems["import torch_npu (ascend)"]  # not importable here
    assert [d for d in report["devices"] if d["name"] == "npu"] == [
        {"name": "npu", "plugin": "ascend", "available": False, "error": None}
    ]

