"""``tuneforge bench-vl``: the tiny shape trained through the sft path on the CPU, what it counts, its refusals."""

import json

import pytest

from tuneforge.testing import run_cli
from tuneforge_vl import bench

TINY_RUN = ["--shape", "tiny", "--device", "cpu", "--megapixels", "0.02", "--images-per-sample", "2", "--text-tokens", "24",
            "--samples-per-step", "2", "--steps", "2", "--warmup-steps", "0"]


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    """One sweep of the tiny shape (unpacked and packed, tower frozen and trained), every step timed."""
    import tuneforge_vl.plugin
    from tuneforge.testing import plugin_installed

    output = tmp_path_factory.mktemp("bench") / "bench-vl.json"
    with plugin_installed(tuneforge_vl.plugin, "vl", "tuneforge-vl"):
        result = run_cli("bench-vl", *TINY_RUN, "--sweep", "--output", output)
    return json.loads(output.read_text()), result.output


def test_the_sweep_runs_every_setting_and_prints_a_table(report):
    data, output = report
    runs = data["runs"]
    assert [(r["settings"]["packing"], r["settings"]["freeze_vision_tower"]) for r in runs] == [
        (False, True), (True, True), (False, False), (True, False)
    ]
    assert all("error" not in r for r in runs)
    assert "tokens/s" in output and "images/s" in output and output.count("2 x 0.02 MP") == 4
    assert data["shape"] == "tiny" and data["options"]["sweep"] is True and data["complete"] is True
    # The vision tower's attention is in each run's settings and the table: sdpa on the CPU (one call a window).
    assert {r["settings"]["vision_attn_implementation"] for r in runs} == {"sdpa"}
    assert output.count("(vision tower sdpa)") == 4


def test_counts_match_what_was_fed(report):
    data, _ = report
    for run in data["runs"]:
        # Every step timed (no warm-up): the real tokens are those of every sample fed, padding left out.
        assert run["timed_steps"] == 2 and run["timed_samples"] == run["samples"] == 4
        assert run["tokens"] == sum(run["sample_tokens"])
        assert run["images"] == 4 * 2
        # A 0.02 MP 4:3 image (163 x 122) is resized to 168 x 112 pixels: 12 x 8 patches of 14, 6 x 4 = 24 image tokens.
        assert run["image_size"] == [163, 122] and run["resized_to"] == [168, 112]
        assert run["image_tokens_per_image"] == [24, 24]
        assert run["image_tokens"] == 24 * run["images"]
        assert run["text_tokens"] == run["tokens"] - run["image_tokens"] > 0
        assert run["tokens_per_s"] > 0 and run["images_per_s"] > 0


def test_packing_is_reported_as_the_batches_were(report):
    data, _ = report
    for run in data["runs"]:
        # Each step is one forward pass: one row when the collator packed the samples, one row a sample when it padded them.
        assert run["forwards"] == 2
        assert run["packed"] == (run["rows"] == 2)
        # Qwen-VL's samples with pictures pack: --packing gives one row a step, --no-packing a row a sample.
        assert run["packed"] is run["settings"]["packing"]
        assert run["rows"] == (2 if run["settings"]["packing"] else 4)


def test_training_the_vision_tower_adds_its_weights_to_the_trainable_ones(report):
    from tuneforge_vl.bench import TINY

    data, _ = report
    frozen = {r["trainable_parameters"] for r in data["runs"] if r["settings"]["freeze_vision_tower"]}
    trained = {r["trainable_parameters"] for r in data["runs"] if not r["settings"]["freeze_vision_tower"]}
    assert len(frozen) == len(trained) == 1
    (frozen,), (trained,) = frozen, trained
    # LoRA r16 on the 2 language layers' 7 linear layers: 16 x (in + out) each.
    text = TINY["text"]
    hidden, inter, kv = text["hidden_size"], text["intermediate_size"], text["hidden_size"] // text["num_attention_heads"] * text["num_key_value_heads"]
    per_layer = 16 * ((hidden + hidden) * 2 + (hidden + kv) * 2 + (hidden + inter) * 2 + (inter + hidden))
    assert frozen == text["num_hidden_layers"] * per_layer
    assert trained > frozen  # the tower (not its merger, the aligner, frozen) trains whole beside the adapters


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--megapixels", "0"], "--megapixels 0.0 makes an image smaller than one image token"),
        (["--megapixels", "20"], "--megapixels 20.0 makes 5164 x 3873 images, more than --max-pixels 12845056"),
        (["--megapixels", "big"], "Option 'megapixels' must be a number, not 'big'"),
        (["--images-per-sample", "0"], "--images-per-sample is 0; it must be at least 1."),
        (["--steps", "0"], "--steps is 0; it must be at least 1."),
        (["--warmup-steps", "-1"], "--warmup-steps is -1; it must be 0 or more."),
        (["--min-pixels", "100"], "--min-pixels is 100; give at least 784"),
        (["--tokenizer", "/no/such/folder"], "--tokenizer '/no/such/folder' is not a folder"),
    ],
)
def test_bad_options_are_refused_in_one_sentence_before_any_model_is_built(manager, args, message, tmp_path, monkeypatch):
    def never(*args, **kwargs):
        raise AssertionError("a model folder was written")

    monkeypatch.setattr(bench, "write_model_folder", never)
    result = run_cli("bench-vl", "--shape", "tiny", "--output", tmp_path / "r.json", *args, ok=False)
    assert result.exit_code != 0
    assert message in result.output
    assert not (tmp_path / "r.json").exists()


def test_the_7b_shape_is_qwen2_5_vl_7b(smollm2_dir):
    """The configuration has Qwen2.5-VL-7B-Instruct's sizes: 8.29 billion parameters, 677 million in the vision tower."""
    import torch
    from transformers import AutoModelForImageTextToText

    from tuneforge_vl.testing.qwen_vl import qwen_vl_tokenizer

    config = bench._config("qwen2.5-vl-7b", qwen_vl_tokenizer(smollm2_dir))
    with torch.device("meta"):
        model = AutoModelForImageTextToText.from_config(config)
    assert sum(p.numel() for p in model.parameters()) == 8_292_166_656
    assert sum(p.numel() for p in model.model.visual.parameters()) == 676_550_144
    assert config.text_config.vocab_size == 152064 and config.vision_config.out_hidden_size == config.text_config.hidden_size


def test_images_are_seeded_and_of_the_asked_size(tmp_path):
    first = bench.synthetic_image(tmp_path / "a.jpg", 1.0, seed=3)
    again = bench.synthetic_image(tmp_path / "b.jpg", 1.0, seed=3)
    other = bench.synthetic_image(tmp_path / "c.jpg", 1.0, seed=4)
    assert first == again == other == (1155, 866)
    assert (tmp_path / "a.jpg").read_bytes() == (tmp_path / "b.jpg").read_bytes() != (tmp_path / "c.jpg").read_bytes()
