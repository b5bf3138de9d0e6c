"""Preference training on 2 real processes (CPU, gloo) takes the steps of 1 process with the same global batch."""

import json

import pytest
import torch
from safetensors.torch import load_file

from tuneforge.api import load_for_inference, read_run_record
from tuneforge.testing import run_cli, step_losses, two_processes

PLUGIN = {"TUNEFORGE_LOAD_PLUGINS": "dpo"}  # the installed plugin in the new processes, whatever the test session allows


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "pairs.jsonl"
    rows = [{"prompt": f"What is {i} plus {i}?", "chosen": f"{i} plus {i} is {2 * i}.", "rejected": f"It is {2 * i + 1}."}
            for i in range(6)]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def args(model, data, out, *extra):
    return [
        "--method", "dpo", "--model", model, "--dataset", data, "--output-dir", out, "--max-steps", 3,
        "--logging-steps", 1, "--save-steps", 100, "--max-length", 48, "--learning-rate", 1e-2, "--device", "cpu",
        "--seed", 7, *extra,
    ]


TUNERS = {"lora": ["--lora-rank", 4], "full": ["--train-type", "full", "--learning-rate", 1e-3]}
SAVED = {"lora": "adapter_model.safetensors", "full": "model.safetensors"}
REFERENCE = {"lora": "the starting model (adapter disabled)", "full": "a frozen copy of the starting model"}


@pytest.fixture(scope="module")
def one_process(tiny_llama_dir, pairs, tmp_path_factory):
    """DPO on 1 process x 2 pairs a step, once per tuner: the runs the 2-process ones must repeat."""
    made = {}

    def run(tuner):
        if tuner not in made:
            made[tuner] = tmp_path_factory.mktemp("one") / tuner
            run_cli("rlhf", *args(tiny_llama_dir, pairs, made[tuner], *TUNERS[tuner], "--per-device-batch-size", 2))
        return made[tuner]

    return run


@pytest.mark.slow(minutes=1)
@pytest.mark.parametrize("backend, tuner", [("ddp", "lora"), ("fsdp", "lora"), ("fsdp", "full")])
def test_dpo_on_two_processes_takes_the_steps_of_one(backend, tuner, one_process, tiny_llama_dir, pairs, tmp_path):
    # 2 processes x 1 pair against 1 process x 2 pairs: the same pairs in each step. The reference is the
    # policy with its adapter disabled (LoRA) or a frozen copy, sharded like the policy under fsdp (full).
    # The losses agree to float32 rounding of the gradients' all-reduce (sums in another order): 1e-4
    # relative, as for sft.
    out, alone = tmp_path / backend, one_process(tuner)
    text = two_processes("rlhf", args(tiny_llama_dir, pairs, out, *TUNERS[tuner]), backend, env_extra=PLUGIN)
    expected = step_losses(alone)
    assert len(expected) == 3 and expected[0] == pytest.approx(0.6931, abs=1e-4)  # ln 2: policy == reference
    assert expected[-1] < expected[0]  # the policy moved away from its reference
    assert step_losses(out) == pytest.approx(expected, rel=1e-4)
    if backend == "fsdp":
        assert "FSDP2: weights, gradients and optimizer state sharded over 2 processes" in text
    # the main process alone wrote the weights, whole, the same as the 1-process run's; they load for infer
    reference, saved = load_file(alone / SAVED[tuner]), load_file(out / SAVED[tuner])
    assert reference and reference.keys() <= saved.keys()
    for key in reference:
        assert saved[key].shape == reference[key].shape and torch.allclose(saved[key], reference[key], atol=1e-5), key
    run = read_run_record(out)
    assert run.config["parallel_backend"] == backend and run.train_metrics["reference"] == REFERENCE[tuner]
    loaded = load_for_inference(str(out), device="cpu", torch_dtype="float32")
    if tuner == "lora":
        assert type(loaded.model).__name__ == "PeftModelForCausalLM"
    ids = loaded.tokenizer("Hello", return_tensors="pt").input_ids
    assert torch.isfinite(loaded.model(ids).logits).all()
