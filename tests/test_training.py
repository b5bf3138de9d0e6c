"""`tuneforge sft` end to end on a tiny random Llama: tuners, output dir, resume, guards."""

import json
import signal
import time
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file

from tuneforge.cli import cli
from tuneforge.modeling import load_for_inference, read_run_record
from tuneforge.testing import cli_process, step_losses, two_processes


def write_chats(path: Path, n: int = 24) -> Path:
    rows = []
    for i in range(n):
        rows.append(
            {
                "messages": [
                    {"role": "user", "content": f"What is {i} plus {i}?"},
                    {"role": "assistant", "content": f"{i} plus {i} is {2 * i}."},
                ]
            }
        )
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def chats(tmp_path_factory):
    return write_chats(tmp_path_factory.mktemp("data") / "chats.jsonl")


def sft(*args, expect_ok=True):
    result = CliRunner().invoke(cli, ["sft", *map(str, args)], catch_exceptions=False)
    if expect_ok:
        assert result.exit_code == 0, result.output
    return result


def base_args(model, data, out, steps=3):
    return [
        "--model", model, "--dataset", data, "--output-dir", out, "--max-steps", steps,
        "--per-device-batch-size", 2, "--logging-steps", 1, "--save-steps", 100, "--max-length", 64,
    ]


def test_lora_run_writes_a_self_describing_output_dir(tiny_llama_dir, chats, tmp_path):
    out = tmp_path / "run"
    sft(*base_args(tiny_llama_dir, chats, out), "--val-split-ratio", 0.25, "--lora-rank", 4)
    run = read_run_record(out)
    assert run.method == "sft" and run.tuner == "lora" and run.saves_adapter is True
    assert run.model_family == "llama" and run.template == "default"
    assert run.base_model == tiny_llama_dir
    assert run.config["lora_rank"] == 4
    assert run.options["tuners"]["name"] == "lora" and run.options["tuners"]["options"]["lora_rank"] == 4
    assert len(run.data["fingerprint"]) == 64
    assert run.train_metrics["global_step"] == 3
    assert "eval_loss" in run.train_metrics
    assert "tuneforge" in run.plugins and "transformers" in run.libraries
    assert (out / "adapter_model.safetensors").is_file() and (out / "tokenizer_config.json").is_file()
    assert not (out / ".final").exists() and not (out / ".staging").exists()
    # infer needs nothing but the path: base + adapter come back ready to generate.
    loaded = load_for_inference(str(out))
    assert type(loaded.model).__name__ == "PeftModelForCausalLM"
    assert loaded.template_name == "default"


def test_lora_adapter_weights_are_trained(tiny_llama_dir, chats, tmp_path):
    out = tmp_path / "run"
    sft(*base_args(tiny_llama_dir, chats, out, steps=4), "--learning-rate", 1e-2)
    weights = load_file(out / "adapter_model.safetensors")
    lora_b = [v for k, v in weights.items() if "lora_B" in k]
    assert lora_b and any(v.abs().sum() > 0 for v in lora_b)  # B starts at zero


@pytest.mark.parametrize("train_type", ["full", "dora"])
def test_other_tuners_train(train_type, tiny_llama_dir, chats, tmp_path):
    out = tmp_path / train_type
    sft(*base_args(tiny_llama_dir, chats, out, steps=2), "--train-type", train_type)
    run = read_run_record(out)
    assert run.tuner == train_type
    if train_type == "full":
        assert (out / "model.safetensors").is_file() and (out / "config.json").is_file()
        before = load_file(Path(tiny_llama_dir) / "model.safetensors")
        after = load_file(out / "model.safetensors")
        assert any(not torch.equal(before[k].to(after[k].dtype), after[k]) for k in before)
    else:
        assert json.loads((out / "adapter_config.json").read_text())["use_dora"] is True


def test_freeze_trains_only_matching_parameters(tiny_llama_dir, chats, tmp_path):
    out = tmp_path / "freeze"
    sft(*base_args(tiny_llama_dir, chats, out, steps=2), "--train-type", "freeze",
        "--trainable-modules", r"layers\.1\.mlp", "--learning-rate", 1e-2)
    before = load_file(Path(tiny_llama_dir) / "model.safetensors")
    after = load_file(out / "model.safetensors")
    # compared in the saved dtype: on a GPU the run trains (and saves) in bf16
    changed = {k for k in before if not torch.equal(before[k].to(after[k].dtype), after[k])}
    assert changed and all("layers.1.mlp" in k for k in changed)


