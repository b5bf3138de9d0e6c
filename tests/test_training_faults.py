"""Kill `tuneforge sft` with SIGKILL, resume it until it finishes, and get the uninterrupted run.

Each case starts a real `tuneforge sft` process on a tiny random Llama (a checkpoint
every step, rotation, gradient accumulation, LoRA dropout, several epochs), kills it
at a point of its plan, resumes it with `--resume` (killing the resumed process too
when the plan says so) until it finishes, and compares the result with a run that was
never interrupted: the same adapter tensors, bit for bit, and the same step count.

Kill points, found by watching the output dir (nothing in tuneforge knows about them):
- ``write``: while a checkpoint is being written (``.staging/checkpoint-N`` exists);
- ``between``: a random delay after ``checkpoint-N`` appeared;
- ``publish``: while the final weights are being published (``.final`` exists);
- ``random``: a random delay after the tuner was set up.
The steps and delays come from a seed printed by each case (pytest shows it when a
case fails); ``TUNEFORGE_FAULT_SEED=N`` replays a run's choices.
"""

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from test_training import write_chats

MAX_STEPS = 7  # 3 optimizer steps an epoch (12 rows, 2 a batch, 2 batches a step): resumes land mid-epoch too
SEED = int(os.environ.get("TUNEFORGE_FAULT_SEED") or random.SystemRandom().randrange(2**31))
CHECKPOINT_FILES = (
    "adapter_model.safetensors", "optimizer.pt", "scheduler.pt", "rng_state.pth", "trainer_state.json", "tuneforge_checkpoint.json",
)

# Each case: the first kill's phase is fixed (so every CI run covers every phase), a second one is drawn.
CASES = {
    "write": ["write", None],
    "between": ["between", None],
    "publish": ["publish", None],
    "random": ["random", None],
}


@pytest.fixture(scope="module")
def chats(tmp_path_factory):
    return write_chats(tmp_path_factory.mktemp("data") / "chats.jsonl", n=12)


def sft_args(model, data, out) -> list[str]:
    return [str(a) for a in (
        "--model", model, "--dataset", data, "--output-dir", out, "--max-steps", MAX_STEPS,
        "--per-device-batch-size", 2, "--gradient-accumulation-steps", 2, "--save-steps", 1, "--save-total-limit", 2,
        "--logging-steps", 1, "--max-length", 64, "--learning-rate", 1e-2, "--lora-rank", 4, "--seed", 11,
    )]


