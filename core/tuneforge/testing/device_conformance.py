"""A conformance kit for devices: the checks every device plugin runs against its ``Device`` record.

Each ``check_*`` function takes the ``Device`` record (and what it needs beside it:
a trained run, the run loaded on the device, a work dir) and raises
``AssertionError`` with a sentence saying what the device got wrong. Two ways to
run them:

- in a pytest module, subclass ``DeviceConformance`` and give it the device's name
  (and, where the plugin is not installed, ``plugin``: what ``plugin_installed``
  registers); every check becomes a test::

      import tuneforge_acme.plugin
      from tuneforge.testing.device_conformance import DeviceConformance

      class TestAcmeConformance(DeviceConformance):
          device_name = "acme"
          plugin = (tuneforge_acme.plugin, "acme", "tuneforge-acme-accelerator")

  A device that is not available on the machine skips every check, saying so.

- anywhere else, ``run_conformance(device_name, model, workdir)`` runs them all and
  returns what became of each check ("passed", or "skipped: " and why); it raises
  on the first failure.

What the checks share is built once: the tiny model (``model``: a random-weight
checkpoint, ``tiny_llama_dir`` unless ``TUNEFORGE_CONFORMANCE_MODEL`` names one built
beforehand, for a machine that cannot fetch the SmolLM2 tokenizer), one LoRA run of
a few steps through ``tuneforge sft --device NAME`` (the core's real training path),
and that run loaded on the device. On two CPU cores all of it takes about 20 s of
CPU time. A check of something the device says it lacks (memory statistics, fused
operators of its own, a second device for a run of two processes on a backend that
cannot share one) is skipped, saying why.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import pytest

MODEL_ENV = "TUNEFORGE_CONFORMANCE_MODEL"

# The rows the tiny model learns: short, and repeated within a few steps, so the loss falls fast.
ROWS = [
    {"messages": [{"role": "user", "content": f"What is {i} plus {i}?"}, {"role": "assistant", "content": f"{2 * i}."}]}
    for i in range(8)
]
TRAIN_STEPS = 4
TRAIN_FLAGS = (
    "--max-steps", TRAIN_STEPS, "--save-steps", TRAIN_STEPS, "--logging-steps", 1, "--per-device-batch-size", 2,
    "--max-length", 64, "--lora-rank", 4, "--learning-rate", 1e-2,
)
PROMPTS = ("hi", "What is 3 plus 3?", "Name three colours.")
ALL_REDUCE_TIMEOUT_S = 120
# gloo runs its collectives through host memory, so two of its processes may share one device;
# a device's own collective library (nccl, hccl, ...) wants a device per process.
SHARES_ONE_DEVICE = frozenset({"gloo"})
MIB = 2**20


# -- what the checks share ----------------------------------------------------------


def device_record(name: str):
    """The ``Device`` record ``name`` from the process-wide registry; skips (pytest) where it is not available."""
    from ..registry import get_registry

    device = get_registry().get("devices", name)  # an unknown name: the error lists the known ones
    try:
        available = device.is_available()
    except Exception as exc:
        raise AssertionError(f"Device '{name}': is_available() raised {type(exc).__name__} ({exc}); it must answer False where the device cannot be used.") from exc
    if not available:
        why = getattr(device, "unavailable", None)  # the device's own sentence: what is missing, and how to install it
        why = f" {why()}" if callable(why) else ""
        pytest.skip(f"Device '{name}' is not available on this machine (its is_available() is False); run these checks where it is.{why}")
    return device


def conformance_model(tmp_root: str | os.PathLike) -> str:
    """The tiny model the checks train: ``$TUNEFORGE_CONFORMANCE_MODEL`` if set, else a random-weight Llama
    with SmolLM2's tokenizer written under ``tmp_root``."""
    given = os.environ.get(MODEL_ENV)
    if given:
        if not (Path(given) / "config.json").is_file():
            raise AssertionError(f"{MODEL_ENV} is '{given}', which holds no checkpoint (config.json); build one with tuneforge.testing.tiny_model_dir.")
        return given
    from . import smollm2_dir, tiny_model_dir

    return tiny_model_dir(Path(tmp_root) / "tiny-llama", tokenizer_dir=smollm2_dir())


