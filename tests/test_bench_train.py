"""`tuneforge bench train` on the tiny shape on a CPU: the sft path against plain transformers + peft."""

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from tuneforge.bench import train as bench
from tuneforge.cli import cli


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def run(*args):
    return CliRunner().invoke(cli, ["bench", "train", *map(str, args)], catch_exceptions=False)


def test_tiny_run_reports_tuneforge_and_both_comparisons(tmp_path):
    output = tmp_path / "bench.json"
    result = run("--shape", "tiny", "--device", "cpu", "--samples-per-step", 3, "--steps", 2, "--warmup-steps", 1,
                 "--packing", "--chunked-loss", "--attn-implementation", "tuneforge_varlen",
                 "--compare", "hf", "--compare", "hf-packed", "--compare-micro-batch", 2, "--output", output)
    assert result.exit_code == 0, result.output
    report = json.loads(output.read_text())
    assert [r["runner"] for r in report["runs"]] == ["tuneforge", "hf", "hf-packed"]
    lengths = bench.sample_lengths(9, 0)
    timed = sum(lengths[3:])  # the same samples, after the warm-up step
    assert report["timed_sample_tokens"] == timed
    for r in report["runs"]:
        assert r["timed_steps"] == 2 and r["tokens_per_s"] > 0 and r["model_tflops_per_s"] > 0
        assert r["settings"]["lora_rank"] == 16 and r["settings"]["target_modules"] == ["all-linear"]
    tuneforge, hf, packed = report["runs"]
    assert hf["tokens"] == packed["tokens"] == timed  # real tokens only, padding not counted
    assert 0 < tuneforge["tokens"] < sum(lengths)  # the trainer draws its own order: six of the nine samples
    s = tuneforge["settings"]
    assert (s["packing"], s["chunked_loss"], s["attn_implementation"]) == (True, True, "tuneforge_varlen")
    assert hf["settings"]["packing"] is False and packed["settings"]["packing"] is True
    assert hf["trainable_parameters"] == tuneforge["trainable_parameters"]
    assert "tuneforge_speedup" in hf
    assert report["peak_tflops"] is None and tuneforge["mfu"] is None  # no known peak on a CPU
    assert "tokens/s" in result.output and "hf-packed" in result.output


@pytest.mark.slow(minutes=1)
def test_one_and_two_processes_take_the_same_steps_and_are_plotted(tmp_path):
    # One torchrun job per count, gloo on the CPU: 2 samples a step, 1 per process in the 2-process run.
    from PIL import Image

    output = tmp_path / "scaling.json"
    result = run("--shape", "tiny", "--device", "cpu", "--samples-per-step", 2, "--sample-length", 16, "--steps", 2,
                 "--warmup-steps", 1, "--nproc-per-node", "1,2", "--parallel-backend", "ddp", "--output", output)
    assert result.exit_code == 0, result.output
    report = json.loads(output.read_text())
    one, two = report["runs"]
    assert (one["processes"], two["processes"]) == (1, 2) and "error" not in one and "error" not in two
    assert two["settings"]["per_device_batch_size"] == 1 and two["settings"]["samples_per_step"] == 2
    assert len(one["losses"]) == len(two["losses"]) == 3  # every step, the warm-up's included
    assert two["losses"] == pytest.approx(one["losses"], rel=1e-4)  # the same global batch: the same steps
    assert one["tokens"] == two["tokens"] == 2 * 2 * 16  # the timed steps' samples, counted over both ranks
    assert two["tokens_per_rank"] == [32, 32]
    assert two["tokens_per_s_per_device"] == pytest.approx(two["tokens_per_s"] / 2)
    assert two["speedup"] == pytest.approx(two["tokens_per_s"] / one["tokens_per_s"]) and one["speedup"] == 1.0
    assert two["scaling_efficiency"] == pytest.approx(two["speedup"] / 2)
    assert one["peak_allocated_gib"] is None and "n/a" in result.output  # no memory statistics on a CPU
    assert report["speedup_base_processes"] == 1 and "x1.00 100%" in result.output
    with Image.open(tmp_path / "scaling-loss.png") as image:
        assert image.format == "PNG" and image.size == bench.PLOT_SIZE
        colours = {colour for _, colour in image.getcolors(maxcolors=100_000)}
    assert set(bench.PLOT_COLOURS[:2]) <= colours  # one colour for each count


