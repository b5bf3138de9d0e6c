"""The npu device path with the STAND-IN torch_npu (``stand_in/torch_npu``: the NPU calls mapped onto the CPU).

No NPU exists here. The record is the plugin's own (``npu_device``) on the CPU device
type the stand-in maps the NPU onto; everything else is real: ``tuneforge sft
--device npu`` trains the tiny random-weight model through the core's path, the fast
path picks Ascend's operators from the device's capabilities (the stand-in counts
which ran), the pt engine answers from the run, ``tuneforge rlhf --method dpo --device
npu`` (tuneforge-dpo) trains on preference pairs, and the record passes the device
conformance kit (``tuneforge.testing.device_conformance``). All of that runs once, in a
process of its own (``stand_in/train_and_answer.py``), so nothing it sets stays in this one.
Then ``tuneforge deploy --device npu`` serves the sft run in a process of its own
(``python -m npu_on_the_stand_in deploy``), called with the official openai client.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import tuneforge_ascend.plugin
from tuneforge_ascend import npu
from tuneforge.api import read_run_record
from tuneforge.testing import plugin_installed, registry, step_losses
from tuneforge.testing.server import Server

STAND_IN_DIR = Path(__file__).parent / "stand_in"

ROWS = [
    {"messages": [{"role": "user", "content": f"What is {i} plus {i}?"}, {"role": "assistant", "content": f"{2 * i}."}]}
    for i in range(8)
]
PAIRS = [
    {"prompt": f"What is {i} plus {i}?", "chosen": f"{i} plus {i} is {2 * i}.", "rejected": f"It is {2 * i + 1}, I think."}
    for i in range(4)
]
CALLS_LINE = "stand-in torch_npu calls: "  # npu_on_the_stand_in's last line, run as a module
OPERATORS = ("npu_rms_norm", "npu_swiglu", "npu_rotary_mul", "npu_fusion_attention")


@pytest.fixture(scope="module")
def run_with_the_stand_in_torch_npu(tiny_llama_dir, tmp_path_factory, stand_in_env):
    """``sft --device npu``, ``infer --device npu``, ``rlhf --method dpo --device npu`` and the device conformance
    kit with the STAND-IN torch_npu: the run dir, the answers, the report of what ran, and the dpo run dir."""
    import os

    root = tmp_path_factory.mktemp("npu-run")
    data, questions, pairs = root / "sums.jsonl", root / "questions.jsonl", root / "pairs.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in ROWS))
    pairs.write_text("".join(json.dumps(row) + "\n" for row in PAIRS))
    questions.write_text(json.dumps({"messages": [{"role": "user", "content": "What is 3 plus 3?"}]}) + "\n")
    # float32 and no recomputation: a CPU computes bf16 slowly, and the test only needs the path.
    flags = ["--max-steps", 4, "--per-device-batch-size", 4, "--save-steps", 100, "--logging-steps", 1, "--max-length", 64,
             "--lora-rank", 8, "--learning-rate", 5e-2, "--torch-dtype", "float32", "--no-gradient-checkpointing"]
    dpo_flags = ["--max-steps", 2, "--per-device-batch-size", 2, "--save-steps", 100, "--logging-steps", 1, "--max-length", 64,
                 "--lora-rank", 4, "--learning-rate", 1e-2, "--torch-dtype", "float32", "--no-gradient-checkpointing"]
    process = subprocess.run(
        [sys.executable, str(STAND_IN_DIR / "train_and_answer.py"), tiny_llama_dir, data, root / "run", questions,
         root / "answers.jsonl", pairs, root / "dpo", json.dumps(list(map(str, dpo_flags))), root / "conformance",
         *map(str, flags)],
        capture_output=True, text=True, env={**os.environ, **stand_in_env}, timeout=600,
    )
    assert process.returncode == 0, process.stdout[-3000:] + process.stderr[-5000:]
    return root / "run", root / "answers.jsonl", json.loads(process.stdout.strip().splitlines()[-1]), root / "dpo"


def test_sft_trains_lora_with_device_npu_and_the_loss_falls_with_the_stand_in_torch_npu(run_with_the_stand_in_torch_npu):
    out, _, ran, _ = run_with_the_stand_in_torch_npu
    losses = step_losses(out)
    assert len(losses) == 4 and losses[-1] < losses[0]
    run = read_run_record(out)
    assert (out / "adapter_model.safetensors").is_file() and run.train_metrics["global_step"] == 4
    device = run.options["devices"]
    assert device["name"] == "npu"
    assert all(device["options"][name] is True for name in ("fused_norm", "fused_swiglu", "fused_rope", "chunked_loss"))
    assert run.config["packing"] is True and run.config["gradient_checkpointing"] is False  # the device's default; as asked
    # The launch environment of an Ascend job, set before the first allocation.
    assert ran["environment"] == tuneforge_ascend.plugin.ENVIRONMENT


def test_the_fast_path_picks_the_stand_in_operators_with_the_stand_in_torch_npu(run_with_the_stand_in_torch_npu):
    out, _, ran, _ = run_with_the_stand_in_torch_npu
    # Packed rows attend through the device's own kernel, chosen from its capabilities: Ascend's fusion attention.
    assert read_run_record(out).config["attn_implementation"] == "tuneforge_varlen"
    assert {op: ran["trained"].get(op, 0) > 0 for op in OPERATORS} == dict.fromkeys(OPERATORS, True)


def test_the_pt_engine_answers_on_npu_with_the_stand_in_torch_npu(run_with_the_stand_in_torch_npu):
    _, answers, ran, _ = run_with_the_stand_in_torch_npu
    rows = [json.loads(line) for line in answers.read_text().splitlines()]
    assert len(rows) == 1 and isinstance(rows[0]["answer"], str) and rows[0]["usage"]["completion_tokens"] >= 1
    assert rows[0]["finish_reason"] in ("stop", "length")
    # The engine handed the device's cache back when it closed; generation runs no fused training operator.
    assert ran["answered"].get("empty_cache", 0) > ran["trained"].get("empty_cache", 0)


def test_rlhf_dpo_trains_with_device_npu_with_the_stand_in_torch_npu(run_with_the_stand_in_torch_npu):
    _, _, ran, out = run_with_the_stand_in_torch_npu
    run = read_run_record(out)
    assert run.method == "dpo" and run.tuner == "lora" and run.train_metrics["global_step"] == 2
    assert (out / "adapter_model.safetensors").is_file() and len(step_losses(out)) == 2
    assert run.options["devices"]["name"] == "npu"
    # The preference run went through the device's kernels: the stand-in counted Ascend's operators again.
    assert {op: ran["preferred"].get(op, 0) > ran["answered"].get(op, 0) for op in OPERATORS[:3]} == dict.fromkeys(OPERATORS[:3], True)


def test_deploy_serves_the_run_on_npu_to_the_openai_client_with_the_stand_in_torch_npu(
    run_with_the_stand_in_torch_npu, stand_in_env, tmp_path
):
    out = run_with_the_stand_in_torch_npu[0]
    server = Server(["--model", out, "--device", "npu", "--engine", "pt", "--max-tokens", 4], tmp_path / "server.log",
                    env=stand_in_env, module="npu_on_the_stand_in")
    try:
        assert [model.id for model in server.client().models.list().data] == [out.name]
        reply = server.client().chat.completions.create(
            model=out.name, messages=[{"role": "user", "content": "What is 3 plus 3?"}], max_tokens=4, temperature=0)
        assert isinstance(reply.choices[0].message.content, str) and reply.usage.completion_tokens >= 1
        assert reply.choices[0].finish_reason in ("stop", "length")
    finally:
        stopped = server.stop()
    assert stopped == 0, server.tail()
    # The server ran on the npu record: closing the engine emptied the stand-in's cache (a CPU record's empties nothing).
    line = next(line for line in server.tail().splitlines() if line.startswith(CALLS_LINE))
    assert json.loads(line[len(CALLS_LINE):]).get("empty_cache", 0) >= 1, server.tail()


def test_the_npu_record_passes_the_device_conformance_kit_with_the_stand_in_torch_npu(run_with_the_stand_in_torch_npu):
    _, _, ran, _ = run_with_the_stand_in_torch_npu
    pytest.importorskip("tuneforge.testing.device_conformance", reason="the device conformance kit is not in this tuneforge")
    outcome = ran["conformance"]
    passed = {"tensors_round_trip", "lora_training_lowers_the_loss", "checkpoint_saves_and_loads",
              "pt_engine_is_greedy_and_deterministic", "memory_statistics_move", "device_kernels_match_the_formulas"}
    assert {name for name, result in outcome.items() if result == "passed"} == passed, outcome
    # One CPU under the stand-in, and hccl wants a device per process: the kit says so rather than run two on one.
    assert outcome["all_reduce_across_two_processes"].startswith("skipped: A run of 2 processes on 'hccl' needs 2 'cpu' devices")


def test_the_record_answers_from_the_stand_in_torch_npu(stand_in_torch_npu, npu_plugin_on_the_stand_in_torch_npu):
    with plugin_installed(npu_plugin_on_the_stand_in_torch_npu, "ascend", "tuneforge-ascend") as manager:
        device = registry(manager).get("devices", "npu")
        assert device.is_available() and device.supports_bf16() and device.peak_memory() > 0
        emptied = stand_in_torch_npu.calls["empty_cache"]
        device.empty_cache()
        assert stand_in_torch_npu.calls["empty_cache"] == emptied + 1
    kernels = tuneforge_ascend.plugin.npu_kernels()
    assert (kernels.rms_norm, kernels.swiglu, kernels.rotary, kernels.varlen_attention) == (
        npu.rms_norm, npu.swiglu, npu.rotary, npu.varlen_attention)


def test_the_operators_compute_the_formulas_they_replace_with_the_stand_in_torch_npu(stand_in_torch_npu, monkeypatch):
    torch.manual_seed(0)
    hidden, weight = torch.randn(2, 5, 8), torch.randn(8)
    assert torch.allclose(npu.rms_norm(hidden, weight, 1e-6), npu._rms_norm_formula(hidden, weight, 1e-6))
    gate, up = torch.randn(2, 3, 8), torch.randn(2, 3, 8)
    assert torch.allclose(npu.swiglu(gate, up), torch.nn.functional.silu(gate) * up)
    q, k, cos, sin = torch.randn(1, 4, 5, 8), torch.randn(1, 2, 5, 8), torch.randn(1, 5, 8), torch.randn(1, 5, 8)
    for got, want in zip(npu.rotary(q, k, cos, sin), npu._plain_rotary(q, k, cos, sin)):
        assert torch.allclose(got, want, atol=1e-6)
    # Two packed samples (3 and 2 tokens), grouped queries: each attends causally over itself only.
    query, key, value = (torch.randn(5, heads, 8, dtype=torch.bfloat16) for heads in (4, 2, 2))
    out = npu.varlen_attention(query, key, value, torch.tensor([0, 3, 5], dtype=torch.int32), 3, 8 ** -0.5)
    alone = [torch.nn.functional.scaled_dot_product_attention(
        *(t[start:end].transpose(0, 1)[None] for t in (query, key, value)), is_causal=True, enable_gqa=True)[0].transpose(0, 1)
        for start, end in ((0, 3), (3, 5))]
    assert out.shape == (5, 4, 8) and torch.allclose(out, torch.cat(alone), atol=1e-2)
    # A torch_npu without one of the operators: that switch runs the plain formula instead.
    monkeypatch.delattr(stand_in_torch_npu, "npu_swiglu")
    kernels = tuneforge_ascend.plugin.npu_kernels()
    assert kernels.swiglu is npu.PLAIN["swiglu"] and kernels.rms_norm is npu.rms_norm and "swiglu" not in npu.provided()