@dataclass(frozen=True)
class TrainedRun:
    """The kit's LoRA run: its output dir, and the device's ``peak_memory()`` before and after it.

    ``peak_before`` is None where the peak so far could not be reset (torch's module of the
    device type has no ``reset_peak_memory_stats``) and was not 0: a run smaller than earlier
    work need not raise it then.
    """

    path: Path
    peak_before: int | None = 0
    peak_after: int = 0


def _reset_peak(device) -> int | None:
    """The device's ``peak_memory()`` after resetting it where torch can; None where it could not and it is not 0."""
    import torch

    reset = getattr(getattr(torch, device.torch_device, None), "reset_peak_memory_stats", None)
    if callable(reset):
        with contextlib.suppress(Exception):  # a runtime that has not started yet has nothing to reset
            reset()
    peak = device.peak_memory()
    return peak if callable(reset) or not peak else None


def train_lora(device, model: str | os.PathLike, workdir: str | os.PathLike) -> TrainedRun:
    """A LoRA run of ``TRAIN_STEPS`` steps of ``model`` on ``device``, through ``tuneforge sft --device NAME``."""
    from . import run_cli

    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    data = workdir / "sums.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in ROWS))
    out = workdir / "run"
    peak_before = _reset_peak(device)
    try:
        result = run_cli("sft", "--model", model, "--dataset", data, "--output-dir", out, "--device", device.name, *TRAIN_FLAGS, ok=False)
    except Exception as exc:
        raise AssertionError(f"Training the tiny model with --device {device.name} raised {type(exc).__name__}: {exc}") from exc
    if result.exit_code != 0:
        tail = " ".join(result.output.strip().splitlines()[-3:])
        raise AssertionError(f"Training the tiny model with --device {device.name} exited with {result.exit_code}: {tail}")
    return TrainedRun(out, peak_before, device.peak_memory())


def load_run(device, run: TrainedRun):
    """The run loaded for generation on ``device``, as ``infer`` and ``deploy`` load it."""
    from ..modeling import load_for_inference

    try:
        return load_for_inference(str(run.path), device=device.name)
    except Exception as exc:
        raise AssertionError(f"Loading the trained run on device '{device.name}' raised {type(exc).__name__}: {exc}") from exc


# -- the checks ---------------------------------------------------------------------


def _samples(dtype) -> list:
    """Tensors of ``dtype`` to move: random values, a scalar, and a view that is not contiguous."""
    import torch

    generator = torch.Generator().manual_seed(0)
    if dtype == torch.bool:
        dense = torch.rand(6, 5, generator=generator) > 0.5
    elif dtype.is_floating_point:
        dense = (torch.randn(6, 5, generator=generator) * 100).to(dtype)
    else:
        dense = torch.randint(-(2**40), 2**40, (6, 5), generator=generator, dtype=dtype)
    return [dense, dense[2, 3].clone(), dense.t()[1:, ::2]]


def round_trip_dtypes(device) -> list:
    """float32, the int64 of token ids and the bool of masks; bfloat16 where the device claims it."""
    import torch

    dtypes = [torch.float32, torch.int64, torch.bool]
    return dtypes + [torch.bfloat16] if device.supports_bf16() else dtypes


def check_tensors_round_trip(device) -> None:
    """Host tensors of every dtype the device claims go to the device and come back equal."""
    import torch

    for dtype in round_trip_dtypes(device):
        for host in _samples(dtype):
            try:
                there = host.to(device.torch_device)
                back = there.to("cpu")
            except Exception as exc:
                raise AssertionError(
                    f"Moving a {dtype} tensor of shape {tuple(host.shape)} to device '{device.name}' ({device.torch_device}) and back raised {type(exc).__name__}: {exc}"
                ) from exc
            assert there.device.type == device.torch_device, (
                f"A tensor moved to device '{device.name}' lies on '{there.device.type}', not on its torch_device '{device.torch_device}'."
            )
            assert back.dtype == dtype and back.shape == host.shape, (
                f"A {dtype} tensor of shape {tuple(host.shape)} came back from device '{device.name}' as {back.dtype} of shape {tuple(back.shape)}."
            )
            assert torch.equal(back, host), f"A {dtype} tensor of shape {tuple(host.shape)} came back from device '{device.name}' with other values."