def test_length_mix_is_seeded_and_chat_length():
    lengths = bench.sample_lengths(2000, 0)
    assert lengths == bench.sample_lengths(2000, 0) and lengths != bench.sample_lengths(2000, 1)
    assert min(lengths) >= 32 and max(lengths) <= 4096
    assert 900 < sum(lengths) / len(lengths) < 1100
    assert bench.sample_lengths(3, 0, fixed=50) == [50, 50, 50]
    samples = bench.synthetic_samples([10], 100, 0)
    assert samples[0]["labels"][:3] == [-100] * 3 and samples[0]["labels"][3:] == samples[0]["input_ids"][3:]


@pytest.mark.parametrize("shape", ["qwen2.5-0.5b", "qwen2.5-7b", "qwen3-8b", "llama3-8b"])
def test_shapes_have_their_published_sizes(shape):
    config = bench.model_config(shape)
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    billions = sum(p.numel() for p in model.parameters()) / 1e9
    expected = {"qwen2.5-0.5b": 0.49, "qwen2.5-7b": 7.62, "qwen3-8b": 8.19, "llama3-8b": 8.03}[shape]
    assert abs(billions - expected) < 0.02, billions


def test_flops_count_lora_as_four_and_full_as_six_per_weight():
    config = bench.model_config("qwen2.5-7b")
    lora, lora_hw = bench.flops_per_step(config, [1000], trainable=0, base_trains=False, recompute=True)
    full, _ = bench.flops_per_step(config, [1000], trainable=0, base_trains=True, recompute=False)
    assert 1000 * 4 * 7.0e9 < lora < 1000 * 4 * 7.3e9
    assert full > lora and lora_hw > lora


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--steps", "0"], "--steps is 0; it must be at least 1."),
        (["--compare", "swift"], "--compare 'swift' is unknown; choose from hf, hf-packed, ms-swift."),
        (["--compare", "ms-swift", "--samples-per-step", "4", "--compare-micro-batch", "3"],
         "--samples-per-step 4 is not a multiple of --compare-micro-batch 3, which ms-swift needs"),
        (["--sample-length", "1"], "--sample-length is 1; give at least 2 tokens"),
        (["--shape", "qwen9"], "'qwen9' is not one of"),
        (["--nproc-per-node", "0,2", "--parallel-backend", "ddp"], "--nproc-per-node has 0; each count must be at least 1."),
        (["--nproc-per-node", "2"], "--parallel-backend single runs one process, but --nproc-per-node asks for 2"),
        (["--nproc-per-node", "1,2", "--parallel-backend", "fsdp"], "--parallel-backend fsdp needs at least 2 processes, but --nproc-per-node has 1"),
        (["--nproc-per-node", "2", "--parallel-backend", "ddp", "--samples-per-step", "3"],
         "--samples-per-step 3 does not split evenly over the 2 processes of --nproc-per-node 2"),
        (["--nproc-per-node", "2", "--parallel-backend", "nccl"], "Unknown parallel backend 'nccl'"),
        (["--nproc-per-node", "2", "--parallel-backend", "ddp", "--compare", "hf"], "--compare runs its comparisons in one process"),
    ],
)
def test_bad_options_fail_in_one_sentence(args, message, tmp_path):
    result = run("--device", "cpu", "--output", tmp_path / "x.json", *args)
    assert result.exit_code != 0 and message in result.output
    assert not (tmp_path / "x.json").exists()


def test_more_processes_than_visible_gpus_fail_before_any_launch(monkeypatch, tmp_path):
    # No GPU here: the CUDA device record stands in, with one GPU visible.
    from tuneforge import modeling
    from tuneforge.registry import get_registry

    cuda = get_registry().get("devices", "cuda")
    monkeypatch.setattr(modeling, "pick_device", lambda name=None: cuda)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    result = run("--nproc-per-node", "1,2", "--parallel-backend", "ddp", "--output", tmp_path / "x.json")
    assert result.exit_code != 0
    assert "--nproc-per-node 2 asks for more cuda devices than the 1 visible here; give counts up to 1" in result.output
    assert "launching" not in result.output and not (tmp_path / "x.json").exists()


# The README's test command installs ms-swift and the versions it pins here (core/tuneforge/bench/ms-swift-requirements.txt).
MS_SWIFT = Path(__file__).resolve().parents[1] / ".ms-swift"


