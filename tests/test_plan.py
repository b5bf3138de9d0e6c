"""`tuneforge plan`: memory per GPU estimated from a model's config alone, and its recommendation."""

import dataclasses
import json
import re
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import pytest
import torch
import transformers

from tuneforge import hookimpl, plan
from tuneforge.bench.train import SHAPES, model_config
from tuneforge.options import option
from tuneforge.records import ParallelBackend
from tuneforge.registry import get_registry
from tuneforge.testing import plugin_installed, run_cli

DOCS = Path(__file__).parent.parent / "docs"
LORA16 = ["--train-type", "lora", "--lora-rank", 16, "--lora-dropout", 0, "--target-modules", "all-linear"]


def tiny(class_name: str, **fields):
    sizes = dict(vocab_size=97, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, max_position_embeddings=64)
    return getattr(transformers, class_name)(**{**sizes, **fields})


def numel(model) -> int:
    return sum(p.numel() for p in model.parameters())


def plan_json(*args) -> dict:
    return json.loads(run_cli("plan", *args, "--json").output)


# -- parameters, counted from the config --------------------------------------------------------------------


TINY_CONFIGS = [
    tiny("LlamaConfig"),
    tiny("LlamaConfig", attention_bias=True, mlp_bias=True, tie_word_embeddings=True),
    tiny("LlamaConfig", head_dim=16),  # heads x head_dim wider than hidden
    tiny("MistralConfig", num_key_value_heads=1),
    tiny("Qwen2Config", tie_word_embeddings=True),
    tiny("Qwen2Config", tie_word_embeddings=False, num_key_value_heads=4),
    tiny("Qwen3Config", head_dim=8, tie_word_embeddings=False),
    tiny("Qwen3Config", head_dim=8, attention_bias=True, tie_word_embeddings=True),
]


@pytest.mark.parametrize("config", TINY_CONFIGS, ids=lambda c: f"{c.model_type}")
def test_the_parameter_count_equals_the_model_built_from_the_same_config(config):
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(config)
    assert plan.shape_of(config).parameters == numel(model)


def test_the_parameter_count_of_real_shapes_equals_transformers_on_the_meta_device():
    for shape in SHAPES:
        config = model_config(shape)
        with torch.device("meta"):
            model = transformers.AutoModelForCausalLM.from_config(config)
        assert plan.shape_of(config).parameters == numel(model), shape
    assert plan.shape_of(model_config("qwen2.5-7b")).parameters == 7_615_616_512


@pytest.mark.parametrize("targets", [["all-linear"], ["q_proj", "v_proj"]])
def test_the_lora_parameters_equal_peft_s(targets):
    from peft import LoraConfig, get_peft_model

    config = tiny("Qwen2Config")
    model = get_peft_model(transformers.AutoModelForCausalLM.from_config(config),
                           LoraConfig(r=4, target_modules=targets[0] if targets == ["all-linear"] else targets))
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    tuner = get_registry().get("tuners", "lora")
    options = dataclasses.replace(tuner.options(), lora_rank=4, target_modules=targets)
    assert plan.training_of(tuner, options, plan.shape_of(config)).trainable == trainable


def test_a_checkpoint_dir_is_planned_from_its_config_alone(tmp_path):
    """The directory holds config.json and no weights: nothing but the config is read."""
    config = tiny("LlamaConfig", vocab_size=300)
    config.save_pretrained(tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["config.json"]
    result = plan_json("--model", tmp_path, "--train-type", "full", "--gpu-memory", 2)
    assert result["parameters"] == numel(transformers.AutoModelForCausalLM.from_config(config))
    assert result["trainable_parameters"] == result["parameters"]
    assert [r["backend"] for r in result["backends"]] == ["single", "ddp"]
    assert result["left_out"] == {"fsdp": "needs at least 2 processes"}  # as sft refuses it
    assert result["recommendation"]["backend"] == "single"
    assert "safetensors" not in " ".join(p.name for p in tmp_path.iterdir())


def test_a_registered_model_is_resolved_as_sft_resolves_it_and_takes_its_family_s_targets(smollm2_dir):
    config = transformers.AutoConfig.from_pretrained(smollm2_dir)
    with torch.device("meta"):
        model = transformers.AutoModelForCausalLM.from_config(config)
    result = plan_json("--model", "smollm2-135m-instruct", "--train-type", "lora", "--lora-rank", 8)
    assert result["parameters"] == numel(model)
    assert result["lora_targets"] == ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]  # the llama family's