def check_lora_training_lowers_the_loss(device, run: TrainedRun) -> None:
    """The LoRA run trained on the device: it names the device, allocated on it (where it counts), logged every step, and its loss fell."""
    from ..modeling import read_run_record
    from . import step_losses

    record = read_run_record(run.path)
    assert record is not None, f"The LoRA run with --device {device.name} wrote no run record in {run.path}."
    ran_on = (record.options.get("devices") or {}).get("name")
    assert ran_on == device.name, f"The LoRA run with --device {device.name} records device '{ran_on}'."
    if run.peak_after and run.peak_before is not None:  # a device that reports memory: the weights and activations were on it
        assert run.peak_after > run.peak_before, (
            f"Device '{device.name}': peak_memory() stayed at {run.peak_before} bytes through a LoRA run with --device {device.name}: did the training run elsewhere?"
        )
    losses = step_losses(run.path)
    assert len(losses) == TRAIN_STEPS, f"The LoRA run on device '{device.name}' logged {len(losses)} losses in {TRAIN_STEPS} steps."
    assert all(loss == loss and abs(loss) != float("inf") for loss in losses), f"The LoRA run on device '{device.name}' logged a loss that is not finite: {losses}."
    assert losses[-1] < losses[0], (
        f"The LoRA loss on device '{device.name}' did not fall in {TRAIN_STEPS} steps ({', '.join(f'{x:.4f}' for x in losses)}): are gradients or the optimizer step lost on it?"
    )


def _adapter_file(directory: Path) -> dict:
    from safetensors.torch import load_file

    path = directory / "adapter_model.safetensors"
    assert path.is_file(), f"No adapter_model.safetensors in {directory}."
    return load_file(str(path))


def _differing(expected: dict, got: dict) -> list[str]:
    """The names whose tensors differ (compared in the less precise of the two dtypes), or are missing from ``got``."""
    import torch

    differ = []
    for name, tensor in expected.items():
        other = got.get(name)
        if other is None or other.shape != tensor.shape:
            differ.append(name)
            continue
        dtype = other.dtype if other.dtype.itemsize <= tensor.dtype.itemsize else tensor.dtype
        if not torch.equal(other.detach().to("cpu", dtype), tensor.to(dtype)):
            differ.append(name)
    return differ + sorted(set(got) - set(expected))


def check_checkpoint_saves_and_loads(device, run: TrainedRun, loaded, workdir: str | os.PathLike) -> None:
    """What the run saved from the device loads back onto it equal, and saves again equal."""
    from peft import get_peft_model_state_dict

    run_dir = run.path
    saved = _adapter_file(run_dir)
    checkpoint = run_dir / f"checkpoint-{TRAIN_STEPS}"
    assert checkpoint.is_dir(), f"The LoRA run on device '{device.name}' left no checkpoint-{TRAIN_STEPS} with --save-steps {TRAIN_STEPS}."
    differ = _differing(saved, _adapter_file(checkpoint))
    assert not differ, f"The checkpoint of step {TRAIN_STEPS} saved on device '{device.name}' differs from the run's final adapter in {len(differ)} tensors ({differ[0]}, ...)."

    parameters = dict(loaded.model.named_parameters())
    away = sorted({p.device.type for p in parameters.values()} - {device.torch_device})
    assert not away, f"The run loaded with --device {device.name} has weights on {away}, not only on '{device.torch_device}'."
    in_memory = get_peft_model_state_dict(loaded.model)
    assert all(t.device.type == device.torch_device for t in in_memory.values()), f"The adapter loaded on device '{device.name}' is not on it."
    differ = _differing(saved, in_memory)
    assert not differ, f"The adapter loaded on device '{device.name}' differs from the file it was loaded from in {len(differ)} tensors ({differ[0]}, ...)."

    again = Path(workdir) / "saved-again"
    loaded.model.save_pretrained(str(again))
    differ = _differing(saved, _adapter_file(again))
    assert not differ, f"The adapter saved again from device '{device.name}' differs from the one it was loaded from in {len(differ)} tensors ({differ[0]}, ...)."


