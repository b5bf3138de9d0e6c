"""Preference training on 2 real processes (CPU, gloo) takes the steps of 1 process with the same global batch."""

import importlib.util
import json

import pytest
import torch
from safetensors.torch import load_file

from tuneforge.api import load_for_inference, read_run_record
from tuneforge.testing import step_losses, two_processes


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "pairs.jsonl"
    rows = [{"prompt": f"What is {i} plus {i}?", "chosen": f"{i} plus {i} is {2 * i}.", "rejected": f"It is {2 * i + 1}."}
            for i in range(6)]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def args(model, data, *extra, method="dpo"):
    return [
        "--method", method, "--model", model, "--dataset", data, "--max-steps", 3, "--logging-steps", 1,
        "--save-steps", 100, "--max-length", 48, "--learning-rate", 1e-2, "--device", "cpu", "--seed", 7, *extra,
    ]


TUNERS = {"lora": ["--lora-rank", 4], "full": ["--train-type", "full", "--learning-rate", 1e-3]}
SAVED = {"lora": "adapter_model.safetensors", "full": "model.safetensors"}
REFERENCE = {"lora": "the starting model (adapter disabled)", "full": "a frozen copy of the starting model"}
DEEPSPEED = pytest.mark.skipif(
    importlib.util.find_spec("tuneforge_deepspeed") is None or importlib.util.find_spec("deepspeed") is None,
    reason="the deepspeed backend needs the tuneforge-deepspeed plugin and DeepSpeed (plugins/deepspeed/README.md)",
)
HELD = {  # what the main process says each process holds
    "ddp": None,
    "fsdp": "FSDP2: weights, gradients and optimizer state sharded over 2 processes",
    "zero2": "DeepSpeed ZeRO-2: gradients and optimizer state sharded over 2 processes",
    "zero3": "DeepSpeed ZeRO-3: weights, gradients and optimizer state sharded over 2 processes",
}


@pytest.fixture
def alone(one_process, tiny_llama_dir, pairs):
    """1 process x ``batch`` rows a step, run once per module and arguments (``one_process``): what 2 processes must repeat."""

    def run(tuner, method="dpo", batch=2):
        return one_process("rlhf", *args(tiny_llama_dir, pairs, *TUNERS[tuner], "--per-device-batch-size", batch, method=method))

    return run


@pytest.mark.slow(minutes=1)
@pytest.mark.parametrize(
    "layout, tuner",
    [("ddp", "lora"), ("fsdp", "lora"), ("fsdp", "full"),
     pytest.param("zero2", "lora", marks=DEEPSPEED), pytest.param("zero3", "full", marks=DEEPSPEED)],
)
def test_dpo_on_two_processes_takes_the_steps_of_one(layout, tuner, alone, tiny_llama_dir, pairs, tmp_path):
    # 2 processes x 1 pair against 1 process x 2 pairs: the same pairs in each step. The reference is the
    # policy with its adapter disabled (LoRA) or a frozen copy (full): sharded like the policy under fsdp,
    # under ZeRO-3 a DeepSpeed engine of its own (trl's), sharded the same way. The losses agree to float32
    # rounding of the gradients' all-reduce (sums in another order): 1e-4 relative, as for sft.
    out, one = tmp_path / layout, alone(tuner)
    backend, extra, plugins = layout, [], "dpo"
    if layout.startswith("zero"):
        backend, extra, plugins = "deepspeed", ["--zero-stage", layout[-1]], "dpo,deepspeed"
    text = two_processes(
        "rlhf", args(tiny_llama_dir, pairs, "--output-dir", out, *TUNERS[tuner], *extra), backend,
        env_extra={"TUNEFORGE_LOAD_PLUGINS": plugins},  # the installed plugins in the new processes
    )
    expected = step_losses(one)
    assert len(expected) == 3 and expected[0] == pytest.approx(0.6931, abs=1e-4)  # ln 2: policy == reference
    assert expected[-1] < expected[0]  # the policy moved away from its reference
    assert step_losses(out) == pytest.approx(expected, rel=1e-4)
    if HELD[layout]:
        assert HELD[layout] in text
    # the main process alone wrote the weights, whole, the same as the 1-process run's; they load for infer
    reference, saved = load_file(one / SAVED[tuner]), load_file(out / SAVED[tuner])
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


def logged_steps(out) -> list[dict]:
    """What the run in ``out`` logged at each step (loss, kl, rewards ...), from its checkpoint's trainer state."""
    state = json.loads(next(out.glob("checkpoint-*/trainer_state.json")).read_text())
    return [entry for entry in state["log_history"] if "loss" in entry]


@pytest.mark.slow(minutes=1)
def test_kto_on_two_processes_takes_the_steps_of_one_with_its_kl_estimated_per_process(alone, tiny_llama_dir, pairs, tmp_path):
    # 2 processes x 2 answers against 1 process x 4: the 6 pairs split into 12 answers, the same 4 in each step.
    # KTO shifts every reward by a KL estimate: each prompt of a process's batch paired with the answer of its
    # neighbour in that batch, averaged over the processes. Which answers are paired depends on the per-process
    # batch (docs/dpo.md): the estimate differs between the layouts (0.3356 on 2 processes against 0.3309 on
    # one, after the first step). The loss hardly moves with it: the shift enters the desirable answers' loss
    # with one sign and the undesirable answers' with the other, so with both kinds in a batch it cancels to
    # first order (6e-8 relative seen).
    out, one = tmp_path / "kto", alone("lora", method="kto", batch=4)
    two_processes("rlhf", args(tiny_llama_dir, pairs, "--output-dir", out, *TUNERS["lora"], method="kto"), "ddp",
                  env_extra={"TUNEFORGE_LOAD_PLUGINS": "dpo"}, per_device_batch_size=2)
    expected, steps = logged_steps(one), logged_steps(out)
    assert len(expected) == len(steps) == 3
    assert [step["loss"] for step in steps] == pytest.approx([step["loss"] for step in expected], rel=1e-4)
    assert expected[0]["loss"] == pytest.approx(0.5) and expected[-1]["loss"] < 0.5  # 1 - sigmoid(0): policy == reference
    # The first step's estimate is 0 in both (policy == reference), so both take the same first step: the second
    # step scores the same answers with the same policy.
    for mine, theirs in zip(steps[:2], expected[:2]):
        for key in ("rewards/chosen", "rewards/rejected", "logps/chosen", "logps/rejected"):
            assert mine[key] == pytest.approx(theirs[key], rel=1e-4, abs=1e-6), key
    assert steps[0]["kl"] == expected[0]["kl"] == 0
    for mine, theirs in zip(steps[1:], expected[1:]):
        assert mine["kl"] > 0 and mine["kl"] != pytest.approx(theirs["kl"], rel=1e-3)  # other answers paired
        assert mine["kl"] == pytest.approx(theirs["kl"], rel=0.05)
    assert read_run_record(out).train_metrics["kl"] == pytest.approx(steps[-1]["kl"])