def test_continue_from_an_adapter_run(tiny_llama_dir, chats, tmp_path):
    first = tmp_path / "first"
    sft(*base_args(tiny_llama_dir, chats, first, steps=2), "--learning-rate", "1e-2")
    second = tmp_path / "second"
    sft(*base_args(str(first), chats, second, steps=2), "--learning-rate", "1e-2")
    run = read_run_record(second)
    assert run.base_model == tiny_llama_dir  # the adapter was folded in, the base stays the same
    assert run.base_adapters == (str(first),)  # ... and the record says so
    assert run.config["model"] == str(first)

    # The second run's model is base + first (merged) + second: what infer and export load.
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    ids = torch.tensor([[1, 5, 9, 13, 17]])
    with torch.no_grad():
        served = load_for_inference(str(second), device="cpu", torch_dtype="float32").model(ids).logits
        base = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32)
        expected = PeftModel.from_pretrained(PeftModel.from_pretrained(base, first).merge_and_unload(), second)(ids).logits
        without_first = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32), second)(ids).logits
    assert torch.allclose(served, expected, atol=1e-5)
    assert not torch.allclose(served, without_first, atol=1e-4)  # the first adapter matters


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--train-type", "qlora"], "needs a CUDA GPU"),
        (["--lora-rank", "0"], "--lora-rank is 0"),
        (["--max-steps", "0"], "--max-steps is 0"),
        (["--train-type", "lroa"], "Unknown tuner 'lroa'.*Did you mean 'lora'"),
        (["--train-type", "freeze"], "needs --trainable-modules"),
        (["--parallel-backend", "deepspeed"], "Unknown parallel backend 'deepspeed'"),
        (["--parallel-backend", "fsdp", "--nproc-per-node", "2", "--device", "cpu", "--fsdp-offload"],
         r"--fsdp-offload keeps the shards in CPU memory, where a --device cpu run keeps everything already, .*; leave --fsdp-offload out\."),
        (["--parallel-backend", "fsdp", "--nproc-per-node", "2", "--checkpointing-policy", "selective"],
         r"--checkpointing-policy selective cannot run under --parallel-backend fsdp: FSDP's activation checkpointing"),
    ],
)
def test_bad_options_fail_before_any_work(extra, message, tiny_llama_dir, chats, tmp_path):
    if extra[:2] == ["--train-type", "qlora"] and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    out = tmp_path / "out"
    result = sft(*base_args(tiny_llama_dir, chats, out), *extra, expect_ok=False)
    assert result.exit_code != 0
    assert __import__("re").search(message, result.output), result.output
    assert "Traceback" not in result.output
    assert not out.exists()


def test_finished_and_unfinished_runs_are_never_overwritten(tiny_llama_dir, chats, tmp_path):
    out = tmp_path / "run"
    sft(*base_args(tiny_llama_dir, chats, out, steps=2))
    record = (out / "tuneforge_run.json").read_text()
    again = sft(*base_args(tiny_llama_dir, chats, out, steps=2), expect_ok=False)
    assert again.exit_code != 0 and "already holds a finished run" in again.output
    assert (out / "tuneforge_run.json").read_text() == record
    unfinished = tmp_path / "unfinished"
    (unfinished / "checkpoint-7").mkdir(parents=True)
    (unfinished / "tuneforge_started.json").write_text('{"run_id": "a"}')  # a tuneforge run, killed after checkpoint-7
    refused = sft(*base_args(tiny_llama_dir, chats, unfinished), expect_ok=False)
    assert "pass --resume" in refused.output and "checkpoint-7" in refused.output


def test_packing_run(tiny_llama_dir, chats, tmp_path):
    out = tmp_path / "packed"
    sft(*base_args(tiny_llama_dir, chats, out, steps=2), "--packing", "--per-device-batch-size", 4)
    assert read_run_record(out).config["packing"] is True


def _sft_process(args, env_extra=None):
    return cli_process("sft", *args, env_extra=env_extra)