def check_pt_engine_is_greedy_and_deterministic(device, loaded) -> None:
    """The pt engine serves the run on the device and gives the same greedy answers twice."""
    from ..inference import ChatRequest, SamplingParams, create_engine

    engine = create_engine("pt", loaded, batch_size=len(PROMPTS))
    try:
        assert engine.device.type == device.torch_device, f"The pt engine for device '{device.name}' generates on '{engine.device.type}'."
        requests = [ChatRequest([{"role": "user", "content": p}], sampling=SamplingParams(max_tokens=8)) for p in PROMPTS]
        first, second = engine.generate(requests), engine.generate(requests)
    finally:
        engine.close()
    for prompt, [a], [b] in zip(PROMPTS, first, second):
        assert a.completion_tokens > 0, f"The pt engine on device '{device.name}' gave no tokens for {prompt!r}."
        assert (a.token_ids, a.text) == (b.token_ids, b.text), (
            f"Greedy answers of the pt engine on device '{device.name}' to {prompt!r} differ: {a.text!r}, then {b.text!r}."
        )


def check_memory_statistics_move(device) -> None:
    """``peak_memory()`` grows past a tensor allocated on the device, and ``empty_cache()`` runs; skipped where it reports nothing."""
    import torch

    warm = torch.ones(MIB // 4, device=device.torch_device)  # so a device that counts reports something
    _reset_peak(device)  # where torch can: the peak so far becomes what is allocated now
    before = device.peak_memory()
    if not before:
        del warm
        pytest.skip(f"Device '{device.name}' reports no memory statistics (its peak_memory() is 0: not measured), so there is nothing to check.")
    nbytes = before + 16 * MIB  # more than the peak so far, so the peak must grow
    tensor = torch.ones(nbytes // 4, dtype=torch.float32, device=device.torch_device)
    after = device.peak_memory()
    del tensor, warm
    assert after > before, f"Device '{device.name}': peak_memory() stayed at {before} bytes after a tensor of {nbytes} bytes was allocated on it."
    assert after >= nbytes, f"Device '{device.name}': peak_memory() says {after} bytes after a tensor of {nbytes} bytes was allocated on it."
    try:
        device.empty_cache()
    except Exception as exc:
        raise AssertionError(f"Device '{device.name}': empty_cache() raised {type(exc).__name__} ({exc}).") from exc


KERNELS = ("rms_norm", "swiglu", "rotary", "varlen_attention")
# How far a device's operator may be from the float32 formula it replaces (rtol, atol: values near 1).
KERNEL_TOLERANCE = {"float32": (1e-4, 1e-5), "bfloat16": (3e-2, 3e-2)}
# Flash attention kernels take half precision only: float32 inputs are computed in bf16 (as the
# core's own CUDA varlen attention does), so these are held to bf16's tolerance in float32 too.
HALF_PRECISION_KERNELS = frozenset({"varlen_attention"})


def reference_varlen_attention(query, key, value, cu_seqlens, max_len, scale, causal=True):
    """What ``DeviceKernels.varlen_attention`` computes: each sample of the packed row attends within
    itself (query ``[total, heads, dim]``, key and value ``[total, kv_heads, dim]``)."""
    import torch

    outputs = []
    bounds = cu_seqlens.tolist()
    for start, end in zip(bounds[:-1], bounds[1:]):
        q, k, v = (t[start:end].transpose(0, 1)[None] for t in (query, key, value))
        out = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=causal, scale=scale, enable_gqa=k.shape[1] != q.shape[1])
        outputs.append(out[0].transpose(0, 1))
    return torch.cat(outputs, dim=0)


def _kernel_case(name: str, generator):
    """(float inputs that take gradients, other arguments, the formula) for the operator ``name``, on the host in float32."""
    import torch

    from ..training import fused_layers, fused_norm

    def randn(*shape):
        return torch.randn(*shape, generator=generator)

    if name == "rms_norm":
        return [randn(3, 7, 64), 1 + 0.1 * randn(64)], [1e-6], fused_norm.rms_norm
    if name == "swiglu":
        return [randn(3, 7, 128), randn(3, 7, 128)], [], fused_layers.swiglu
    if name == "rotary":
        positions = torch.arange(7, dtype=torch.float32)
        frequencies = torch.outer(positions, 1.0 / 10000 ** (torch.arange(0, 16, 2, dtype=torch.float32) / 16))
        angles = torch.cat((frequencies, frequencies), dim=-1).expand(2, 7, 16)
        return [randn(2, 4, 7, 16), randn(2, 2, 7, 16)], [angles.cos(), angles.sin()], fused_layers.rotary
    lengths = (5, 9, 3)
    cu_seqlens = torch.tensor([0, 5, 14, 17], dtype=torch.int32)
    total = sum(lengths)
    return [randn(total, 4, 16), randn(total, 2, 16), randn(total, 2, 16)], [cu_seqlens, max(lengths), 16**-0.5], reference_varlen_attention


def _is_float(value) -> bool:
    import torch

    return isinstance(value, torch.Tensor) and value.is_floating_point()


def _to(value, where):
    import torch

    return value.to(where) if isinstance(value, torch.Tensor) else value


def _as_tuple(output) -> tuple:
    return tuple(output) if isinstance(output, (tuple, list)) else (output,)


def check_device_kernels_match_the_formulas(device) -> None:
    """Each fused operator the device brings (``Device.kernels``) computes the formula it replaces, forward and
    backward, in float32 and (where the device claims it) bfloat16; skipped where it brings none."""
    import torch

    if getattr(device, "kernels", None) is None:
        pytest.skip(f"Device '{device.name}' brings no fused operators of its own (its kernels is None), so there is nothing to compare.")
    try:
        kernels = device.kernels()
    except Exception as exc:
        raise AssertionError(f"Device '{device.name}': kernels() raised {type(exc).__name__} ({exc}); it must leave out an operator its runtime lacks.") from exc
    given = {name: getattr(kernels, name) for name in KERNELS if getattr(kernels, name, None) is not None}
    if not given:
        pytest.skip(f"Device '{device.name}': kernels() names no operator, so there is nothing to compare.")
    dtypes = [torch.float32, torch.bfloat16] if device.supports_bf16() else [torch.float32]
    for name, kernel in given.items():
        for dtype in dtypes:
            for causal in ((True, False) if name == "varlen_attention" else (None,)):
                tensors, others, formula = _kernel_case(name, torch.Generator().manual_seed(0))
                others = [*others, causal] if causal is not None else others
                what = f"its {name}" + ("" if causal is None else f" ({'causal' if causal else 'not causal'})") + f" in {str(dtype).removeprefix('torch.')}"
                # The formula in float32 on the host, from the inputs as the device gets them (rounded to dtype).
                rounded = [t.to(dtype).float().requires_grad_() for t in tensors]
                expected = _as_tuple(formula(*rounded, *[o.to(dtype).float() if _is_float(o) else o for o in others]))
                there = [t.to(device.torch_device, dtype).requires_grad_() for t in tensors]
                arguments = [o.to(dtype).to(device.torch_device) if _is_float(o) else _to(o, device.torch_device) for o in others]
                try:
                    got = _as_tuple(kernel(*there, *arguments))
                except Exception as exc:
                    raise AssertionError(f"Device '{device.name}': {what} raised {type(exc).__name__} ({exc}).") from exc
                rtol, atol = KERNEL_TOLERANCE["bfloat16" if name in HALF_PRECISION_KERNELS else str(dtype).removeprefix("torch.")]
                assert len(got) == len(expected), f"Device '{device.name}': {what} gave {len(got)} outputs where the formula gives {len(expected)}."
                weights = [torch.randn(e.shape, generator=torch.Generator().manual_seed(1)) for e in expected]
                for out, reference in zip(got, expected):
                    assert out.shape == reference.shape, f"Device '{device.name}': {what} gave shape {tuple(out.shape)} where the formula gives {tuple(reference.shape)}."
                    error = (out.detach().to("cpu", torch.float32) - reference.detach()).abs().max().item()
                    assert torch.allclose(out.detach().to("cpu", torch.float32), reference.detach(), rtol=rtol, atol=atol), (
                        f"Device '{device.name}': {what} differs from the formula it replaces by up to {error:.2e}."
                    )
                assert all(out.requires_grad for out in got), f"Device '{device.name}': {what} gives no gradient, and training goes through it."
                sum((o.float() * w.to(device.torch_device)).sum() for o, w in zip(got, weights)).backward()
                sum((e * w).sum() for e, w in zip(expected, weights)).backward()
                for index, (mine, reference) in enumerate(zip(there, rounded)):
                    assert mine.grad is not None, f"Device '{device.name}': {what} gives no gradient for its input {index}."
                    grad = mine.grad.to("cpu", torch.float32)
                    scale = reference.grad.abs().max().item() or 1.0  # gradients are not near 1: compare relative to their size
                    error = (grad - reference.grad).abs().max().item() / scale
                    assert error <= max(rtol, atol) * 4, (
                        f"Device '{device.name}': {what} has a gradient for its input {index} that differs from the formula's by up to {error:.2e} of its size."
                    )


def _device_count(device) -> int:
    import torch

    module = getattr(torch, device.torch_device, None)
    count = getattr(module, "device_count", None)
    return int(count()) if callable(count) else 1


def _provider(device) -> tuple[str, str, str] | None:
    """What a new process registers to find ``device``: (module, plugin name, distribution), or None for the core's own."""
    import types

    from ..plugins import get_plugin_manager
    from ..registry import get_registry

    name = get_registry().provider("devices", device.name)
    manager = get_plugin_manager()
    info = manager.infos.get(name)
    if info is None or info.builtin:
        return None
    plugin = manager.get_plugin(name)
    if not isinstance(plugin, types.ModuleType):
        raise AssertionError(
            f"Device '{device.name}' is registered by {plugin!r}, not by a module, so a new process cannot register it; register it from a module (the entry point's)."
        )
    return plugin.__name__, name, info.distribution


def check_all_reduce_across_two_processes(device, workdir: str | os.PathLike, world: int = 2) -> None:
    """Two real processes join a group on the device's distributed backend and all-reduce a tensor on the device."""
    import torch.distributed as dist

    backend = device.distributed_backend
    assert dist.is_available(), f"Device '{device.name}' names the distributed backend '{backend}', and this torch build has no torch.distributed."
    assert dist.is_backend_available(backend), (
        f"Device '{device.name}' names the distributed backend '{backend}', which this torch does not have (its plugin must install or register it)."
    )
    count = _device_count(device)
    if count < world and backend not in SHARES_ONE_DEVICE:
        pytest.skip(f"A run of {world} processes on '{backend}' needs {world} '{device.torch_device}' devices, and {count} is visible here.")

    provider = _provider(device)
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    rendezvous = workdir / f"rendezvous-{os.getpid()}-{time.monotonic_ns()}"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p), "PYTHONUNBUFFERED": "1"}
    code = "from tuneforge.testing.device_conformance import _all_reduce_worker; _all_reduce_worker()"
    logs = [workdir / f"{rendezvous.name}-rank{rank}.log" for rank in range(world)]
    processes = []
    for rank, log in enumerate(logs):
        arguments = {"rank": rank, "world": world, "init": rendezvous.as_uri(), "device": device.name, "provider": provider, "devices": count}
        with log.open("w") as output:
            processes.append(subprocess.Popen([sys.executable, "-c", code, json.dumps(arguments)], stdout=output, stderr=subprocess.STDOUT, env=env))
    deadline = time.monotonic() + ALL_REDUCE_TIMEOUT_S
    try:
        # A process that fails leaves the other waiting for it: stop at the first failure.
        while any(p.poll() is None for p in processes) and not any(p.poll() for p in processes):
            if time.monotonic() > deadline:
                raise AssertionError(f"{world} processes on device '{device.name}' did not finish an all-reduce on '{backend}' within {ALL_REDUCE_TIMEOUT_S} s.")
            time.sleep(0.05)
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
            process.wait()
    outputs = [log.read_text(errors="replace") for log in logs]
    printed = [[line for line in text.splitlines() if line.startswith("{") and '"rank"' in line] for text in outputs]
    failed = [rank for rank, process in enumerate(processes) if process.returncode or not printed[rank]]
    if failed:
        rank = next((r for r in failed if processes[r].returncode > 0), failed[0])  # the one that failed, not the one stopped
        raise AssertionError(
            f"Process {rank} of {world} on device '{device.name}' ('{backend}') failed (exit {processes[rank].returncode}; its output ends): "
            + " ".join(outputs[rank].strip().splitlines()[-3:])
        )
    results = [json.loads(lines[-1]) for lines in printed]
    expected = [float(sum(10 * (rank + 1) + i for rank in range(world))) for i in range(4)]
    for rank, result in enumerate(results):
        assert result["device"] == device.torch_device, f"Process {rank} on device '{device.name}' all-reduced a tensor on '{result['device']}'."
        assert result["sum"] == expected, (
            f"An all-reduce over {world} processes on device '{device.name}' ('{backend}') gave {result['sum']} in process {rank}, not {expected}."
        )


