"""DeepSpeed ZeRO-2 and ZeRO-3 on 2 real processes (CPU, gloo) take the steps of 1 process with the same global batch."""

import json
import re

import pytest
import torch
from safetensors.torch import load_file

from tuneforge.api import load_for_inference, read_run_record
from tuneforge.testing import run_cli, step_losses, two_processes
from tuneforge_deepspeed.zero import ZeroOptions, deepspeed_config

PLUGIN = {"TUNEFORGE_LOAD_PLUGINS": "deepspeed"}  # the installed plugin in the new processes, whatever the test session allows


@pytest.fixture(scope="module")
def chats(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "chats.jsonl"
    rows = [
        {"messages": [{"role": "user", "content": f"What is {i} plus {i}?"}, {"role": "assistant", "content": f"{i} plus {i} is {2 * i}."}]}
        for i in range(12)
    ]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def args(model, data, *extra):
    return [
        "--model", model, "--dataset", data, "--max-steps", 3, "--logging-steps", 1,
        "--save-steps", 100, "--max-length", 64, "--device", "cpu", "--seed", 7, *extra,
    ]


TUNERS = {"lora": ["--lora-rank", 4, "--lora-dropout", 0], "full": ["--train-type", "full", "--learning-rate", 1e-3]}


@pytest.fixture
def alone(one_process, tiny_llama_dir, chats):
    """1 process x 2 rows a step, run once per tuner and module (``one_process``): what the 2-process runs must repeat."""
    return lambda tuner: one_process("sft", *args(tiny_llama_dir, chats, *TUNERS[tuner], "--per-device-batch-size", 2))


# 2 processes x 1 row against 1 process x 2 rows: the same rows in each step (12 rows, none dropped,
# 6 steps to an epoch). ZeRO averages the gradients in float32 in another order than one process sums
# them, and clips by a norm put together from the shards: the losses agree to float32 rounding (1e-7
# seen; 1e-4 relative asked, as for ddp and fsdp). LoRA's dropout is off: each process would draw its
# own masks.
@pytest.mark.slow(minutes=1)
@pytest.mark.parametrize(
    "stage, offload, held",
    [
        (2, ["--offload-optimizer"], "gradients and optimizer state sharded over 2 processes; optimizer state in CPU memory"),
        (3, ["--offload-optimizer", "--offload-parameters"],
         "weights, gradients and optimizer state sharded over 2 processes; optimizer state and weights in CPU memory"),
    ],
    ids=["zero2-offload-optimizer", "zero3-offload-both"],
)
def test_zero_with_lora_takes_the_steps_of_one_process(stage, offload, held, alone, tiny_llama_dir, chats, tmp_path):
    # ZeRO-2 keeps whole weights and runs the chunked loss; ZeRO-3 turns it off, says so and records it.
    out, one = tmp_path / f"zero{stage}", alone("lora")
    chunked = ["--chunked-loss", "--loss-chunk-size", 16] if stage == 2 else []
    extra = [*TUNERS["lora"], "--parallel-backend", "deepspeed", "--zero-stage", stage, *offload, *chunked]
    text = two_processes("sft", args(tiny_llama_dir, chats, "--output-dir", out, *extra), "deepspeed", env_extra=PLUGIN)
    assert f"[tuneforge] DeepSpeed ZeRO-{stage}: {held}" in text
    assert text.count("DeepSpeed ZeRO-") == 1 and "dropped" not in text  # the main process speaks for both
    turned_off = {"chunked_loss": "the chunked loss reads the output layer's weight after the forward pass, where ZeRO-3 holds only this process's piece of it"}
    if stage == 2:
        assert "loss: chunked, 16 tokens a chunk" in text and "turns off" not in text
    else:
        assert f"[tuneforge] the 'deepspeed' backend turns off --chunked-loss: {turned_off['chunked_loss']}\n" in text
        assert "loss: chunked" not in text
    expected = step_losses(one)
    assert len(expected) == 3 and step_losses(out) == pytest.approx(expected, rel=1e-4)
    # the main process wrote the whole adapter (ZeRO-3: gathered from the shards), the one process's weights
    saved, reference = load_file(out / "adapter_model.safetensors"), load_file(one / "adapter_model.safetensors")
    assert saved.keys() == reference.keys() and saved
    for key in saved:
        assert saved[key].shape == reference[key].shape and torch.allclose(saved[key], reference[key], atol=1e-5), key
    run = read_run_record(out)
    assert run.config["parallel_backend"] == "deepspeed"
    assert run.fast_path_off == ({} if stage == 2 else turned_off) and run.config["chunked_loss"] is (stage == 2)
    assert run.options["parallel_backends"] == {
        "name": "deepspeed",
        "options": {"zero_stage": stage, "offload_optimizer": True, "offload_parameters": stage == 3},
    }
    loaded = load_for_inference(str(out), device="cpu", torch_dtype="float32")
    assert type(loaded.model).__name__ == "PeftModelForCausalLM"


@pytest.mark.slow(minutes=1)
def test_zero_3_full_fine_tuning_saves_a_whole_model(alone, tiny_llama_dir, chats, tmp_path):
    out, one = tmp_path / "full", alone("full")
    text = two_processes("sft", args(tiny_llama_dir, chats, "--output-dir", out, *TUNERS["full"], "--zero-stage", 3), "deepspeed",
                         env_extra=PLUGIN)
    assert "DeepSpeed ZeRO-3: weights, gradients and optimizer state sharded over 2 processes" in text
    assert step_losses(out) == pytest.approx(step_losses(one), rel=1e-4)
    base = load_file(f"{tiny_llama_dir}/model.safetensors")
    saved, reference = load_file(out / "model.safetensors"), load_file(one / "model.safetensors")
    assert base.keys() <= saved.keys()
    for key, value in base.items():
        assert saved[key].shape == value.shape, key  # whole tensors, not one process's piece
        assert torch.allclose(saved[key], reference[key], atol=1e-5), key  # the one process's weights
    assert any(not torch.equal(saved[k], base[k]) for k in base)  # trained
    loaded = load_for_inference(str(out), device="cpu", torch_dtype="float32")
    ids = loaded.tokenizer("Hello", return_tensors="pt").input_ids
    assert torch.isfinite(loaded.model(ids).logits).all()


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--zero-stage", 2, "--offload-parameters"], "--offload-parameters needs --zero-stage 3 (ZeRO-2 keeps whole weights on every device); pass --zero-stage 3, or leave --offload-parameters out."),
        (["--train-type", "qlora"], "--train-type qlora trains on a quantized base, which --parallel-backend deepspeed cannot hold"),
        (["--chunked-loss"], "--chunked-loss reads the output layer's weight outside the forward pass"),
        (["--zero-stage", 1], "Invalid value for '--zero-stage': '1' is not one of '2', '3'."),
    ],
    ids=["offload-parameters-zero2", "qlora", "chunked-loss-zero3", "zero-stage-1"],
)
def test_a_bad_combination_fails_in_one_sentence_before_any_weights_load(extra, message, tiny_llama_dir, chats, tmp_path):
    out = tmp_path / "out"
    result = run_cli("sft", *args(tiny_llama_dir, chats, "--output-dir", out, "--parallel-backend", "deepspeed", "--nproc-per-node", 2, *extra), ok=False)
    assert result.exit_code != 0
    assert message in result.output, result.output
    assert "Traceback" not in result.output and "launching" not in result.output and "loading" not in result.output
    assert not out.exists()