@pytest.mark.slow(minutes=3)
def test_killed_run_resumes_to_the_same_final_step(tiny_llama_dir, tmp_path):
    data = write_chats(tmp_path / "chats.jsonl", n=64)
    out = tmp_path / "run"
    args = base_args(tiny_llama_dir, data, out, steps=120) + ["--save-steps", 10, "--save-total-limit", 3, "--max-length", 256]
    process = _sft_process(args)
    deadline = time.time() + 240
    while time.time() < deadline and not (out / "checkpoint-20").is_dir():
        assert process.poll() is None, process.stdout.read()
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (out / "tuneforge_run.json").exists(), "the run finished before it could be interrupted"
    kept = sorted(p.name for p in out.glob("checkpoint-*"))
    assert "checkpoint-20" in kept
    for checkpoint in out.glob("checkpoint-*"):  # every visible checkpoint is whole
        assert (checkpoint / "trainer_state.json").is_file() and (checkpoint / "adapter_model.safetensors").is_file()

    resumed = _sft_process(args + ["--resume"])
    text, _ = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, text
    assert "resuming from" in text
    run = read_run_record(out)
    assert run.train_metrics["global_step"] == 120
    state = json.loads((out / "checkpoint-120" / "trainer_state.json").read_text())
    assert state["global_step"] == 120


def test_ddp_two_processes_on_cpu(tiny_llama_dir, chats, tmp_path):
    out = tmp_path / "ddp"
    process = _sft_process(base_args(tiny_llama_dir, chats, out, steps=2) + ["--parallel-backend", "ddp", "--nproc-per-node", 2, "--device", "cpu"])
    text, _ = process.communicate(timeout=600)
    assert process.returncode == 0, text
    assert "launching 2 processes" in text
    assert read_run_record(out).train_metrics["global_step"] == 2


_step_losses = step_losses


def _two_processes(args, backend):
    return two_processes("sft", args, backend)


FSDP_OFF = {  # what the fsdp backend turns off, in the log and the run record
    "checkpointing_policy": "FSDP's activation checkpointing (accelerate's) recomputes whole decoder layers, "
    "so the selective policy, which keeps the attention output, does not apply",
}


@pytest.mark.slow(minutes=2)
def test_two_processes_train_as_one_with_the_same_global_batch(tiny_llama_dir, chats, tmp_path):
    # 2 processes x 1 row against 1 process x 2 rows: the same rows in each step, so the same losses.
    # fsdp computes the chunked loss (the output weight read gathered), the others the plain one.
    # (fsdp's plain loss: test_training_resume_distributed.)
    args = lambda name: base_args(tiny_llama_dir, chats, tmp_path / name) + ["--device", "cpu", "--seed", 7]  # noqa: E731
    sft(*args("one"), "--per-device-batch-size", 2)
    _two_processes(args("ddp"), "ddp")
    text = _two_processes(args("fsdp") + ["--chunked-loss", "--loss-chunk-size", 16], "fsdp")
    assert "FSDP2: weights, gradients and optimizer state sharded over 2 processes" in text
    assert "loss: chunked, 16 tokens a chunk" in text and "view tensor" not in text
    off = "; ".join(f"--{name.replace('_', '-')} (kept at full): {why}" for name, why in FSDP_OFF.items())
    assert f"[tuneforge] the 'fsdp' backend turns off {off}\n" in text and text.count("backend turns off") == 1
    assert read_run_record(tmp_path / "fsdp").fast_path_off == FSDP_OFF
    assert read_run_record(tmp_path / "ddp").fast_path_off == {}
    expected = _step_losses(tmp_path / "one")
    assert len(expected) == 3
    for name in ("ddp", "fsdp"):
        assert _step_losses(tmp_path / name) == pytest.approx(expected, rel=1e-4), name
    # the main process alone wrote the adapter, whole (gathered from the shards), and it loads like any other
    ddp = load_file(tmp_path / "ddp" / "adapter_model.safetensors")
    fsdp = load_file(tmp_path / "fsdp" / "adapter_model.safetensors")
    assert ddp.keys() == fsdp.keys() and ddp
    for key in ddp:
        assert fsdp[key].shape == ddp[key].shape and torch.allclose(fsdp[key], ddp[key], atol=1e-4), key
    loaded = load_for_inference(str(tmp_path / "fsdp"), device="cpu", torch_dtype="float32")
    assert type(loaded.model).__name__ == "PeftModelForCausalLM"
    assert read_run_record(tmp_path / "fsdp").config["parallel_backend"] == "fsdp"