# -- sharding ---------------------------------------------------------------------------------------------------


def test_sharding_divides_what_the_backend_shards_by_the_processes():
    shape = plan.shape_of(model_config("qwen2.5-7b"))
    registry = get_registry()
    full = plan.Training(plan.WHOLE, shape.parameters)
    fsdp, ddp = registry.get("parallel_backends", "fsdp"), registry.get("parallel_backends", "ddp")
    one, four = (plan.estimate(shape, full, fsdp, n, 4096) for n in (1, 4))
    gathered = plan.BF16 * (2 * shape.layer_parameters + shape.outside_layers)  # per GPU, whatever the processes
    reduced = plan.FP32 * shape.layer_parameters  # one layer's unsharded gradients
    assert four.weights - gathered == pytest.approx((one.weights - gathered) / 4)
    assert four.gradients - reduced == pytest.approx((one.gradients - reduced) / 4)
    assert four.optimizer == pytest.approx(one.optimizer / 4)
    assert four.activations == one.activations  # every process trains its own rows
    assert one.weights - gathered == plan.FP32 * shape.parameters  # fsdp's float32 trainable weights
    # ddp holds everything on every process, and its gradients twice (the buckets) beyond one process:
    # float32 master weights by default, bf16 with --pure-bf16.
    pure = plan.Training(plan.WHOLE, shape.parameters, pure_bf16=True)
    for training, width in ((full, plan.FP32), (pure, plan.BF16)):
        single, double = (plan.estimate(shape, training, ddp, n, 4096) for n in (1, 2))
        assert single.weights == double.weights == width * shape.parameters
        assert double.gradients == 2 * single.gradients == 2 * width * shape.parameters
        assert double.optimizer == single.optimizer == 2 * width * shape.parameters
    # The residual stream of float32 embeddings is float32: each checkpointed layer keeps twice the bytes.
    masters, bf16 = (plan.estimate(shape, t, ddp, 1, 4096).activations for t in (full, pure))
    assert masters - bf16 >= shape.num_layers * 4096 * shape.hidden_size * (plan.FP32 - plan.BF16)
    # fsdp keeps float32 weights whatever the option (accelerate's mixed precision), so --pure-bf16 changes nothing there.
    assert plan.estimate(shape, pure, fsdp, 4, 4096) == four


def test_fsdp_offload_leaves_the_shards_off_the_gpu_and_the_plan_follows_what_each_backend_turns_off():
    shape = plan.shape_of(model_config("qwen2.5-7b"))
    full = plan.Training(plan.WHOLE, shape.parameters)
    fsdp = get_registry().get("parallel_backends", "fsdp")
    options = fsdp.options
    kept, offloaded = (plan.estimate(shape, full, fsdp, 2, 4096, options=options(fsdp_offload=on)) for on in (False, True))
    gathered = plan.BF16 * (2 * shape.layer_parameters + shape.outside_layers)  # computed on the GPU either way
    assert offloaded.weights == gathered < kept.weights
    assert offloaded.gradients == plan.FP32 * shape.layer_parameters  # one layer's, before the reduce-scatter
    assert offloaded.optimizer == 0 < kept.optimizer
    assert offloaded.activations == kept.activations
    # fsdp checkpoints whole layers whatever the policy asks, and runs the chunked loss: a sharding backend
    # that declares nothing turns it off, and its plain loss holds the full logits.
    assert plan.estimate(shape, full, fsdp, 2, 4096, policy="selective").activations == kept.activations
    plain_loss = dataclasses.replace(fsdp, name="sharding", fast_path_off=None)
    assert plan.estimate(shape, full, plain_loss, 2, 4096).activations > kept.activations
    args = ["--model", "qwen2.5-7b", "--train-type", "full", "--max-length", 4096, "--nproc-per-node", 2, "--parallel-backend", "fsdp"]
    (row,) = plan_json(*args, "--fsdp-offload", "--checkpointing-policy", "selective")["backends"]
    assert row["optimizer_gib"] == 0 and row["weights_gib"] == pytest.approx(gathered / 2**30, abs=0.01)
    recommended = plan_json(*args, "--fsdp-offload", "--checkpointing-policy", "selective")["recommendation"]["command"]
    assert recommended.endswith("--parallel-backend fsdp --nproc-per-node 2 --fsdp-offload")  # sft would refuse selective


