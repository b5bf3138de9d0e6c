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


# -- an engine's options -------------------------------------------------------------------


CREATED = []


@dataclass
class ParrotOptions:
    volume: int = option(5, "How loud the parrot answers.", group="engine")
    accent: str = option("plain", "Which accent.", group="engine")


class ParrotEngine:
    def __init__(self, model, **options):
        CREATED.append((model, options))

    def generate(self, requests):
        from tuneforge.inference import Completion

        return [[Completion(text="squawk", token_ids=[], finish_reason="stop", prompt_tokens=0, completion_tokens=0)]
                for _ in requests]

    def stream(self, request):
        yield "squawk"

    def close(self):
        pass


class ParrotPlugin:
    @tuneforge.hookimpl
    def tuneforge_inference_engines(self):
        from tuneforge.records import InferenceEngine

        yield InferenceEngine(name="parrot", description="Squawks", create=ParrotEngine, options=ParrotOptions,
                              common_options=("batch_size",))


@pytest.fixture
def parrot():
    with plugin_installed(ParrotPlugin(), "parrot", "tuneforge-parrot") as manager:
        CREATED.clear()
        yield manager


@pytest.mark.parametrize("command", ["infer", "eval", "deploy"])
def test_an_engine_s_options_are_real_flags_of_every_command_that_selects_it(parrot, command):
    result = invoke(command, "--engine", "parrot", "--help")
    assert result.exit_code == 0, result.output
    assert "--volume INTEGER" in result.output and "How loud the parrot answers." in result.output
    assert "--compile / --no-compile" not in result.output  # pt's option
    pt = invoke(command, "--help").output  # pt is the default engine
    assert "--compile / --no-compile" in pt and "--volume" not in pt


def test_the_engine_receives_its_options(parrot, tiny_llama_dir, tmp_path):
    requests = tmp_path / "r.jsonl"
    requests.write_text(json.dumps({"messages": [{"role": "user", "content": "hi"}]}) + "\n")
    config_file = tmp_path / "infer.yaml"
    config_file.write_text("engine: parrot\naccent: pirate\n")
    result = invoke("infer", str(config_file), "--model", tiny_llama_dir, "--input", requests, "--volume", 11,
                    "--batch-size", 2)
    assert result.exit_code == 0, result.output
    ((bundle, options),) = CREATED
    assert bundle.spec == tiny_llama_dir and options == {"batch_size": 2, "volume": 11, "accent": "pirate"}
    assert json.loads(result.stdout)["answer"] == "squawk"

    result = invoke("infer", "--engine", "pt", "--volume", 11)
    assert result.exit_code == 2
    assert ("Option 'volume' belongs to the inference engine 'parrot', but this invocation selects the inference "
            "engine 'pt'; pass --engine parrot, or leave 'volume' out.") in " ".join(result.output.split())


def test_engine_option_is_a_deprecated_alias_checked_against_the_engine_s_options(parrot, tiny_llama_dir, tmp_path):
    requests = tmp_path / "r.jsonl"
    requests.write_text(json.dumps({"messages": [{"role": "user", "content": "hi"}]}) + "\n")
    result = invoke("infer", "--engine", "parrot", "--model", tiny_llama_dir, "--input", requests,
                    "--engine-option", "volume=3", "--engine-option", "accent=parrot")
    assert result.exit_code == 0, result.output
    assert "warning: --engine-option volume=3 is deprecated; pass --volume 3 instead." in result.stderr
    assert [options for _, options in CREATED] == [{"volume": 3, "accent": "parrot"}]

    result = invoke("infer", "--engine", "parrot", "--model", "m", "--engine-option", "compile=true")
    assert result.exit_code == 2
    assert ("Inference engine 'parrot' does not take the option 'compile'; it takes: batch_size, volume, accent. "
            "Leave that option out or pick another engine.") in " ".join(result.output.split())
    assert "pass --compile instead" in invoke("infer", "--engine-option", "compile=true", "--model", "m", "--input",
                                             tmp_path / "missing.jsonl").stderr


# -- an exporter's options ------------------------------------------------------------------


EXPORTED = []


@dataclass
class GlowOptions:
    shine: float = option(0.5, "How much the export shines.")


class GlowPlugin:
    @tuneforge.hookimpl
    def tuneforge_exporters(self):
        from tuneforge.records import Exporter

        def export(model_dir, output_dir, options):
            EXPORTED.append(dict(options))
            from pathlib import Path

            (Path(output_dir) / "glow.txt").write_text("glowing")
            return output_dir

        yield Exporter(name="glow", description="Glows", export=export, options=GlowOptions)


