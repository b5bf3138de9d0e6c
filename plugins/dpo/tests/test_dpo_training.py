"""Each preference method trains a few real steps on a tiny random Llama with SmolLM2's tokenizer."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tuneforge.api import load_for_inference, read_run_record
from tuneforge.testing import checkpoint_with_chat_template, run_cli


def write_pairs(path: Path, n: int = 8) -> Path:
    rows = []
    for i in range(n):
        rows.append({
            "prompt": f"What is {i} plus {i}?",
            "chosen": f"{i} plus {i} is {2 * i}.",
            "rejected": f"It is {2 * i + 1}, I think.",
        })
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    return write_pairs(tmp_path_factory.mktemp("data") / "pairs.jsonl")


@pytest.fixture(scope="module")
def unpaired(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "unpaired.jsonl"
    rows = [
        {"prompt": f"What is {i} plus {i}?", "completion": f"{i} plus {i} is {2 * i}." if i % 2 else f"Maybe {i}.",
         "label": bool(i % 2)}
        for i in range(8)
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def rlhf(method, *args, expect_ok=True):
    result = run_cli("rlhf", "--method", method, *map(str, args), ok=False)
    if expect_ok:
        assert result.exit_code == 0, result.output
    return result


def base_args(model, data, out, steps=2):
    return [
        "--model", model, "--dataset", data, "--output-dir", out, "--max-steps", steps, "--per-device-batch-size", 2,
        "--logging-steps", 1, "--save-steps", 100, "--max-length", 64, "--learning-rate", 1e-2, "--lora-rank", 4,
    ]


def lora_b_weights(path: Path) -> dict:
    return {k: v for k, v in load_file(path / "adapter_model.safetensors").items() if "lora_B" in k}


@pytest.mark.parametrize(
    "method, extra",
    [
        ("dpo", ["--loss-type", "sigmoid", "--label-smoothing", "0.1"]),
        ("dpo", ["--loss-type", "ipo"]),
        ("dpo", ["--loss-type", "hinge"]),
        ("simpo", ["--simpo-gamma", "0.3"]),
        ("cpo", []),
        ("orpo", []),
    ],
)
def test_each_paired_method_trains_and_logs_rewards(method, extra, tiny_llama_dir, pairs, tmp_path):
    out = tmp_path / method
    rlhf(method, *base_args(tiny_llama_dir, pairs, out), *extra)
    run = read_run_record(out)
    assert run.method == method and run.tuner == "lora" and run.base_model == tiny_llama_dir
    assert run.train_metrics["global_step"] == 2
    for key in ("rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies", "logps/chosen"):
        assert isinstance(run.train_metrics[key], float), key
    assert run.data["formats"] == {"preference": 8} and len(run.data["fingerprint"]) == 64
    config = run.config
    if method == "dpo":
        assert config["loss_type"] == extra[1] and run.train_metrics["reference"] == "the starting model (adapter disabled)"
    if method == "simpo":
        assert config["simpo_gamma"] == 0.3 and config["beta"] == 2.0
    # B starts at zero: a real optimizer step moved it
    assert any(v.abs().sum() > 0 for v in lora_b_weights(out).values())
    assert not (out / "ref").exists()


def test_a_template_that_drifts_from_the_checkpoints_stops_rlhf_before_the_weights_load(tiny_llama_dir, pairs, tmp_path):
    from transformers import AutoTokenizer

    # SmolLM2's template adds a default system prompt; the core's chatml does not. The weights cannot load.
    smollm2_template = AutoTokenizer.from_pretrained(tiny_llama_dir).chat_template
    model = checkpoint_with_chat_template(tiny_llama_dir, tmp_path / "model", smollm2_template, garbage_weights=True)
    out = tmp_path / "run"
    result = rlhf("dpo", *base_args(model, pairs, out), "--template", "chatml", expect_ok=False)
    assert result.exit_code == 1, result.output
    assert "lay out conversations differently" in result.output and "--allow-template-drift" in result.output
    assert not out.exists()


def test_kto_trains_on_unpaired_rows(tiny_llama_dir, unpaired, tmp_path):
    out = tmp_path / "kto"
    rlhf("kto", *base_args(tiny_llama_dir, unpaired, out), "--desirable-weight", "1.2")
    run = read_run_record(out)
    assert run.method == "kto" and run.data["formats"] == {"kto-unpaired": 8}
    assert "kl" in run.train_metrics and "rewards/chosen" in run.train_metrics
    assert any(v.abs().sum() > 0 for v in lora_b_weights(out).values())


def test_dpo_with_held_out_pairs_records_before_and_after(tiny_llama_dir, pairs, tmp_path, monkeypatch):
    from tuneforge_dpo.trainers import TuneforgeDPOTrainer

    reference_runs = []
    compute_ref_log_probs = TuneforgeDPOTrainer.compute_ref_log_probs
    monkeypatch.setattr(
        TuneforgeDPOTrainer, "compute_ref_log_probs",
        lambda self, model, inputs: reference_runs.append(len(inputs["input_ids"])) or compute_ref_log_probs(self, model, inputs),
    )
    out = tmp_path / "eval"
    rlhf("dpo", *base_args(tiny_llama_dir, pairs, out, steps=3), "--val-split-ratio", "0.25")
    metrics = read_run_record(out).train_metrics
    # before training the policy is the reference: no margin yet
    assert metrics["eval_start_rewards/margins"] == 0.0
    assert metrics["eval_rewards/margins"] != 0.0
    # the frozen reference scored the 2 held-out pairs (one batch of chosen and rejected) once, for both evaluations
    assert reference_runs == [4]
    # infer needs nothing but the path: the base with the trained adapter
    loaded = load_for_inference(str(out))
    assert type(loaded.model).__name__ == "PeftModelForCausalLM"
    assert list(loaded.model.peft_config) == ["default"]


@pytest.mark.parametrize("train_type", ["full", "dora"])
def test_other_tuners(train_type, tiny_llama_dir, pairs, tmp_path):
    out = tmp_path / train_type
    args = base_args(tiny_llama_dir, pairs, out)
    if train_type == "full":  # --lora-rank is the LoRA tuners' option
        at = args.index("--lora-rank")
        del args[at:at + 2]
    rlhf("dpo", *args, "--train-type", train_type, "--learning-rate", 1e-3)
    run = read_run_record(out)
    assert run.tuner == train_type
    if train_type == "full":
        assert run.train_metrics["reference"] == "a frozen copy of the starting model"
        before = load_file(Path(tiny_llama_dir) / "model.safetensors")
        after = load_file(out / "model.safetensors")
        assert any(not torch.equal(before[k].to(after[k].dtype), after[k]) for k in before)
        assert run.train_metrics["rewards/margins"] != 0.0  # the reference stayed put while the policy moved
    else:
        assert json.loads((out / "adapter_config.json").read_text())["use_dora"] is True


def test_qlora_is_refused_without_a_gpu(tiny_llama_dir, pairs, tmp_path):
    if torch.cuda.is_available():
        pytest.skip("a CUDA machine can run qlora")
    result = rlhf("dpo", *base_args(tiny_llama_dir, pairs, tmp_path / "q"), "--train-type", "qlora", expect_ok=False)
    assert result.exit_code == 1 and "--train-type qlora needs a CUDA GPU" in result.output


def test_qlora_trains_on_a_gpu(tiny_llama_dir, pairs, tmp_path):
    pytest.importorskip("bitsandbytes")
    if not torch.cuda.is_available():
        pytest.skip("qlora needs a CUDA GPU")
    out = tmp_path / "qlora"
    rlhf("dpo", *base_args(tiny_llama_dir, pairs, out), "--train-type", "qlora")
    run = read_run_record(out)
    assert run.tuner == "qlora" and run.train_metrics["reference"] == "the starting model (adapter disabled)"
    assert any(v.abs().sum() > 0 for v in lora_b_weights(out).values())


def test_ref_model_overrides_the_reference(tiny_llama_dir, varied_tiny_dir, pairs, tmp_path):
    out = tmp_path / "ref"
    rlhf("dpo", *base_args(tiny_llama_dir, pairs, out, steps=1), "--ref-model", varied_tiny_dir)
    metrics = read_run_record(out).train_metrics
    assert metrics["reference"] == f"--ref-model {varied_tiny_dir}"
    # another reference scores the pairs differently from the starting policy, so rewards are not 0 at step 1
    assert metrics["rewards/chosen"] != 0.0


def test_a_reference_with_another_vocabulary_is_refused_before_loading(tiny_llama_dir, pairs, tmp_path):
    from tuneforge.testing import tiny_model_dir

    other = tiny_model_dir(tmp_path / "other", vocab_size=1000)
    result = rlhf("dpo", *base_args(tiny_llama_dir, pairs, tmp_path / "r"), "--ref-model", other, expect_ok=False)
    assert result.exit_code == 1
    assert f"--ref-model '{other}' has a vocabulary of 1000 tokens but --model has" in result.output


def test_unpaired_rows_with_dpo_fail_before_any_weights_load(tiny_llama_dir, unpaired, tmp_path):
    result = rlhf("dpo", *base_args(tiny_llama_dir, unpaired, tmp_path / "u"), expect_ok=False)
    assert result.exit_code == 1
    assert f"{unpaired} line " in result.output
    assert ": the row is an unpaired example (prompt, completion, label), but --method dpo needs a chosen" in result.output
    assert not (tmp_path / "u").exists()


def test_continue_from_an_sft_adapter(tiny_llama_dir, pairs, tmp_path):
    chats = tmp_path / "chats.jsonl"
    chats.write_text("".join(
        json.dumps({"messages": [{"role": "user", "content": f"What is {i} plus {i}?"},
                                 {"role": "assistant", "content": f"{i} plus {i} is {2 * i}."}]}) + "\n"
        for i in range(4)
    ))
    sft_out = tmp_path / "sft"
    result = run_cli("sft", *map(str, base_args(tiny_llama_dir, chats, sft_out, steps=1)), ok=False)
    assert result.exit_code == 0, result.output
    out = tmp_path / "dpo"
    rlhf("dpo", *base_args(str(sft_out), pairs, out))
    run = read_run_record(out)
    # the SFT adapter was trained further: the run is still "base + one adapter", infer and export work as usual
    assert run.base_model == tiny_llama_dir and run.config["model"] == str(sft_out)
    assert run.train_metrics["reference"].startswith("the continued adapter")
    before, after = lora_b_weights(sft_out), lora_b_weights(out)
    assert before.keys() == after.keys() and any(not torch.equal(before[k], after[k]) for k in before)
    assert not (out / "ref").exists()
    export = run_cli("export", "--model", str(out), "--merge-lora", "--output-dir", str(tmp_path / "merged"), ok=False)
    assert export.exit_code == 0, export.output
    assert (tmp_path / "merged" / "model.safetensors").is_file()


def test_continue_from_an_sft_adapter_on_a_gpu(tiny_llama_dir, pairs, tmp_path):
    """On CUDA, continuing an SFT adapter loads the model with tuneforge's varlen attention (asked for
    here: preference methods do not pack, so it is not their default) and the fused kernels, as a
    fresh run does (it once failed with 'attn_implementation="tuneforge_varlen" is not supported')."""
    if not torch.cuda.is_available():
        pytest.skip("the CUDA fast path needs a CUDA GPU")
    chats = tmp_path / "chats.jsonl"
    chats.write_text("".join(
        json.dumps({"messages": [{"role": "user", "content": f"What is {i} plus {i}?"},
                                 {"role": "assistant", "content": f"{i} plus {i} is {2 * i}."}]}) + "\n"
        for i in range(8)
    ))
    sft_out, out = tmp_path / "sft", tmp_path / "dpo"
    result = run_cli("sft", *map(str, base_args(tiny_llama_dir, chats, sft_out, steps=2)), ok=False)
    assert result.exit_code == 0, result.output
    # A process of its own: the sft run above registered the attention kernel in this one.
    result = subprocess.run(
        [sys.executable, "-m", "tuneforge.cli", "rlhf", "--method", "dpo", *map(str, base_args(str(sft_out), pairs, out)),
         "--attn-implementation", "tuneforge_varlen"],
        capture_output=True, text=True, timeout=600,
        env={**os.environ, "TUNEFORGE_LOAD_PLUGINS": "dpo"},  # the installed plugin, whatever the test session allows
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "fused:" in result.stderr and "(continued)" in result.stderr, result.stderr[-3000:]
    run = read_run_record(out)
    assert run.config["attn_implementation"] == "tuneforge_varlen" and run.config["packing"] is False
    assert run.train_metrics["reference"].startswith("the continued adapter")
    before, after = lora_b_weights(sft_out), lora_b_weights(out)
    assert before.keys() == after.keys() and any(not torch.equal(before[k], after[k]) for k in before)


def test_continuing_an_adapter_with_another_tuner_is_refused(tiny_llama_dir, pairs, tmp_path):
    first = tmp_path / "first"
    rlhf("dpo", *base_args(tiny_llama_dir, pairs, first, steps=1))
    result = rlhf("dpo", *base_args(str(first), pairs, tmp_path / "second"), "--train-type", "dora", expect_ok=False)
    assert result.exit_code == 1
    assert f"--model '{first}' holds a lora adapter, but --train-type is dora; continue it with --train-type lora" in result.output


def test_an_interrupted_run_resumes_from_its_last_checkpoint(tiny_llama_dir, pairs, tmp_path):
    out = tmp_path / "resumable"
    args = base_args(tiny_llama_dir, pairs, out)
    rlhf("dpo", *args, "--save-steps", 1)
    assert (out / "checkpoint-2").is_dir() and not (out / "checkpoint-2" / "ref").exists()
    # the same run asked for one more step continues from checkpoint-2 instead of starting over
    rlhf("dpo", *args, "--save-steps", 1, "--max-steps", 3, "--resume")
    assert read_run_record(out).train_metrics["global_step"] == 3
    # other data is refused: the checkpoint belongs to the first data
    other = write_pairs(tmp_path / "other.jsonl", n=6)
    result = rlhf("dpo", *base_args(tiny_llama_dir, other, out), "--max-steps", 4, "--resume", expect_ok=False)
    assert result.exit_code == 1 and "The data differs from the data of the run being resumed" in result.output