def test_fsdp_offload_reaches_fsdp2_s_cpu_offload_policy(tmp_path):
    from accelerate.utils import FullyShardedDataParallelPlugin
    from torch.distributed.fsdp import CPUOffloadPolicy
    from transformers import TrainingArguments

    from tuneforge.registry import get_registry
    from tuneforge.testing import sft_config

    fsdp = get_registry().get("parallel_backends", "fsdp")
    policies = {}
    for offload in (False, True):
        (tmp_path / "run.yaml").write_text(f"model: m\nparallel_backend: fsdp\nfsdp_offload: {str(offload).lower()}\n")
        config = sft_config(tmp_path / "run.yaml")
        args = TrainingArguments(output_dir=str(tmp_path / "out"), use_cpu=True, **fsdp.training_args(config))
        policies[offload] = FullyShardedDataParallelPlugin(**args.fsdp_plugin_args).cpu_offload  # what accelerate hands fully_shard
    assert isinstance(policies[True], CPUOffloadPolicy) and not isinstance(policies[False], CPUOffloadPolicy)


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="FSDP2's CPU offload pins host memory for an accelerator: needs 2 CUDA GPUs")
def test_fsdp_offload_takes_the_steps_of_fsdp_on_two_gpus(tiny_llama_dir, chats, tmp_path):
    args = lambda name: base_args(tiny_llama_dir, chats, tmp_path / name) + ["--device", "cuda", "--seed", 7, "--lora-dropout", 0]  # noqa: E731
    _two_processes(args("kept"), "fsdp")
    text = _two_processes(args("offloaded") + ["--fsdp-offload"], "fsdp")
    assert "FSDP2: weights, gradients and optimizer state sharded over 2 processes; the shards in CPU memory" in text
    assert _step_losses(tmp_path / "offloaded") == pytest.approx(_step_losses(tmp_path / "kept"), rel=1e-3)
    assert read_run_record(tmp_path / "offloaded").options["parallel_backends"] == {"name": "fsdp", "options": {"fsdp_offload": True}}


@pytest.mark.slow(minutes=1.5)
def test_fsdp_full_fine_tuning_with_the_chunked_loss_takes_one_process_s_steps_and_saves_a_whole_state_dict(tiny_llama_dir, chats, tmp_path):
    # The output layer trains (tied to the embeddings): its gradient from the chunked loss, computed
    # on the gathered weight, reaches FSDP's reduce-scatter; one process with the plain loss is the reference.
    args = lambda out: base_args(tiny_llama_dir, chats, out, steps=2) + ["--device", "cpu", "--train-type", "full", "--seed", 7]  # noqa: E731
    out, alone = tmp_path / "full", tmp_path / "one"
    sft(*args(alone), "--per-device-batch-size", 2)
    text = _two_processes(args(out) + ["--chunked-loss", "--loss-chunk-size", 16], "fsdp")
    assert "FSDP2" in text and "loss: chunked, 16 tokens a chunk" in text
    expected = _step_losses(alone)
    assert len(expected) == 2 and _step_losses(out) == pytest.approx(expected, rel=1e-4)
    base = load_file(Path(tiny_llama_dir) / "model.safetensors")
    saved, reference = load_file(out / "model.safetensors"), load_file(alone / "model.safetensors")
    assert base.keys() <= saved.keys()
    for key, value in base.items():
        assert saved[key].shape == value.shape, key  # whole tensors, not one process's shard
        assert torch.allclose(saved[key], reference[key], atol=1e-5), key  # the one process's weights
    assert any(not torch.equal(saved[k], base[k]) for k in base)  # trained
    loaded = load_for_inference(str(out), device="cpu", torch_dtype="float32")
    ids = loaded.tokenizer("Hello", return_tensors="pt").input_ids
    assert torch.isfinite(loaded.model(ids).logits).all()
