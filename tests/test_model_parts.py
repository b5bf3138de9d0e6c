"""--freeze-language-model / --freeze-vision-tower / --freeze-aligner on the tiny Idefics3 of
tuneforge.testing.vlm: what trains per part under LoRA and full fine-tuning, a LoRA run with a
trained aligner saved and reproduced by infer and `export --format merged`, and the sentences
for combinations that cannot work (before any weights load)."""

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from safetensors import safe_open

import tuneforge.testing.vlm_plugin as vlm_plugin
from tuneforge import parts
from tuneforge.cli import cli
from tuneforge.config import SFTConfig
from tuneforge.errors import TuneforgeError
from tuneforge.options import build
from tuneforge.registry import get_registry
from tuneforge.testing import plugin_installed
from tuneforge.testing.vlm import image_data_url, image_file, tiny_vlm_dir

QUESTION = "What colour is the picture?"


@pytest.fixture(scope="module")
def vlm_dir(tmp_path_factory):
    return tiny_vlm_dir(tmp_path_factory.mktemp("vlm") / "tiny-vlm")


@pytest.fixture
def vlm():
    with plugin_installed(vlm_plugin, "tiny-vlm", "tuneforge-tiny-vlm") as manager:
        yield manager


def load(vlm_dir):
    from transformers import AutoModelForImageTextToText

    return AutoModelForImageTextToText.from_pretrained(vlm_dir, dtype=torch.float32)


def part_sizes(vlm_dir) -> dict[str, int]:
    family = get_registry().get("model_families", "tiny-vlm")
    plan = parts.PartPlan(prefixes=family.parts.prefixes(), frozen={})
    sizes = {"language_model": 0, "vision_tower": 0, "aligner": 0}
    for name, parameter in load(vlm_dir).named_parameters():
        sizes[plan.owner(name)] += parameter.numel()
    return sizes


# (flags, what each part does under lora, under full): "lora" adapted, "whole" trained whole, "-" frozen; a str: the sentence.
ALL_FROZEN = "Every part of the model is frozen"
NO_LORA_PART = "With --freeze-language-model LoRA has no part to adapt"
COMBINATIONS = [
    ({}, ("lora", "-", "-"), ("whole", "-", "-")),
    ({"freeze_aligner": False}, ("lora", "-", "whole"), ("whole", "-", "whole")),
    ({"freeze_vision_tower": False}, ("lora", "whole", "-"), ("whole", "whole", "-")),
    ({"freeze_vision_tower": False, "freeze_aligner": False}, ("lora", "whole", "whole"), ("whole", "whole", "whole")),
    ({"freeze_language_model": True}, ALL_FROZEN, ALL_FROZEN),
    ({"freeze_language_model": True, "freeze_aligner": False}, NO_LORA_PART, ("-", "-", "whole")),
    ({"freeze_language_model": True, "freeze_vision_tower": False}, NO_LORA_PART, ("-", "whole", "-")),
    ({"freeze_language_model": True, "freeze_vision_tower": False, "freeze_aligner": False}, NO_LORA_PART, ("-", "whole", "whole")),
    ({"freeze_language_model": False, "freeze_vision_tower": True, "freeze_aligner": True}, ("lora", "-", "-"), ("whole", "-", "-")),
]


@pytest.mark.parametrize("train_type", ["lora", "full"])
@pytest.mark.parametrize("flags,under_lora,under_full", COMBINATIONS, ids=[json.dumps(c[0]) for c in COMBINATIONS])
def test_trainable_parameters_per_part(vlm, vlm_dir, train_type, flags, under_lora, under_full):
    expected = under_lora if train_type == "lora" else under_full
    config = build(SFTConfig, {"model": vlm_dir, "train_type": train_type, **flags})
    family = get_registry().get("model_families", "tiny-vlm")
    if isinstance(expected, str):
        with pytest.raises(TuneforgeError, match=expected):
            parts.check(config, family)  # what the run calls before any weights load
        return
    parts.check(config, family)
    model = get_registry().get("tuners", train_type).prepare(load(vlm_dir), config)
    plan = parts.plan(config, family.parts, family.name)
    counts = parts.trainable_by_part(model, plan)
    sizes = part_sizes(vlm_dir)
    for part, how in zip(("language_model", "vision_tower", "aligner"), expected):
        if how == "-":
            assert counts[part] == 0, (part, counts)
        elif how == "whole":
            assert counts[part] == sizes[part], (part, counts, sizes)
        else:
            assert 0 < counts[part] < sizes[part] // 10, (part, counts, sizes)
            trained = [n for n, p in model.named_parameters() if p.requires_grad and plan.owner(parts.original_name(n)) == part]
            assert all("lora_" in name for name in trained), trained[:3]