def _all_reduce_worker() -> None:
    """One process of ``check_all_reduce_across_two_processes``: prints its rank, device type and the reduced tensor."""
    from datetime import timedelta

    args = json.loads(sys.argv[1])
    rank, world = args["rank"], args["world"]
    with contextlib.ExitStack() as stack:
        if args["provider"]:
            import importlib

            from . import plugin_installed

            module, name, distribution = args["provider"]
            stack.enter_context(plugin_installed(importlib.import_module(module), name, distribution))
        from ..registry import get_registry
        from ..training.setup import apply_device_environment

        device = get_registry().get("devices", args["device"])
        apply_device_environment(device)
        if not device.is_available():
            raise SystemExit(f"Device '{device.name}' is not available in a new process.")
        import torch
        import torch.distributed as dist

        where = torch.device(device.torch_device, rank) if args["devices"] >= world else torch.device(device.torch_device)
        module = getattr(torch, device.torch_device, None)
        if where.index is not None and callable(getattr(module, "set_device", None)):
            module.set_device(where)
        dist.init_process_group(device.distributed_backend, init_method=args["init"], rank=rank, world_size=world, timeout=timedelta(seconds=60))
        try:
            tensor = torch.arange(4, dtype=torch.float32, device=where) + 10 * (rank + 1)
            dist.all_reduce(tensor)
            print(json.dumps({"rank": rank, "device": tensor.device.type, "sum": tensor.to("cpu").tolist()}), flush=True)
        finally:
            dist.destroy_process_group()


