"""Sequence parallelism (``--sequence-parallel-size``): real 2-process runs on CPU with gloo.

Tolerances: everything runs in float32 (epsilon 1.2e-7). Cutting a row changes only the
order of the floating-point sums (the loss and the gradients are sums over the two
processes' slices; the matrix products run on 32 rows instead of 64), which moves the
results by a few units of epsilon (measured: 2e-7 on the loss, 4e-7 on the gradients,
relative). 1e-5 leaves a wide margin above that and stays far below any real fault: a
target lost at the cut changes this loss by about 2.5%, a gradient scaled by the group
size by 100%.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tuneforge.modeling import read_run_record

from test_training import _sft_process, _step_losses, base_args, sft, write_chats

WORKER = Path(__file__).with_name("sequence_parallel_worker.py")


def _grad_norms(out):
    state = json.loads(next(out.glob("checkpoint-*/trainer_state.json")).read_text())
    return [entry["grad_norm"] for entry in state["log_history"] if "grad_norm" in entry]


@pytest.mark.slow(minutes=1)
def test_all_to_all_and_one_cut_row_match_one_process(tmp_path):
    out = tmp_path / "result.json"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", str(WORKER), str(out)]
    process = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert process.returncode == 0, process.stdout + process.stderr
    result = json.loads(out.read_text())
    output_error, grad_error, shape = result["all_to_all"]
    assert shape == [1, 2, 12, 3]  # [batch, heads / 2, all tokens, dim]
    assert output_error == 0.0 and grad_error == 0.0  # a copy of the data: exact, forward and backward
    for kv_heads in ("kv2", "kv1"):  # one key/value head per process, and one repeated for both
        row = result[kv_heads]
        assert row["local_tokens"] == 32 and row["count"] == 40 and row["grads"] == 21
        assert row["loss"] == pytest.approx(row["reference"], rel=1e-5), kv_heads
        assert row["grad_error"] < 1e-5, kv_heads


@pytest.mark.slow(minutes=2)
def test_sft_with_sequence_parallel_trains_as_one_process(tiny_llama_dir, tmp_path):
    data = write_chats(tmp_path / "chats.jsonl", n=12)
    # No LoRA dropout: each process would draw its masks for its own slice, not those one process draws for the row.
    common = ["--device", "cpu", "--seed", 7, "--lora-dropout", 0]
    sft(*base_args(tiny_llama_dir, data, tmp_path / "one"), *common, "--packing", "--attn-implementation", "tuneforge_varlen")
    args = base_args(tiny_llama_dir, data, tmp_path / "sp") + [
        *common, "--sequence-parallel-size", 2, "--parallel-backend", "ddp", "--nproc-per-node", 2,
        "--gradient-checkpointing",  # the backward pass recomputes each layer's forward, exchanges included
    ]
    process = _sft_process(args)
    text, _ = process.communicate(timeout=600)
    assert process.returncode == 0, text
    assert "sequence parallel: each packed row cut across 2 processes, 1 data-parallel group" in text
    expected, losses = _step_losses(tmp_path / "one"), _step_losses(tmp_path / "sp")
    assert len(expected) == 3
    assert losses == pytest.approx(expected, rel=1e-5)  # measured: 1e-7
    # Adam hides a gradient scaled by a constant; the gradient norm the Trainer logs (before clipping) does not:
    # averaging over the processes of a group without the scaling would halve it.
    norms, expected_norms = _grad_norms(tmp_path / "sp"), _grad_norms(tmp_path / "one")
    assert len(expected_norms) == 3 and expected_norms[0] > 0
    assert norms == pytest.approx(expected_norms, rel=1e-5)
    one = load_file(tmp_path / "one" / "adapter_model.safetensors")
    cut = load_file(tmp_path / "sp" / "adapter_model.safetensors")
    assert one.keys() == cut.keys() and one
    for key in one:  # measured: 7e-9 apart, weights of up to 0.13
        assert torch.allclose(cut[key], one[key], rtol=0, atol=1e-6), key
    config = read_run_record(tmp_path / "sp").config
    assert config["sequence_parallel_size"] == 2 and config["packing"] is True and config["gradient_checkpointing"] is True
    assert config["attn_implementation"] == "tuneforge_varlen"  # chosen for the cut rows, on CPU too


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--parallel-backend", "ddp", "--nproc-per-node", 3], "must divide the number of processes (3)"),
        (["--parallel-backend", "fsdp", "--nproc-per-node", 2], "use --parallel-backend ddp"),
        (["--parallel-backend", "ddp", "--nproc-per-node", 2, "--no-packing"], "leave out --no-packing"),
        (["--parallel-backend", "ddp", "--nproc-per-node", 2, "--attn-implementation", "sdpa"], "cannot be cut over heads"),
    ],
)
def test_impossible_sequence_parallel_runs_are_refused_before_any_work(extra, message, tiny_llama_dir, tmp_path):
    data = write_chats(tmp_path / "chats.jsonl", n=4)
    result = sft(*base_args(tiny_llama_dir, data, tmp_path / "run"), "--sequence-parallel-size", 2, *extra, expect_ok=False)
    assert result.exit_code != 0 and message in result.output, result.output
    assert not (tmp_path / "run").exists()


def test_heads_that_do_not_divide_are_refused(tiny_llama_dir, tmp_path):
    data = write_chats(tmp_path / "chats.jsonl", n=4)
    result = sft(*base_args(tiny_llama_dir, data, tmp_path / "run"), "--sequence-parallel-size", 3,
                 "--parallel-backend", "ddp", "--nproc-per-node", 3, expect_ok=False)
    assert "must divide the model's 4 attention heads" in result.output, result.output
