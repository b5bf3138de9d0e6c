"""Options belong to the record that uses them: a command's flags and YAML keys are its own
plus those of the tuner, device, backend, engine, exporter or method the invocation selects."""

import dataclasses
import json
from dataclasses import dataclass

import pytest
from click.testing import CliRunner

import tuneforge
from tuneforge.cli import cli
from tuneforge.config import SFTConfig
from tuneforge.options import OptionError, build, option, selected_options
from tuneforge.records import Tuner
from tuneforge.testing import plugin_installed


def invoke(*args):
    return CliRunner().invoke(cli, [*map(str, args)])


def flags(output: str) -> set[str]:
    return {line.split()[0] for line in output.splitlines() if line.startswith("  --")}


# -- a tuner's options ---------------------------------------------------------------


def test_sft_help_shows_the_selected_tuner_s_options_only():
    lora = invoke("sft", "--train-type", "lora", "--help")
    assert lora.exit_code == 0, lora.output
    assert {"--lora-rank", "--lora-alpha", "--lora-dropout", "--target-modules", "--fused-lora"} <= flags(lora.output)
    assert "The options of the 'lora' tuner" in " ".join(lora.output.split())
    assert "--trainable-modules" not in lora.output

    full = invoke("sft", "--train-type", "full", "--help")
    assert full.exit_code == 0, full.output
    assert "--lora-rank" not in full.output and "--fused-lora" not in full.output and "--trainable-modules" not in full.output

    freeze = invoke("sft", "--train-type=freeze", "--help")
    assert "--trainable-modules" in freeze.output and "--lora-rank" not in freeze.output
    # The shared options are there whatever the tuner.
    assert {"--learning-rate", "--packing", "--train-type"} <= flags(full.output) & flags(freeze.output)


def test_the_tuner_named_in_the_yaml_file_selects_the_flags(tmp_path):
    config_file = tmp_path / "run.yaml"
    config_file.write_text("train-type: freeze\n")
    result = invoke("sft", str(config_file), "--help")
    assert "--trainable-modules" in result.output and "--lora-rank" not in result.output


def test_a_lora_key_with_another_tuner_is_one_sentence_naming_its_owner(tmp_path):
    expected = (
        "Option 'lora_rank' belongs to the tuner 'lora', but this invocation selects the tuner 'full'; "
        "pass --train-type lora or dora or qlora, or leave 'lora_rank' out."
    )
    result = invoke("sft", "--train-type", "full", "--lora-rank", 4)
    assert result.exit_code == 2
    assert expected in " ".join(result.output.split())

    config_file = tmp_path / "run.yaml"
    config_file.write_text("train_type: full\nlora_rank: 4\n")
    result = invoke("sft", str(config_file))
    assert result.exit_code == 2 and expected in " ".join(result.output.split())
    with pytest.raises(OptionError, match="^" + expected.replace("(", r"\(").replace(")", r"\)") + "$"):
        build(SFTConfig, {"train_type": "full", "lora_rank": 4})


def test_yaml_keys_of_the_selected_tuner_build_the_config():
    config = build(SFTConfig, {"train_type": "dora", "lora_rank": 32, "target_modules": "q_proj"}, {"lora_alpha": 8})
    assert isinstance(config, SFTConfig)
    assert (config.lora_rank, config.lora_alpha, config.target_modules) == (32, 8, ["q_proj"])
    assert not hasattr(build(SFTConfig, {"train_type": "full"}), "lora_rank")
    assert build(SFTConfig, {"train_type": "freeze", "trainable_modules": ["lm_head"]}).trainable_modules == ["lm_head"]
    # One class per selection: configs of the same selection compare as values.
    assert build(SFTConfig, {"lora_rank": 4}) == build(SFTConfig, {"lora-rank": 4})


def test_sft_config_keeps_model_data_and_training_options_only():
    names = {f.name for f in dataclasses.fields(SFTConfig)}
    moved = {"lora_rank", "lora_alpha", "lora_dropout", "target_modules", "fused_lora", "trainable_modules",
             "fused_norm", "fused_swiglu", "fused_rope", "chunked_loss", "loss_chunk_size"}
    assert not names & moved
    assert {"packing", "gradient_checkpointing", "train_type", "device", "parallel_backend"} <= names


# -- a device's options ------------------------------------------------------------------


def test_the_device_s_switches_are_its_options():
    config = build(SFTConfig, {"device": "cpu", "fused_norm": True, "loss_chunk_size": 64})
    assert (config.fused_norm, config.loss_chunk_size) == (True, 64)
    chosen = selected_options(config)
    assert chosen["devices"] == {
        "name": "cpu",
        "options": {"fused_norm": True, "fused_swiglu": None, "fused_rope": None, "chunked_loss": None, "loss_chunk_size": 64},
    }
    help_text = invoke("sft", "--device", "cpu", "--help").output
    assert "--fused-norm" in help_text and "--loss-chunk-size" in help_text
    assert "The options of the 'lora' tuner, the 'cpu' device" in " ".join(help_text.split())