def test_the_options_belong_to_the_backend_and_it_is_listed(tiny_llama_dir, chats, tmp_path):
    assert re.search(r"^  deepspeed +DeepSpeed ZeRO-2 or ZeRO-3", run_cli("list").output, re.M)
    assert "tuneforge-deepspeed" in run_cli("plugins").output
    usage = run_cli("sft", "--parallel-backend", "deepspeed", "--help").output
    assert "--zero-stage" in usage and "--offload-optimizer" in usage and "--offload-parameters" in usage
    result = run_cli("sft", *args(tiny_llama_dir, chats, "--output-dir", tmp_path / "out", "--zero-stage", 2), ok=False)
    assert "Option 'zero_stage' belongs to the parallel backend 'deepspeed'" in result.output


def test_the_plan_estimates_each_stage_and_refuses_what_sft_would():
    plan = ["plan", "--model", "qwen2.5-7b", "--train-type", "full", "--nproc-per-node", 2, "--parallel-backend", "deepspeed", "--json"]
    (zero2,) = json.loads(run_cli(*plan, "--zero-stage", 2).output)["backends"]
    (zero3,) = json.loads(run_cli(*plan, "--offload-optimizer").output)["backends"]
    assert zero2["sharded"] == ["gradients", "optimizer state"] and zero3["sharded"] == ["parameters", "gradients", "optimizer state"]
    assert zero3["weights_gib"] < zero2["weights_gib"] and zero3["optimizer_gib"] == 0  # the optimizer state in CPU memory
    # ZeRO-3 turns the chunked loss off: the plain loss holds the full logits
    lora = ["plan", "--model", "qwen2.5-7b", "--train-type", "lora", "--max-length", 8192, "--nproc-per-node", 2, "--parallel-backend", "deepspeed", "--json"]
    (lora2,), (lora3,) = (json.loads(run_cli(*lora, "--zero-stage", stage).output)["backends"] for stage in (2, 3))
    assert lora3["activations_gib"] > 8192 * 152_064 * 12 / 2**30 > lora2["activations_gib"]  # 12 bytes a logit
    result = run_cli(*plan, "--zero-stage", 2, "--offload-parameters", ok=False)
    assert result.exit_code != 0 and "--offload-parameters needs --zero-stage 3" in result.output