def test_lora_targets_chosen_per_part(vlm, vlm_dir):
    """--target-parts puts LoRA on the vision tower too; vision_tower:NAME picks its modules, the plain names the language model's."""
    config = build(SFTConfig, {
        "model": vlm_dir, "train_type": "lora", "target_parts": ["language_model", "vision_tower"],
        "target_modules": ["q_proj", "vision_tower:fc1"],
    })
    model = get_registry().get("tuners", "lora").prepare(load(vlm_dir), config)
    adapted = sorted({parts.original_name(n).rsplit(".lora_", 1)[0] for n, p in model.named_parameters() if p.requires_grad})
    assert adapted == ["model.text_model.layers.0.self_attn.q_proj", "model.text_model.layers.1.self_attn.q_proj", "model.vision_model.encoder.layers.0.mlp.fc1"]


def test_lora_on_the_aligner_alone(vlm, vlm_dir):
    config = build(SFTConfig, {"model": vlm_dir, "train_type": "lora", "freeze_language_model": True, "target_parts": ["aligner"]})
    model = get_registry().get("tuners", "lora").prepare(load(vlm_dir), config)
    trained = {parts.original_name(n).split(".lora_")[0] for n, p in model.named_parameters() if p.requires_grad}
    assert trained == {"model.connector.modality_projection.proj"}


# -- a LoRA run with a trained aligner -----------------------------------------------------------------------------


def sft(*args):
    return CliRunner().invoke(cli, ["sft", *map(str, args)], catch_exceptions=False)


def write_rows(folder: Path) -> Path:
    rows = []
    for name, colour, answer in (("red", (220, 20, 20), "Red."), ("blue", (20, 20, 220), "Blue.")):
        url = image_file(folder / f"{name}.png", colour)
        content = [{"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": QUESTION}]
        rows.append({"messages": [{"role": "user", "content": content}, {"role": "assistant", "content": answer}]})
    path = folder / "pictures.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def train_args(model, data, out, *extra):
    return [
        "--model", model, "--dataset", data, "--output-dir", out, "--max-steps", 3, "--learning-rate", 1e-2,
        "--per-device-batch-size", 2, "--logging-steps", 1, "--save-steps", 1000, "--max-length", 64, "--seed", 0, *extra,
    ]


def logits_of(loaded, bundle):
    messages = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": image_data_url((200, 30, 30))}}, {"type": "text", "text": QUESTION}]}]
    ids = torch.tensor([bundle.template.prompt(messages)])
    extras = bundle.template.prompt_extras(messages)
    with torch.no_grad():
        return loaded.model(input_ids=ids, **extras).logits


def test_a_lora_run_with_a_trained_aligner_saves_it_and_infer_and_export_reproduce_it(vlm, vlm_dir, tmp_path):
    from tuneforge.modeling import load_for_inference, resolve_bundle

    data = write_rows(tmp_path)
    out = tmp_path / "out"
    result = sft(*train_args(vlm_dir, data, out, "--train-type", "lora", "--no-freeze-aligner"))
    assert result.exit_code == 0, result.output
    run = json.loads((out / "tuneforge_run.json").read_text())
    assert run["options"]["tuners"]["options"]["freeze_aligner"] is False
    with safe_open(str(out / "adapter_model.safetensors"), "pt") as weights:
        names = list(weights.keys())
    assert any("connector" in name and "lora_" not in name for name in names), names
    assert any(".text_model." in name and "lora_A" in name for name in names)
    assert not any("vision_model" in name for name in names)

    export = CliRunner().invoke(cli, ["export", "--model", str(out), "--format", "merged", "--output-dir", str(tmp_path / "merged")], catch_exceptions=False)
    assert export.exit_code == 0, export.output

    bundle = resolve_bundle(str(out))
    served = logits_of(load_for_inference(bundle, device="cpu", torch_dtype="float32"), bundle)
    merged_bundle = resolve_bundle(str(tmp_path / "merged"))
    merged = logits_of(load_for_inference(merged_bundle, device="cpu", torch_dtype="float32"), merged_bundle)
    base = logits_of(load_for_inference(resolve_bundle(vlm_dir), device="cpu", torch_dtype="float32"), bundle)
    assert torch.allclose(served, merged, atol=1e-4), (served - merged).abs().max()
    assert not torch.allclose(served, base, atol=1e-3)
    # The merged checkpoint carries the trained aligner, not the base's.
    from safetensors.torch import load_file

    before, after = load_file(Path(vlm_dir) / "model.safetensors"), load_file(tmp_path / "merged" / "model.safetensors")
    connector = [name for name in before if "connector" in name]
    assert connector and all(not before[name].equal(after[name]) for name in connector)
    vision = [name for name in before if "vision_model" in name]
    assert vision and all(before[name].equal(after[name]) for name in vision)