# -- running them -------------------------------------------------------------------

CHECKS: dict[str, Callable] = {
    name[len("check_"):]: check for name, check in globals().items() if name.startswith("check_")
}


def run_conformance(device_name: str, model: str | os.PathLike | None, workdir: str | os.PathLike, checks=None) -> dict[str, str]:
    """Run the checks (all, or those named in ``checks``) on device ``device_name``: each one's "passed" or "skipped: why".

    ``model`` is the tiny checkpoint to train (None: ``conformance_model``); the run and its
    copies go under ``workdir``. Raises ``AssertionError`` at the first check that fails,
    and ``pytest.skip.Exception`` where the device is not available.
    """
    workdir = Path(workdir)
    device = device_record(device_name)
    names = list(CHECKS) if checks is None else list(checks)
    unknown = [name for name in names if name not in CHECKS]
    if unknown:
        raise ValueError(f"No device check is named {unknown[0]!r}; the checks are {', '.join(CHECKS)}.")
    shared: dict[str, Any] = {}

    def trained():
        if "run" not in shared:
            shared["run"] = train_lora(device, model or conformance_model(workdir), workdir / "train")
        return shared["run"]

    def loaded():
        if "loaded" not in shared:
            shared["loaded"] = load_run(device, trained())
        return shared["loaded"]

    arguments = {
        "tensors_round_trip": lambda: (device,),
        "lora_training_lowers_the_loss": lambda: (device, trained()),
        "checkpoint_saves_and_loads": lambda: (device, trained(), loaded(), workdir / "checkpoint"),
        "pt_engine_is_greedy_and_deterministic": lambda: (device, loaded()),
        "memory_statistics_move": lambda: (device,),
        "device_kernels_match_the_formulas": lambda: (device,),
        "all_reduce_across_two_processes": lambda: (device, workdir / "all-reduce"),
    }
    outcome = {}
    for name in names:
        try:
            CHECKS[name](*arguments[name]())
        except pytest.skip.Exception as skipped:
            outcome[name] = f"skipped: {skipped.msg}"
        else:
            outcome[name] = "passed"
    return outcome