def test_export_format_selects_the_exporter_and_its_options(tiny_llama_dir, tmp_path):
    merged = invoke("export", "--format", "merged", "--help").output
    assert "--format TEXT" in merged and "--shine" not in merged
    with plugin_installed(GlowPlugin(), "glow", "tuneforge-glow"):
        result = invoke("export", "--format", "glow", "--help")
        assert "--shine FLOAT" in result.output and "How much the export shines." in result.output
        EXPORTED.clear()
        result = invoke("export", "--format", "glow", "--model", tiny_llama_dir, "--output-dir", tmp_path / "out", "--shine", 0.9)
        assert result.exit_code == 0, result.output
        assert (tmp_path / "out" / "glow.txt").read_text() == "glowing"
        assert EXPORTED[0]["shine"] == 0.9 and EXPORTED[0]["torch_dtype"] == "auto"

        result = invoke("export", "--exporter", "glow", "--model", tiny_llama_dir, "--output-dir", tmp_path / "again")
        assert result.exit_code == 0, result.output
        assert "warning: --exporter is deprecated; pass --format glow instead." in result.stderr
        assert EXPORTED[-1]["shine"] == 0.5


def test_merged_names_the_built_in_merge_exporter_and_merge_lora_still_works(tmp_path):
    from tuneforge.config import ExportConfig
    from tuneforge.registry import get_registry

    assert get_registry().get("exporters", "merged") is get_registry().get("exporters", "merge-lora")
    assert build(ExportConfig, {"model": "m", "output_dir": "o"}).format == "merged"
    result = invoke("export", "--merge-lora", "--model", tmp_path / "missing", "--output-dir", tmp_path / "out")
    assert "warning: --merge-lora is deprecated; pass --format merged instead." in result.stderr
    assert f"--model '{tmp_path / 'missing'}' does not exist" in result.output  # it got as far as the exporter
    result = invoke("export", "--merge-lora", "--exporter", "glow", "--model", "m", "--output-dir", "o")
    assert result.exit_code == 2
    assert "--merge-lora and --exporter 'glow' ask for different exporters; pass only one of them." in result.output


# -- commands are records ------------------------------------------------------------------


GREETED = []


@dataclass
class GreetOptions:
    __tuneforge_selects__ = {"train_type": "tuners"}

    who: str = option("world", "Who to greet.")
    train_type: str = option("lora", "A tuner, whose options the command then takes.")


class GreetPlugin:
    @tuneforge.hookimpl
    def tuneforge_cli_commands(self):
        from tuneforge.records import Command

        yield Command(name="greet", description="Greet someone. CONFIG_FILE: optional YAML.", options=GreetOptions,
                      run=GREETED.append)


class SftPlugin:
    @tuneforge.hookimpl
    def tuneforge_cli_commands(self):
        from tuneforge.records import Command

        yield Command(name="sft", description="Not the core's sft.", options=GreetOptions, run=GREETED.append)
        yield Command(name="hello", description="Say hello.", options=GreetOptions, run=GREETED.append)


class BrokenCommands:
    @tuneforge.hookimpl
    def tuneforge_cli_commands(self):
        raise RuntimeError("the commands hook broke")


def test_a_plugin_command_record_is_built_like_the_core_s(tmp_path):
    with plugin_installed(GreetPlugin(), "greet", "tuneforge-greet"):
        help_text = invoke("--help").output
        assert "greet" in help_text and "Greet someone." in help_text
        greet_help = invoke("greet", "--train-type", "lora", "--help").output
        assert "--who TEXT" in greet_help and "--lora-rank" in greet_help  # its selected tuner's options too

        config_file = tmp_path / "greet.yaml"
        config_file.write_text("who: YAML\nlora_rank: 2\n")
        GREETED.clear()
        result = invoke("greet", str(config_file), "--who", "flags")
        assert result.exit_code == 0, result.output
        (config,) = GREETED
        assert (config.who, config.lora_rank) == ("flags", 2)



def test_a_plugin_command_named_like_the_core_s_leaves_the_core_s_working():
    with plugin_installed(SftPlugin(), "sft-again", "tuneforge-sft-again"):
        listing = invoke("--help")  # loads the plugins' commands
        assert listing.exit_code == 0 and "Conflicting plugins for command 'sft': provided by tuneforge-sft-again" in listing.stderr
        result = invoke("sft", "--help")
        assert result.exit_code == 0 and "Supervised fine-tuning." in result.output
        # The clash takes only that command away: the plugin's other command works.
        assert "hello" in listing.output
        GREETED.clear()
        result = invoke("hello", "--who", "there")
        assert result.exit_code == 0, result.output
        assert [config.who for config in GREETED] == ["there"]


def test_a_plugin_whose_commands_hook_raises_is_set_aside_and_the_rest_works():
    with plugin_installed(BrokenCommands(), "broken", "tuneforge-broken"):
        result = invoke("--help")
        assert result.exit_code == 0, result.output
        assert "plugin 'broken' from tuneforge-broken" in result.stderr and "the commands hook broke" in result.stderr
        assert "sft" in result.output and "export" in result.output
        assert invoke("sft", "--train-type", "full", "--help").exit_code == 0
