"""Kill a 2-process `tuneforge sft` while it writes a checkpoint, resume it, get the uninterrupted weights.

Real runs on a tiny random Llama with gloo on CPU processes. Every process of the run
(the command, torchrun and its workers) is killed with SIGKILL while the processes
write a checkpoint (``.staging/checkpoint-N`` has files: the kill point of
test_training_faults), which leaves no ``checkpoint-N`` that is not whole; the run
resumed with ``--resume`` ends with the weights of a run never interrupted, to a
tolerance (the reference is one process with the same global batch, which trains
on the same rows: test_training's ``test_two_processes_train_as_one_with_the_same_global_batch``).
Under ``fsdp`` the run resumes on 2 processes, and a resume on another layout is
refused in one sentence before any weights load; under ``ddp`` it resumes on one
process with the same global batch.
"""

import json
import os
import shutil
import signal
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from test_training import sft, write_chats
from test_training_faults import finish, has_files, start, wait_for
from test_training_safety import refused

STEPS = 3  # 12 rows, 4 a step: one epoch of whole steps, in which one process and two train on the same rows
SHARED = ("adapter_model.safetensors", "scheduler.pt", "trainer_state.json", "tuneforge_checkpoint.json")
CHECKPOINT_FILES = {  # what every process wrote, and the main one: nothing of a checkpoint is missing
    "ddp": (*SHARED, "optimizer.pt", "rng_state_0.pth", "rng_state_1.pth"),
    "fsdp": (*SHARED, "optimizer_0", "pytorch_model_fsdp_0", "rng_state_0.pth", "rng_state_1.pth"),  # shards: folders
}


@pytest.fixture(scope="module")
def chats(tmp_path_factory):
    return write_chats(tmp_path_factory.mktemp("data") / "chats.jsonl", n=12)


def args_for(model, data, out, *, per_device: int, accumulation: int = 2) -> list[str]:
    # No LoRA dropout: one process and two draw their dropout masks differently.
    return [str(a) for a in (
        "--model", model, "--dataset", data, "--output-dir", out, "--max-steps", STEPS, "--device", "cpu",
        "--per-device-batch-size", per_device, "--gradient-accumulation-steps", accumulation, "--save-steps", 1,
        "--save-total-limit", 2, "--logging-steps", 1, "--max-length", 64, "--learning-rate", 1e-2, "--lora-rank", 4,
        "--lora-dropout", 0, "--seed", 5,
    )]


@pytest.fixture(scope="module")
def uninterrupted(tiny_llama_dir, chats, tmp_path_factory):
    """One process, never interrupted, with the global batch of the 2-process runs (4 rows)."""
    out = tmp_path_factory.mktemp("uninterrupted") / "run"
    sft(*args_for(tiny_llama_dir, chats, out, per_device=2))
    return load_file(out / "adapter_model.safetensors")