@pytest.mark.skipif(not (MS_SWIFT / "swift").is_dir(), reason=f"ms-swift is not installed in {MS_SWIFT} (see the README's test command)")
def test_ms_swift_trains_the_same_samples_in_its_own_process(tmp_path):
    output = tmp_path / "bench.json"
    result = run("--shape", "tiny", "--device", "cpu", "--samples-per-step", 4, "--steps", 2, "--warmup-steps", 1,
                 "--compare", "hf", "--compare", "ms-swift", "--compare-micro-batch", 2, "--ms-swift-path", MS_SWIFT,
                 "--output", output)
    assert result.exit_code == 0, result.output
    report = json.loads(output.read_text())
    assert [r["runner"] for r in report["runs"]] == ["tuneforge", "hf", "ms-swift"]
    tuneforge, hf, swift = report["runs"]
    assert "error" not in swift, swift.get("error")
    timed = sum(bench.sample_lengths(12, 0)[4:])
    assert swift["tokens"] == hf["tokens"] == report["timed_sample_tokens"] == timed  # the same samples, in order
    assert swift["timed_steps"] == 2 and swift["tokens_per_s"] > 0 and swift["model_tflops_per_s"] > 0
    assert swift["trainable_parameters"] == tuneforge["trainable_parameters"]  # the same LoRA on the same layers
    s = swift["settings"]
    assert (s["lora_rank"], s["lora_alpha"], s["target_modules"]) == (16, 32, ["all-linear"])
    assert (s["samples_per_step"], s["micro_batch"], s["packing"], s["attn_implementation"]) == (4, 2, False, "sdpa")
    versions = s["ms_swift"]["versions"]
    assert versions["ms-swift"] == "4.6.0" and versions["peft"] == "0.20.0"  # its own pins, not this process's
    assert s["ms_swift"]["train_dataloader_shuffle"] is False and s["ms_swift"]["group_by_length"] is False
    assert swift["peak_allocated_gib"] is None and "tuneforge_speedup" in swift
    assert "ms-swift" in result.output


def test_ms_swift_that_cannot_be_imported_fails_before_any_model_is_built(tmp_path):
    broken = tmp_path / "target"
    (broken / "swift").mkdir(parents=True)
    (broken / "swift" / "__init__.py").write_text("raise ImportError('a broken install')\n")
    result = run("--device", "cpu", "--compare", "ms-swift", "--ms-swift-path", broken, "--output", tmp_path / "x.json")
    assert result.exit_code != 0
    assert f"ms-swift cannot be imported with --ms-swift-path {broken} (ImportError: a broken install)" in result.output
    assert "pip install --no-deps --upgrade --target DIR -r" in result.output and "ms-swift-requirements.txt" in result.output
    assert "[bench] tuneforge" not in result.output and not (tmp_path / "x.json").exists()


@pytest.mark.parametrize("shape", ["qwen2.5-0.5b", "qwen3-8b", "llama3-8b"])
def test_a_model_built_layer_by_layer_is_laid_out_as_from_config_builds_it(shape):
    """The 4-bit benchmark builds the decoder one layer at a time (a 72B shape's bf16 weights never whole)."""
    from transformers import AutoModelForCausalLM

    from tuneforge.bench.train import build_layer_by_layer, model_config

    config = model_config(shape)  # the real shape's layout, made small
    for name, value in dict(num_hidden_layers=2, hidden_size=128, intermediate_size=256, vocab_size=300,
                            num_attention_heads=4, num_key_value_heads=2, head_dim=32).items():
        setattr(config, name, value)
    finished = []
    built = build_layer_by_layer(config, torch.bfloat16, "cpu", "sdpa", lambda layer: finished.append(layer) or layer)
    reference = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    layout = lambda model: {k: (tuple(v.shape), v.dtype) for k, v in model.state_dict().items()}  # noqa: E731
    assert layout(built) == layout(reference)
    assert finished == list(built.model.layers)  # each layer handed over once, in order
    for (name, mine), (_, theirs) in zip(built.named_buffers(), reference.named_buffers()):
        torch.testing.assert_close(mine, theirs, msg=name)  # the rotary frequencies
    q = built.model.layers[1].self_attn.q_proj.weight.float()
    assert abs(q.std().item() - config.initializer_range) < 0.003 and (built.model.norm.weight == 1).all()
    assert (built.lm_head.weight is built.model.embed_tokens.weight) is bool(config.tie_word_embeddings)
    ids = torch.randint(0, 300, (1, 12))
    assert torch.isfinite(built(input_ids=ids, labels=ids).loss)
