"""The device conformance kit, run against the core's devices, and what it catches.

The cpu device passes it here; the cuda device where a CUDA GPU is present (on the GPU
machine: ``tests/gpu_device_conformance.sh``), and is skipped elsewhere, saying why.
"""

import pytest
import torch

from tuneforge.records import Device
from tuneforge.testing import device_conformance
from tuneforge.testing.device_conformance import DeviceConformance


class TestCPUConformance(DeviceConformance):
    device_name = "cpu"


class TestCUDAConformance(DeviceConformance):
    """Skipped by the kit where no CUDA device is available (the device's is_available() is False)."""

    device_name = "cuda"


# -- the kit catches what it should ---------------------------------------------------------


def _device(**fields):
    return Device(**{"name": "wrong", "description": "A device that gets something wrong", "torch_device": "cpu",
                     "is_available": lambda: True, **fields})


def test_a_device_whose_tensors_do_not_come_back_fails_the_round_trip():
    # The meta device keeps shapes and dtypes and no values: nothing comes back from it.
    with pytest.raises(AssertionError, match="Moving a torch.float32 tensor of shape \\(6, 5\\) to device 'wrong' \\(meta\\) and back raised"):
        device_conformance.check_tensors_round_trip(_device(torch_device="meta"))


def test_bf16_is_moved_only_for_a_device_that_claims_it():
    assert torch.bfloat16 not in device_conformance.round_trip_dtypes(_device())
    claims = _device(supports_bf16=lambda: True)
    assert torch.bfloat16 in device_conformance.round_trip_dtypes(claims)
    device_conformance.check_tensors_round_trip(claims)  # the CPU does move bf16


def test_memory_statistics_that_never_move_fail_and_none_at_all_is_a_skip():
    with pytest.raises(AssertionError, match="peak_memory\\(\\) stayed at 4096 bytes after a tensor of 16781312 bytes"):
        device_conformance.check_memory_statistics_move(_device(peak_memory=lambda: 4096))
    with pytest.raises(pytest.skip.Exception, match="Device 'wrong' reports no memory statistics"):
        device_conformance.check_memory_statistics_move(_device())


def test_a_distributed_backend_torch_does_not_have_fails_before_any_process_starts():
    with pytest.raises(AssertionError, match="names the distributed backend 'acme-ccl', which this torch does not have"):
        device_conformance.check_all_reduce_across_two_processes(_device(distributed_backend="acme-ccl"), "unused")


def test_the_run_must_allocate_on_the_device_and_its_loss_must_fall(tmp_path):
    import json

    # A run written by hand: its record names the device, and its checkpoint's loss rose.
    (tmp_path / "tuneforge_run.json").write_text(json.dumps({
        "method": "sft", "base_model": "tiny", "model_family": "llama", "template": "default", "tuner": "lora",
        "saves_adapter": True, "options": {"devices": {"name": "wrong", "options": {}}},
    }))
    (tmp_path / "checkpoint-4").mkdir()
    history = [{"loss": loss, "step": step} for step, loss in enumerate([10.0, 10.1, 10.2, 10.3], 1)]
    (tmp_path / "checkpoint-4" / "trainer_state.json").write_text(json.dumps({"log_history": history}))
    with pytest.raises(AssertionError, match="peak_memory\\(\\) stayed at 4096 bytes through a LoRA run with --device wrong"):
        device_conformance.check_lora_training_lowers_the_loss(_device(), device_conformance.TrainedRun(tmp_path, 4096, 4096))
    with pytest.raises(AssertionError, match="The LoRA loss on device 'wrong' did not fall in 4 steps"):
        device_conformance.check_lora_training_lowers_the_loss(_device(), device_conformance.TrainedRun(tmp_path))


def test_run_conformance_says_what_passed_and_what_was_skipped(tmp_path):
    outcome = device_conformance.run_conformance("cpu", None, tmp_path, checks=["tensors_round_trip", "memory_statistics_move"])
    assert outcome["tensors_round_trip"] == "passed"
    assert outcome["memory_statistics_move"].startswith("skipped: Device 'cpu' reports no memory statistics")
    with pytest.raises(ValueError, match="No device check is named 'no_such_check'; the checks are tensors_round_trip, "):
        device_conformance.run_conformance("cpu", None, tmp_path, checks=["no_such_check"])


def _kernels(**operators):
    from tuneforge.records import DeviceKernels
    from tuneforge.training import fused_layers, fused_norm

    own = {"rms_norm": fused_norm.rms_norm, "swiglu": fused_layers.swiglu, "rotary": fused_layers.rotary,
           "varlen_attention": device_conformance.reference_varlen_attention}
    return lambda: DeviceKernels(**{**own, **operators})


def test_fused_operators_that_compute_their_formulas_pass_and_wrong_ones_are_named():
    device_conformance.check_device_kernels_match_the_formulas(_device(supports_bf16=lambda: True, kernels=_kernels()))
    wrong = {
        "its swiglu in float32 differs from the formula it replaces": {"swiglu": lambda gate, up: torch.nn.functional.gelu(gate) * up},
        "its rms_norm in float32 gives no gradient": {"rms_norm": lambda hidden, weight, eps: _detached_norm(hidden, weight, eps)},
        "its varlen_attention \\(causal\\) in float32 differs": {
            "varlen_attention": lambda q, k, v, cu, most, scale, causal: device_conformance.reference_varlen_attention(q, k, v, cu, most, scale, not causal)},
    }
    for message, operators in wrong.items():
        with pytest.raises(AssertionError, match=f"Device 'wrong': {message}"):
            device_conformance.check_device_kernels_match_the_formulas(_device(kernels=_kernels(**operators)))
    with pytest.raises(pytest.skip.Exception, match="Device 'wrong' brings no fused operators of its own"):
        device_conformance.check_device_kernels_match_the_formulas(_device())


def _detached_norm(hidden, weight, eps):
    from tuneforge.training.fused_norm import rms_norm

    with torch.no_grad():
        return rms_norm(hidden, weight, eps)