class DeviceConformance:
    """Subclass as ``Test...`` with ``device_name`` (and ``plugin`` where the device's plugin is not installed).

    ``plugin``: ``(module, name, distribution)``, registered with the core's plugins on a
    fresh plugin manager for the class's checks, as ``plugin_installed`` does; empty: the
    plugins tuneforge loads itself. Override the class-scoped ``model`` fixture to train
    another tiny checkpoint.
    """

    device_name: str = ""
    plugin: tuple = ()
    pytestmark = [pytest.mark.usefixtures("one_torch_thread")]

    @pytest.fixture(scope="class")
    @classmethod
    def device(cls):
        with contextlib.ExitStack() as stack:
            if cls.plugin:
                from . import plugin_installed

                stack.enter_context(plugin_installed(*cls.plugin))
            yield device_record(cls.device_name)

    @pytest.fixture(scope="class")
    @classmethod
    def model(cls, request):
        # tiny_llama_dir: the session's own, shared with the other tests that use it.
        return conformance_model("") if os.environ.get(MODEL_ENV) else request.getfixturevalue("tiny_llama_dir")

    @pytest.fixture(scope="class")
    @classmethod
    def trained_run(cls, device, model, tmp_path_factory):
        return train_lora(device, model, tmp_path_factory.mktemp(f"{cls.device_name}-lora"))

    @pytest.fixture(scope="class")
    @classmethod
    def loaded(cls, device, trained_run):
        loaded = load_run(device, trained_run)
        yield loaded
        loaded.model = None  # the weights go now, not with the class's last reference
        device.empty_cache()

    def test_tensors_round_trip(self, device):
        check_tensors_round_trip(device)

    def test_lora_training_lowers_the_loss(self, device, trained_run):
        check_lora_training_lowers_the_loss(device, trained_run)

    def test_checkpoint_saves_and_loads(self, device, trained_run, loaded, tmp_path):
        check_checkpoint_saves_and_loads(device, trained_run, loaded, tmp_path)

    def test_pt_engine_is_greedy_and_deterministic(self, device, loaded):
        check_pt_engine_is_greedy_and_deterministic(device, loaded)

    def test_memory_statistics_move(self, device):
        check_memory_statistics_move(device)

    def test_device_kernels_match_the_formulas(self, device):
        check_device_kernels_match_the_formulas(device)

    def test_all_reduce_across_two_processes(self, device, tmp_path):
        check_all_reduce_across_two_processes(device, tmp_path)