def test_continuing_an_adapter_refuses_flags_that_would_change_its_parts(vlm, vlm_dir, tmp_path):
    """rlhf continues the adapter of an adapter run (the dpo plugin's methods): its parts are the adapter's."""
    pytest.importorskip("tuneforge_dpo")
    import tuneforge_dpo.plugin

    data = write_rows(tmp_path)
    first = tmp_path / "first"
    assert sft(*train_args(vlm_dir, data, first, "--train-type", "lora", "--max-steps", 1)).exit_code == 0
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps({"prompt": f"{i} plus {i}?", "chosen": f"{2 * i}.", "rejected": f"{2 * i + 1}."}) + "\n" for i in range(4)))
    with plugin_installed(vlm_plugin, "tiny-vlm", "tuneforge-tiny-vlm", also=[(tuneforge_dpo.plugin, "dpo", "tuneforge-dpo")]):
        result = CliRunner().invoke(
            cli, ["rlhf", "--method", "dpo", *map(str, train_args(first, pairs, tmp_path / "second", "--no-freeze-aligner"))],
            catch_exceptions=False,
        )
    assert result.exit_code != 0
    assert (
        f"--no-freeze-aligner cannot change which parts train when continuing the adapter of --model '{first}' "
        f"(it trains the parts it was made with); leave it out, or start a new adapter from its base model, --model '{vlm_dir}'."
    ) in result.output
    assert "loading " not in result.output and not (tmp_path / "second" / "tuneforge_run.json").exists()


# -- combinations that cannot work: one sentence, before the weights load -------------------------------------------


@pytest.mark.parametrize(
    "extra,sentence",
    [
        (["--train-type", "lora", "--freeze-language-model"], "Every part of the model is frozen: language_model (--freeze-language-model), vision_tower (by default), aligner (by default); nothing would train, so pass --no-freeze-aligner."),
        (["--train-type", "full", "--freeze-language-model", "--freeze-aligner", "--freeze-vision-tower"], "Every part of the model is frozen"),
        (["--train-type", "lora", "--freeze-language-model", "--no-freeze-aligner"], "With --freeze-language-model LoRA has no part to adapt (aligner would train whole); name the parts LoRA adapts with --target-parts (vision_tower, aligner), or train the aligner with --train-type full."),
        (["--train-type", "lora", "--target-parts", "aligner", "--freeze-aligner"], "--target-parts names aligner for LoRA, but --freeze-aligner freezes it; drop one of the two."),
        (["--train-type", "lora", "--target-modules", "aligner:proj"], "--target-modules 'aligner:proj' chooses LoRA's modules in the aligner, which LoRA does not adapt here; add --target-parts aligner"),
        (["--train-type", "lora", "--target-modules", "projector:proj"], "--target-modules 'projector:proj' is not PART:NAME with a part this model has (language_model, vision_tower, aligner)"),
    ],
)
def test_a_combination_that_cannot_train_is_refused_before_loading(vlm, vlm_dir, tmp_path, extra, sentence):
    data = write_rows(tmp_path)
    result = sft(*train_args(vlm_dir, data, tmp_path / "out", *extra))
    assert result.exit_code != 0
    assert sentence in result.output
    assert "loading " not in result.output  # the training log's line before the weights load
    assert not (tmp_path / "out" / "tuneforge_run.json").exists()


def test_a_freeze_flag_on_a_text_model_is_refused(tiny_llama_dir, tmp_path):
    data = tmp_path / "chat.jsonl"
    data.write_text(json.dumps({"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}]}) + "\n")
    result = sft(*train_args(tiny_llama_dir, data, tmp_path / "out", "--freeze-vision-tower"))
    assert result.exit_code != 0
    assert "--freeze-vision-tower applies to a model whose family names its parts (a vision-language model), and the family 'llama' names none; leave it out." in result.output
    assert "loading " not in result.output


def test_trainable_parts_still_works_and_names_the_new_flags(vlm, vlm_dir, tmp_path):
    data = write_rows(tmp_path)
    result = sft(*train_args(vlm_dir, data, tmp_path / "out", "--train-type", "freeze", "--trainable-parts", "aligner", "--max-steps", 1))
    assert result.exit_code == 0, result.output
    assert "--trainable-parts is deprecated; pass --train-type full --freeze-language-model --freeze-vision-tower --no-freeze-aligner instead." in result.output