class DevicePlugin:
    """A device that offers no switches, and one whose options clash with the LoRA tuners'."""

    @tuneforge.hookimpl
    def tuneforge_devices(self):
        from tuneforge.records import Device

        @dataclass
        class ClashingOptions:
            lora_rank: int = option(2, "A device option with a LoRA option's name.")

        yield Device(name="plain", description="No switches", torch_device="cpu", is_available=lambda: True, options=None)
        yield Device(name="clash", description="Clashes", torch_device="cpu", is_available=lambda: True, options=ClashingOptions)


@pytest.fixture
def devices():
    with plugin_installed(DevicePlugin(), "devices-test", "tuneforge-devices-test") as manager:
        yield manager


def test_a_device_without_options_offers_no_switches(devices):
    assert "--fused-norm" not in invoke("sft", "--device", "plain", "--help").output
    config = build(SFTConfig, {"device": "plain"})
    assert not hasattr(config, "fused_norm") and selected_options(config)["devices"] == {"name": "plain", "options": {}}
    result = invoke("sft", "--device", "plain", "--fused-norm")
    assert result.exit_code == 2
    assert "Option 'fused_norm' belongs to the device 'cpu', but this invocation selects the device 'plain'" in " ".join(result.output.split())


def test_two_selected_records_declaring_one_option_is_a_sentence_naming_both(devices):
    expected = "Option 'lora_rank' is declared by both the tuner 'lora' and the device 'clash'; the plugin providing the device 'clash' must rename it."
    with pytest.raises(OptionError, match="^" + expected.replace("(", r"\(") + "$"):
        build(SFTConfig, {"device": "clash"})
    result = invoke("sft", "--device", "clash", "--help")
    assert result.exit_code != 0 and expected in " ".join(result.output.split())
    assert build(SFTConfig, {"device": "clash", "train_type": "full"}).lora_rank == 2  # no clash without LoRA


# -- a plugin tuner's options reach it ------------------------------------------------------


SEEN = []


@dataclass
class StripeOptions:
    stripes: int = option(3, "How many stripes to train.", group="tuner")


class StripePlugin:
    @tuneforge.hookimpl
    def tuneforge_tuners(self):
        def prepare(model, config):
            SEEN.append(config.stripes)
            return model

        yield Tuner(name="stripe", description="Trains stripes", prepare=prepare, options=StripeOptions)


def test_a_plugin_tuner_s_options_are_flags_and_reach_it():
    with plugin_installed(StripePlugin(), "stripe", "tuneforge-stripe"):
        result = invoke("sft", "--train-type", "stripe", "--help")
        assert "--stripes INTEGER" in result.output and "--lora-rank" not in result.output
        config = build(SFTConfig, {"train_type": "stripe"}, {"stripes": 5})
        SEEN.clear()
        from tuneforge.registry import get_registry

        get_registry().get("tuners", "stripe").prepare(object(), config)
        assert SEEN == [5]
        assert selected_options(config)["tuners"] == {"name": "stripe", "options": {"stripes": 5}}


# -- the run record -----------------------------------------------------------------------


def test_a_training_run_s_config_gives_the_tuner_s_and_device_s_options(tiny_llama_dir, tmp_path):
    """What sft hands its method: a composed config whose selected_options name the tuner and the device."""
    seen = []

    class Capture:
        @tuneforge.hookimpl
        def tuneforge_training_methods(self):
            from tuneforge.records import TrainingMethod

            yield TrainingMethod(name="capture", description="capture", options=SFTConfig, run=seen.append)

    with plugin_installed(Capture(), "capture", "tuneforge-capture"):
        result = invoke("rlhf", "--method", "capture", "--model", tiny_llama_dir, "--lora-rank", 4, "--device", "cpu",
                        "--no-fused-norm")
        assert result.exit_code == 0, result.output
    (config,) = seen
    chosen = selected_options(config)
    assert chosen["tuners"]["name"] == "lora" and chosen["tuners"]["options"]["lora_rank"] == 4
    assert chosen["devices"]["name"] == "cpu" and chosen["devices"]["options"]["fused_norm"] is False
    assert chosen["parallel_backends"] == {"name": "single", "options": {}}
    json.dumps(chosen)  # what the run record stores


def test_the_configuration_reference_is_current_and_lists_each_record_s_options():
    from pathlib import Path

    from tuneforge.docgen import render

    page = (Path(__file__).parent.parent / "docs" / "config.md").read_text()
    assert page == render(), "docs/config.md is stale: run `python -m tuneforge.docgen > docs/config.md`"
    assert "### tuners `dora`, `lora`, `qlora` (`--train-type NAME`)" in page
    assert "| `lora_rank` | `--lora-rank` |" in page.split("### tuners")[1]
    assert "| `lora_rank` |" not in page.split("## `tuneforge infer`")[0].split("### tuners")[0]