@dataclass
class StageOptions:
    stage: Literal[2, 3] = option(3, "2 shards gradients and optimizer state, 3 the weights too.", group="training")


class ZeroLikePlugin:
    """A plugin's backend whose sharding depends on its own option, as DeepSpeed ZeRO's does."""

    @staticmethod
    @hookimpl
    def tuneforge_parallel_backends():
        yield ParallelBackend(
            name="zero-like",
            description="Shards by stage",
            launch_command=lambda nproc: ["torchrun"] if nproc > 1 else None,
            shards_parameters=True,
            memory_layout=lambda options: {
                "sharded": ("gradients", "optimizer_state") + (("parameters",) if options.stage == 3 else ()),
                "float32_master_weights": True,
            },
            options=StageOptions,
        )


def test_a_plugin_backend_is_estimated_from_its_declared_layout_and_options():
    with plugin_installed(ZeroLikePlugin, "zero-like", "tuneforge-zero-like"):
        listed = plan_json("--model", "qwen2.5-7b", "--train-type", "full", "--nproc-per-node", 4, "--max-length", 1024)
        stage2 = plan_json("--model", "qwen2.5-7b", "--train-type", "full", "--nproc-per-node", 4, "--max-length", 1024,
                           "--parallel-backend", "zero-like", "--stage", 2)
    rows = {r["backend"]: r for r in listed["backends"]}
    assert set(rows) == {"ddp", "fsdp", "zero-like"} and listed["left_out"] == {"single": "runs one process, not 4"}
    zero3, (zero2,) = rows["zero-like"], stage2["backends"]
    assert zero3["sharded"] == ["parameters", "gradients", "optimizer state"]
    assert zero2["sharded"] == ["gradients", "optimizer state"]
    assert zero2["weights_gib"] == pytest.approx(14.19)  # whole bf16 weights: the float32 masters are with the optimizer
    assert rows["ddp"]["weights_gib"] == pytest.approx(28.37)  # the core's float32 master weights, in the module
    assert zero3["weights_gib"] < zero2["weights_gib"] / 2
    # bf16 moments and a float32 master copy (12 bytes a weight), sharded over 4 in both stages
    assert zero2["optimizer_gib"] == zero3["optimizer_gib"] == pytest.approx(7_615_616_512 * 8 / 4 / 2**30, abs=0.01)
    assert stage2["recommendation"]["command"].endswith("--parallel-backend zero-like --nproc-per-node 4 --stage 2")


# -- the recommendation ---------------------------------------------------------------------------------------


def test_the_recommendation_fits_prefers_less_sharding_and_says_when_nothing_fits():
    args = ["--model", "qwen2.5-7b", "--train-type", "full", "--max-length", 4096, "--nproc-per-node", 8]
    roomy = plan_json(*args, "--gpu-memory", 200)
    tight = plan_json(*args, "--gpu-memory", 40)
    totals = {r["backend"]: r["total_gib"] for r in tight["backends"]}
    assert roomy["recommendation"]["backend"] == "ddp"  # fits with room: no sharding needed
    assert totals["ddp"] > 40 > totals["fsdp"]
    assert tight["recommendation"]["backend"] == "fsdp"
    assert tight["recommendation"]["command"] == (
        "tuneforge sft --model qwen2.5-7b --train-type full --max-length 4096 --per-device-batch-size 1 "
        "--parallel-backend fsdp --nproc-per-node 8"
    )
    result = run_cli("plan", *args, "--gpu-memory", 10)
    assert f"No backend fits in 10 GiB per GPU (the smallest, fsdp, needs {totals['fsdp']:.2f})" in result.output
    assert "Recommended" not in result.output
    assert plan_json(*args, "--gpu-memory", 10)["recommendation"] is None


def test_the_table_shows_each_backend_and_what_fits():
    output = run_cli("plan", "--model", "qwen2.5-0.5b", "--train-type", "qlora", "--nproc-per-node", 2,
                     "--gpu-memory", 24).output
    lines = output.splitlines()
    assert lines[3].split() == ["backend", "weights", "gradients", "optimizer", "activations", "total", "fits"]
    assert lines[4].split()[0] == "ddp" and lines[4].split()[-1] == "yes"
    assert "(fsdp: left out, cannot hold the quantized base of --train-type qlora)" in output
    assert "(single: left out, runs one process, not 2)" in output
    assert "Recommended: ddp" in output and "--lora-rank 8 --lora-dropout 0.05" in output