def test_the_deepspeed_config_leaves_sizes_to_the_trainer_and_saves_whole_weights():
    zero3 = deepspeed_config(ZeroOptions(offload_optimizer=True, offload_parameters=True))
    assert zero3["zero_optimization"] == {
        "stage": 3, "contiguous_gradients": True, "overlap_comm": True, "reduce_bucket_size": "auto",
        "stage3_prefetch_bucket_size": "auto", "stage3_param_persistence_threshold": "auto",
        "stage3_gather_16bit_weights_on_model_save": True,
        "offload_optimizer": {"device": "cpu"}, "offload_param": {"device": "cpu"},
    }
    for key in ("train_batch_size", "train_micro_batch_size_per_gpu", "gradient_accumulation_steps", "gradient_clipping"):
        assert zero3[key] == "auto", key
    assert "optimizer" not in zero3 and "scheduler" not in zero3  # the Trainer's own (torch's AdamW)
    assert zero3["zero_force_ds_cpu_optimizer"] is False
    zero2 = deepspeed_config(ZeroOptions(zero_stage=2))
    assert zero2["zero_optimization"] == {"stage": 2, "contiguous_gradients": True, "overlap_comm": True, "reduce_bucket_size": "auto"}


def test_a_checkpoint_of_2_processes_is_not_resumed_on_1_before_any_weights_load(tiny_llama_dir, chats, tmp_path):
    """ZeRO's optimizer state is partitioned for the processes that wrote it (DeepSpeed itself fails
    after the weights load, with a traceback): the resume is refused first, in one sentence.

    The output dir is what an interrupted 2-process ZeRO-2 run leaves: its start record and a
    checkpoint whose record names the layout it was written on."""
    out = tmp_path / "out"
    (out / "checkpoint-2").mkdir(parents=True)
    (out / "tuneforge_started.json").write_text(json.dumps({"run_id": "run-1"}))
    layout = {"run_id": "run-1", "world_size": 2, "parallel_backend": "deepspeed", "per_device_batch_size": 1,
              "gradient_accumulation_steps": 2, "sequence_parallel_size": 1}
    (out / "checkpoint-2" / "tuneforge_checkpoint.json").write_text(json.dumps(layout))
    result = run_cli("sft", *args(tiny_llama_dir, chats, "--output-dir", out, "--parallel-backend", "deepspeed", "--zero-stage", 2,
                                  "--per-device-batch-size", 2, "--resume"), ok=False)
    assert result.exit_code != 0
    assert ("checkpoint-2 in '" in result.output and "was written by --parallel-backend deepspeed on 2 processes, whose "
            "checkpoints hold state partitioned for exactly that many, and this run has 1 process; resume on 2 processes "
            "(--nproc-per-node times --nnodes)." in " ".join(result.output.split())), result.output
    assert "Traceback" not in result.output and "loading" not in result.output
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint-2", "tuneforge_started.json"]  # nothing touched


def test_doctor_imports_deepspeed_and_finds_no_problem():
    report = json.loads(run_cli("doctor", "--json").output)
    findings = {f["topic"]: f for f in report["findings"]}
    assert findings["import deepspeed (deepspeed)"]["verdict"] == "ok", findings["import deepspeed (deepspeed)"]
    assert findings["tuneforge-deepspeed needs deepspeed>=0.19"]["verdict"] == "ok"
    assert report["problems"] == 0, [f for f in report["findings"] if f["verdict"] != "ok"]