def process_tree(pid: int) -> list[int]:
    """``pid`` and every process under it (read from /proc: torchrun starts its workers in sessions of their own)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parent = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(parent, []).append(int(stat.parent.name))
    tree, todo = [], [pid]
    while todo:
        tree.append(todo.pop())
        todo.extend(children.get(tree[-1], []))
    return tree


def kill_tree(process) -> list[int]:
    """SIGKILL the command, torchrun and every worker, as a lost machine or a cancelled job would; wait until all are gone."""
    tree = process_tree(process.pid)
    for pid in tree:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    process.wait()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and any(alive(pid) for pid in tree):
        time.sleep(0.05)
    return tree


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def two_processes_killed_while_saving(backend: str, args: list[str], tmp_path: Path) -> Path:
    """Start a 2-process run, kill all its processes while they write checkpoint-2; the output dir."""
    out = Path(args[args.index("--output-dir") + 1])
    log = tmp_path / f"{backend}-killed.log"
    process = start([*args, "--parallel-backend", backend, "--nproc-per-node", "2"], log)
    reached = wait_for(process, lambda: has_files(out / ".staging" / "checkpoint-2"), timeout=240)
    killed = kill_tree(process)
    assert reached, f"the run ended before it wrote checkpoint-2:\n{log.read_text()[-3000:]}"
    assert len(killed) >= 4, killed  # the command, torchrun, 2 workers
    time.sleep(1)  # nothing of the run is left to write
    assert not (out / "tuneforge_run.json").exists() and not (out / "checkpoint-3").exists()
    return out


def assert_checkpoints_whole(out: Path, backend: str) -> list[str]:
    found = sorted(p.name for p in out.glob("checkpoint-*"))
    for name in found:
        missing = [f for f in CHECKPOINT_FILES[backend] if not (out / name / f).exists()]
        assert not missing, f"{name} lacks {missing}"
        record = json.loads((out / name / "tuneforge_checkpoint.json").read_text())
        assert record["world_size"] == 2 and record["parallel_backend"] == backend, record
        for shards in ("optimizer_0", "pytorch_model_fsdp_0"):  # each process wrote its own shards
            if shards in CHECKPOINT_FILES[backend]:
                assert len(list((out / name / shards).glob("__*_*.distcp"))) == 2, (name, shards)
    return found


def assert_weights_close(out: Path, reference: dict):
    weights = load_file(out / "adapter_model.safetensors")
    assert weights.keys() == reference.keys() and weights
    for key, value in reference.items():
        assert weights[key].shape == value.shape and torch.allclose(weights[key], value, atol=1e-4), key
    assert json.loads((out / "tuneforge_run.json").read_text())["train_metrics"]["global_step"] == STEPS
    assert not [p.name for p in out.glob(".*")]  # no staging left


@pytest.mark.slow(minutes=1.5)
def test_fsdp_run_killed_while_saving_resumes_to_the_uninterrupted_weights(tiny_llama_dir, chats, uninterrupted, tmp_path):
    args = args_for(tiny_llama_dir, chats, tmp_path / "run", per_device=1)
    out = two_processes_killed_while_saving("fsdp", args, tmp_path)
    found = assert_checkpoints_whole(out, "fsdp")
    assert "checkpoint-1" in found, found

    # Another layout is refused before any weights load, in one sentence that names both and the fix.
    elsewhere = tmp_path / "copy"
    shutil.copytree(out, elsewhere)
    other = args_for(tiny_llama_dir, chats, elsewhere, per_device=1)
    error = refused(sft(*other, "--resume", "--parallel-backend", "ddp", "--nproc-per-node", 2, expect_ok=False))
    assert "written by --parallel-backend fsdp on 2 processes" in error and "resume with --parallel-backend fsdp" in error
    error = refused(sft(*other, "--resume", "--parallel-backend", "fsdp", "--nproc-per-node", 4, expect_ok=False))
    assert "written by 2 processes with a global batch of 4 rows" in error and "this run has 4 processes" in error
    assert "--gradient-accumulation-steps 1" in error and "resume on 2 processes" in error

    log = tmp_path / "fsdp-resumed.log"
    text = finish(start([*args, "--resume", "--parallel-backend", "fsdp", "--nproc-per-node", "2"], log), log, timeout=240)
    assert "resuming from" in text
    assert_checkpoints_whole(out, "fsdp")
    assert_weights_close(out, uninterrupted)


@pytest.mark.slow(minutes=1)
def test_ddp_run_killed_while_saving_resumes_on_one_process(tiny_llama_dir, chats, uninterrupted, tmp_path):
    out = two_processes_killed_while_saving("ddp", args_for(tiny_llama_dir, chats, tmp_path / "run", per_device=1), tmp_path)
    assert "checkpoint-1" in assert_checkpoints_whole(out, "ddp")
    # One process with 2 rows a device keeps the global batch (4 rows): the same rows in each step.
    resumed = sft(*args_for(tiny_llama_dir, chats, out, per_device=2), "--resume")
    assert "resuming from" in resumed.output
    assert_weights_close(out, uninterrupted)