# -- bad input ------------------------------------------------------------------------------------------------


def test_bad_input_fails_with_one_sentence(tmp_path):
    vision = tmp_path / "vl"
    transformers.Qwen2_5_VLConfig().save_pretrained(vision)
    cases = {
        ("--model", "no-such-model"): "Model 'no-such-model' is not a registered model",
        ("--model", "tiny", "--nproc-per-node", 0): "--nproc-per-node is 0; it must be at least 1.",
        ("--model", "tiny", "--train-type", "qlora", "--parallel-backend", "fsdp"): "which --parallel-backend fsdp cannot hold",
        ("--model", "tiny", "--parallel-backend", "single", "--nproc-per-node", 2): "runs one process, not --nproc-per-node 2",
        ("--model", "tiny", "--train-type", "freeze"): "not --train-type freeze",
        ("--model", "tiny", "--target-modules", "wqkv"): "--target-modules wqkv is not a linear layer of this model",
        ("--model", "tiny", "--gpu-memory", -1): "--gpu-memory is -1.0",
        ("--model", vision): "does not estimate vision-language models (model_type 'qwen2_5_vl'",
        ("--train-type", "lora"): "tuneforge plan needs --model",
        ("--model", "tiny", "--train-type", "full", "--pure-bf16", "--parallel-backend", "fsdp", "--nproc-per-node", 2):
            "--pure-bf16 cannot apply under --parallel-backend fsdp",
    }
    for args, sentence in cases.items():
        result = run_cli("plan", *args, ok=False)
        assert result.exit_code != 0, args
        assert sentence in result.output, (args, result.output)
        assert len(result.output.strip().splitlines()) == 1, result.output


# -- the documented comparison with measured peaks -------------------------------------------------------------


ROW = re.compile(r"^\| (?P<run>[^|]+) \| (?P<measured>[\d.]+) \| `(?P<command>tuneforge plan [^`]+)` \| (?P<estimate>[\d.]+) \| (?P<diff>[+-][\d.]+)% \|$")


def test_the_documented_estimates_are_what_the_command_prints_and_within_15_percent_of_the_measured_peaks():
    page = (DOCS / "distributed.md").read_text()
    section = page.split("## Plan before launch")[1].split("\n## ")[0]
    rows = [m.groupdict() for line in section.splitlines() if (m := ROW.match(line))]
    assert len(rows) == 12
    performance = (DOCS / "performance.md").read_text()
    for row in rows:
        measured, estimate = float(row["measured"]), float(row["estimate"])
        assert f"{measured:.2f}" in performance, row["run"]  # the peak is the one docs/performance.md reports
        args = shlex.split(row["command"])[2:]
        (backend,) = plan_json(*args)["backends"]
        assert backend["allocated_gib"] == estimate, row["command"]
        assert f"{100 * (estimate / measured - 1):+.1f}" == row["diff"], row["run"]
        assert abs(estimate / measured - 1) <= 0.15, row["run"]


def test_the_documented_example_is_what_the_command_prints():
    section = (DOCS / "distributed.md").read_text().split("## Plan before launch")[1]
    command, printed = re.search(r"```\n(tuneforge plan [^\n]+)\n```\n```\n(.*?)\n```", section, re.S).groups()
    output = run_cli(*shlex.split(command)[1:], "--gpu-memory", 80).output
    documented = printed.replace("80 GiB (no GPU visible, so an H100's; --gpu-memory to change)", "80 GiB (--gpu-memory)")
    assert output.strip() == documented.strip()



def test_a_backend_that_turns_the_asked_policy_off_says_how_it_was_estimated():
    args = ["--model", "qwen2.5-7b", "--train-type", "full", "--max-length", 4096, "--nproc-per-node", 2, "--gpu-memory", 200]
    selective = plan_json(*args, "--checkpointing-policy", "selective")
    assert set(selective["notes"]) == {"fsdp"}  # ddp keeps the selective policy
    assert selective["notes"]["fsdp"].startswith("estimated with full checkpointing, not selective: FSDP's activation checkpointing")
    output = run_cli("plan", *args, "--checkpointing-policy", "selective").output
    assert "(fsdp: estimated with full checkpointing, not selective: " in output
    assert plan_json(*args)["notes"] == {}  # nothing to say when full checkpointing was asked