def start(args: list[str], log: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    with open(log, "w") as handle:  # a file, not a pipe: a pipe nobody reads could stall the process
        return subprocess.Popen([sys.executable, "-m", "tuneforge.cli", "sft", *args], stdout=handle, stderr=subprocess.STDOUT, env=env)


def finish(process: subprocess.Popen, log: Path, timeout: float = 300) -> str:
    process.wait(timeout=timeout)
    text = log.read_text()
    assert process.returncode == 0, text
    return text


@pytest.fixture(scope="module")
def uninterrupted(tiny_llama_dir, chats, tmp_path_factory):
    out = tmp_path_factory.mktemp("uninterrupted") / "run"
    finish(start(sft_args(tiny_llama_dir, chats, out), out.parent / "log"), out.parent / "log")
    return out


def last_step(out: Path) -> int:
    steps = [int(p.name.split("-")[1]) for p in out.glob("checkpoint-*")]
    return max(steps, default=0)


def has_files(folder: Path) -> bool:
    try:
        return any(folder.iterdir())
    except OSError:  # not there (yet, or any more)
        return False


def wait_for(process: subprocess.Popen, condition, timeout: float = 300) -> bool:
    """Poll ``condition`` every millisecond; False if the process ended first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        if process.poll() is not None:
            return False
        time.sleep(0.001)
    raise AssertionError("the run neither reached the kill point nor ended")


def kill_at(phase: str, process: subprocess.Popen, out: Path, log: Path, rng: random.Random) -> str:
    """Kill ``process`` at ``phase``; what was seen, for the case's log."""
    done = last_step(out)
    if done == MAX_STEPS and phase in ("write", "between"):
        phase = "publish"  # every checkpoint is there: what is left to interrupt is the publish
    if phase == "write":
        step = rng.randint(done + 1, MAX_STEPS)
        delay = rng.uniform(0, 0.01)
        reached = wait_for(process, lambda: has_files(out / ".staging" / f"checkpoint-{step}"))
        time.sleep(delay if reached else 0)
        seen = f"{delay:.3f} s after checkpoint-{step} began to be written"
    elif phase == "between":
        step = rng.randint(done + 1, MAX_STEPS)
        delay = rng.uniform(0, 0.3)
        reached = wait_for(process, (out / f"checkpoint-{step}").is_dir)
        time.sleep(delay if reached else 0)
        seen = f"{delay:.3f} s after checkpoint-{step} appeared"
    elif phase == "publish":
        delay = rng.uniform(0, 0.01)
        reached = wait_for(process, lambda: has_files(out / ".final"))
        time.sleep(delay if reached else 0)
        seen = f"{delay:.3f} s into the final publish"
    else:
        delay = rng.uniform(0, 2.5)
        reached = wait_for(process, lambda: "[tuneforge] tuner" in log.read_text())
        time.sleep(delay if reached else 0)
        seen = f"{delay:.3f} s after the tuner was set up"
    process.send_signal(signal.SIGKILL)
    process.wait()
    if process.returncode != -signal.SIGKILL:
        return f"{phase}: the process ended (exit code {process.returncode}) before it was killed"
    left = {p.name: sorted(str(f.relative_to(p)) for f in p.rglob("*") if f.is_file()) for p in out.glob(".*") if p.is_dir()}
    finished = ", after the run record was written" if (out / "tuneforge_run.json").is_file() else ""
    return f"{phase}: killed {seen}{finished}; left {left or 'no staging'}, checkpoints up to {last_step(out)}"


def assert_checkpoints_whole(out: Path, context: str):
    started = json.loads((out / "tuneforge_started.json").read_text())
    for checkpoint in out.glob("checkpoint-*"):
        missing = [name for name in CHECKPOINT_FILES if not (checkpoint / name).is_file()]
        assert not missing, f"{checkpoint.name} lacks {missing}; {context}"
        record = json.loads((checkpoint / "tuneforge_checkpoint.json").read_text())
        assert record["run_id"] == started["run_id"], context


@pytest.mark.slow(minutes=1.5)
@pytest.mark.parametrize("case", list(CASES))
def test_killed_and_resumed_run_equals_the_uninterrupted_one(case, tiny_llama_dir, chats, uninterrupted, tmp_path):
    rng = random.Random(f"{SEED}-{case}")
    plan = [phase or rng.choice(list(CASES)) for phase in CASES[case]]
    print(f"fault seed {SEED} (replay: TUNEFORGE_FAULT_SEED={SEED}); case {case}: kills {plan}")
    out = tmp_path / "run"
    args = sft_args(tiny_llama_dir, chats, out)
    history = []
    for attempt, phase in enumerate(plan):
        log = tmp_path / f"log-{attempt}"
        process = start(args + (["--resume"] if attempt else []), log)
        history.append(kill_at(phase, process, out, log, rng))
        print(history[-1])
        context = f"seed {SEED}, case {case}: {history}"
        if (out / "tuneforge_run.json").is_file():
            break  # finished before the kill: resuming it must change nothing
        assert_checkpoints_whole(out, context)

    log = tmp_path / "log-final"
    text = finish(start(args + ["--resume"], log), log)
    context = f"seed {SEED}, case {case}: {history}"
    record = json.loads((out / "tuneforge_run.json").read_text())
    expected = json.loads((uninterrupted / "tuneforge_run.json").read_text())
    assert record["train_metrics"]["global_step"] == expected["train_metrics"]["global_step"] == MAX_STEPS, context
    assert record["run_id"] == json.loads((out / "tuneforge_started.json").read_text())["run_id"], context
    assert sorted(p.name for p in out.glob("checkpoint-*")) == [f"checkpoint-{MAX_STEPS - 1}", f"checkpoint-{MAX_STEPS}"], context
    assert not [p.name for p in out.glob(".*")], context  # no staging, publish or replaced folder left
    assert_checkpoints_whole(out, context)

    weights = load_file(out / "adapter_model.safetensors")
    reference = load_file(uninterrupted / "adapter_model.safetensors")
    assert weights.keys() == reference.keys()
    differing = [key for key in reference if not torch.equal(weights[key], reference[key])]
    assert not differing, f"{len(differing)} tensors differ from the uninterrupted run ({differing[:2]}); {context}\n{text[-2000:]}"
    last = load_file(out / f"checkpoint-{MAX_STEPS}" / "adapter_model.safetensors")
    assert all(torch.equal(last[key], reference[key]) for key in reference), context
