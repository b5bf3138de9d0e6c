"""Options are declared once: YAML and flags both derive from the dataclasses, and bad input fails early."""

import dataclasses
import os
import subprocess
import sys
from dataclasses import dataclass
from typing import Literal, Optional

import click
import pytest
from click.testing import CliRunner
from test_plugins import TUNEFORGE

import tuneforge
from tuneforge import options
from tuneforge.cli import cli
from tuneforge.config import ExportConfig, SFTConfig
from tuneforge.options import OptionError, build, option
from tuneforge.plugins import PluginManager, reset_plugin_manager
from tuneforge.records import TrainingMethod
from tuneforge.selection import compose_for


@dataclass
class Sample:
    name: str = option(help="Required: no default.")
    steps: int = option(10, "Steps.")
    rate: float = option(0.1, "Rate.")
    mode: Literal["fast", "slow"] = option("fast", "Mode.", group="sampling")
    limit: Optional[int] = option(None, "Limit.")
    tags: list[str] = option(["base"], "Tags.")
    sizes: list[int] = option([], "Sizes.")
    verbose: bool = option(False, "Verbose.")
    engine: str = option("pt", "Engine.", choices=("pt", "vllm"))


# -- build(): YAML mapping + flags -------------------------------------------------


def test_flags_win_over_yaml_and_defaults_fill_the_rest():
    config = build(Sample, {"name": "from-yaml", "steps": 5, "rate": 0.5}, {"steps": 7})
    assert (config.name, config.steps, config.rate, config.mode, config.tags) == ("from-yaml", 7, 0.5, "fast", ["base"])


def test_list_defaults_are_not_shared_between_configs():
    first = build(Sample, {"name": "a"})
    first.tags.append("mutated")
    assert build(Sample, {"name": "b"}).tags == ["base"]


def test_dashed_keys_are_accepted():
    assert build(SFTConfig, {"lora-rank": 32}).lora_rank == 32


def test_unknown_key_is_named_with_a_did_you_mean():
    with pytest.raises(OptionError) as caught:
        build(SFTConfig, {"lerning_rate": 1e-4})
    assert str(caught.value) == (
        "Unknown option 'lerning_rate'. Did you mean 'learning_rate'? See `--help` for the options this command takes."
    )


def test_unknown_key_without_a_close_match():
    with pytest.raises(OptionError, match=r"^Unknown option 'zzz'\. See `--help`"):
        build(SFTConfig, {"zzz": 1})


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("steps", "many", "Option 'steps' must be an integer, not 'many' (str)."),
        ("steps", 2.5, "Option 'steps' must be an integer, not 2.5 (float)."),
        ("steps", True, "Option 'steps' must be an integer, not True (bool)."),
        ("rate", "fast", "Option 'rate' must be a number, not 'fast' (str)."),
        ("verbose", "maybe", "Option 'verbose' must be true or false, not 'maybe' (str)."),
        ("verbose", 1, "Option 'verbose' must be true or false, not 1 (int)."),
        ("name", ["a"], "Option 'name' must be a string, not ['a'] (list)."),
        ("limit", "none", "Option 'limit' must be an integer or null, not 'none' (str)."),
        ("tags", {"a": 1}, "Option 'tags' must be a list of strings, not {'a': 1} (dict)."),
        ("steps", None, "Option 'steps' cannot be null; give an integer."),
    ],
)
def test_wrong_types_name_the_key(key, value, message):
    values = {"name": "x", key: value}
    with pytest.raises(OptionError) as caught:
        build(Sample, values)
    assert str(caught.value) == message


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("steps", "12", 12),
        ("steps", 3.0, 3),
        ("rate", "1e-4", 1e-4),  # PyYAML reads 1e-4 as a string
        ("rate", 2, 2.0),
        ("verbose", "yes", True),
        ("verbose", "false", False),
        ("limit", None, None),
        ("name", 123, "123"),
    ],
)
def test_values_that_convert(key, value, expected):
    assert getattr(build(Sample, {"name": "x", key: value}), key) == expected


def test_literal_choices():
    assert build(Sample, {"name": "x", "mode": "slow"}).mode == "slow"
    with pytest.raises(OptionError) as caught:
        build(Sample, {"name": "x", "mode": "slo"})
    assert str(caught.value) == "Option 'mode' is 'slo'; choose one of fast, slow. Did you mean 'slow'?"


def test_literal_choices_of_the_real_config():
    assert build(SFTConfig, {"torch_dtype": "bfloat16"}).torch_dtype == "bfloat16"
    with pytest.raises(OptionError, match=r"^Option 'torch_dtype' is 'float64'; choose one of auto, float32, bfloat16, float16\."):
        build(SFTConfig, {"torch_dtype": "float64"})


def test_literal_of_numbers_accepts_the_flag_string():
    @dataclass
    class Bits:
        bits: Literal[4, 8] = option(4, "Bits.")

    assert build(Bits, {"bits": "8"}).bits == 8
    assert build(Bits, {"bits": 8}).bits == 8
    with pytest.raises(OptionError, match=r"^Option 'bits' is 3; choose one of 4, 8\."):
        build(Bits, {"bits": 3})


def test_string_choices():
    assert build(Sample, {"name": "x", "engine": "vllm"}).engine == "vllm"
    with pytest.raises(OptionError, match=r"^Option 'engine' is 'vlm'; choose one of pt, vllm\. Did you mean 'vllm'\?$"):
        build(Sample, {"name": "x", "engine": "vlm"})


@pytest.mark.parametrize(
    ("value", "expected"),
    [("one.jsonl", ["one.jsonl"]), (["a.jsonl", "b.jsonl"], ["a.jsonl", "b.jsonl"]), ([], [])],
    ids=["scalar", "list", "empty"],
)
def test_list_options_take_a_scalar_or_a_list(value, expected):
    assert build(SFTConfig, {"dataset": value}).dataset == expected


def test_list_items_are_converted():
    assert build(Sample, {"name": "x", "sizes": ["1", 2]}).sizes == [1, 2]
    assert build(Sample, {"name": "x", "sizes": 3}).sizes == [3]
    with pytest.raises(OptionError, match=r"^Option 'sizes' must be an integer, not 'big' \(str\)\.$"):
        build(Sample, {"name": "x", "sizes": ["big"]})


def test_required_options():
    with pytest.raises(OptionError) as caught:
        build(Sample, {"steps": 1})
    assert str(caught.value) == "Option 'name' is required; pass --name or set it in the YAML file."
    with pytest.raises(OptionError, match=r"^Option 'model' is required; pass --model"):
        build(ExportConfig, {"output_dir": "out"})


def test_load_yaml_errors(tmp_path):
    with pytest.raises(OptionError, match=r"^Config file '.*missing.yaml' does not exist; pass the path of a YAML file\.$"):
        options.load_yaml(tmp_path / "missing.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("model: [unclosed\n")
    with pytest.raises(OptionError, match=r"^Config file '.*broken.yaml' is not valid YAML"):
        options.load_yaml(broken)
    listed = tmp_path / "list.yaml"
    listed.write_text("- model\n")
    with pytest.raises(OptionError, match=r"must hold a mapping of option names to values\.$"):
        options.load_yaml(listed)
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    assert options.load_yaml(empty) == {}


# -- click_options(): flags derived from the same fields ---------------------------


@click.command()
@options.click_options(Sample)
def sample_command(**values):
    click.echo(repr(dataclasses.astuple(build(Sample, options.given(values)))))


def run_sample(*args):
    return CliRunner().invoke(sample_command, list(args))


def test_every_field_becomes_a_flag():
    flags = {param.opts[0] for param in sample_command.params}
    assert flags == {options.flag_name(f) for f in dataclasses.fields(Sample)}


def test_flags_parse_into_the_dataclass():
    result = run_sample("--name", "n", "--steps", "3", "--mode", "slow", "--tags", "a", "--tags", "b", "--verbose", "--sizes", "4")
    assert result.exit_code == 0, result.output
    assert result.output == repr(("n", 3, 0.1, "slow", None, ["a", "b"], [4], True, "pt")) + "\n"


def test_bool_flags_have_a_negative_form():
    assert run_sample("--name", "n", "--no-verbose").output.endswith("False, 'pt')\n")
    assert "--verbose / --no-verbose" in run_sample("--help").output


def test_flags_not_given_leave_the_defaults():
    assert run_sample("--name", "n").output == repr(("n", 10, 0.1, "fast", None, ["base"], [], False, "pt")) + "\n"


def test_bad_flags_fail_in_click_naming_the_flag():
    result = run_sample("--name", "n", "--mode", "medium")
    assert result.exit_code == 2 and "Invalid value for '--mode': 'medium' is not one of 'fast', 'slow'." in result.output
    result = run_sample("--name", "n", "--steps", "ten")
    assert result.exit_code == 2 and "Invalid value for '--steps': 'ten' is not a valid integer." in result.output
    result = run_sample("--name", "n", "--engine", "tgi")
    assert result.exit_code == 2 and "Invalid value for '--engine'" in result.output


def test_a_missing_required_flag_is_named():
    result = run_sample("--steps", "1")
    assert result.exit_code == 2
    assert "Error: Option 'name' is required; pass --name or set it in the YAML file." in result.output


def test_help_groups_plugin_groups_before_general_and_shows_list_defaults():
    text = run_sample("--help").output
    assert text.index("--mode") < text.index("--steps")  # 'sampling' (a group of its own) before 'general'
    assert "Tags. (repeatable)  [default: base]" in text


# -- the real `tuneforge sft` ------------------------------------------------------


def test_sft_help_lists_every_option_once():
    result = subprocess.run([TUNEFORGE, "sft", "--help"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    declared = [line.split()[0] for line in result.stdout.splitlines() if line.startswith("  --")]
    composed = compose_for(SFTConfig, {})  # the command's options and those of the default tuner and device
    hints = options._field_types(composed)
    expected = []
    for field in dataclasses.fields(composed):
        flag = options.flag_name(field)
        kind, _ = options._unwrap_optional(hints[field.name])
        expected.append(flag)
        if kind is bool:
            assert f"  {flag} / --no-{flag[2:]}" in result.stdout
    assert sorted(declared) == sorted(expected + ["--help"])

    text = " ".join(result.stdout.split())  # undo click's wrapping
    squashed = "".join(result.stdout.split())  # ... including a wrap after a hyphen
    for field in dataclasses.fields(composed):
        assert "".join(field.metadata["help"].split()) in squashed
    assert "--torch-dtype [auto|float32|bfloat16|float16]" in text
    assert "--truncation [drop|left|right]" in text
    assert "(repeatable)[default:meeting-minutes]" in squashed


@pytest.fixture
def captured_sft():
    """An `sft` training method that records the config it is given instead of training."""
    seen = []

    class CaptureSFT:
        @tuneforge.hookimpl
        def tuneforge_training_methods(self):
            yield TrainingMethod(name="sft", description="capture", options=SFTConfig, run=seen.append)

    from tuneforge.builtin import tuners

    manager = PluginManager()  # no built-in plugins, so this `sft` is the only one
    manager.register_plugin(CaptureSFT(), "capture", "capture-dist", "1.0")
    manager.register_plugin(tuners, "tuners", "tuneforge", "1.0", builtin=True)  # LoRA's options are the lora tuner's
    reset_plugin_manager(manager)
    yield seen
    reset_plugin_manager()


def test_sft_merges_the_yaml_file_and_flags(tmp_path, captured_sft):
    config_file = tmp_path / "run.yaml"
    config_file.write_text(
        "lora_rank: 16\nlearning-rate: 1.0e-4\ndataset: one.jsonl\npacking: true\nmax_steps: 3\ntarget_modules: q_proj\n"
    )

    result = CliRunner().invoke(cli, [
        "sft", str(config_file), "--lora-rank", "4", "--dataset", "a.jsonl", "--dataset", "b.jsonl", "--no-packing",
    ])

    assert result.exit_code == 0, result.output
    (config,) = captured_sft
    assert isinstance(config, SFTConfig)
    assert config.lora_rank == 4  # flag over YAML
    assert config.dataset == ["a.jsonl", "b.jsonl"]  # repeated flag replaces the YAML list
    assert config.packing is False  # --no-packing over `packing: true`
    assert config.learning_rate == 1e-4 and config.max_steps == 3  # YAML over defaults
    assert config.target_modules == ["q_proj"]  # a YAML scalar for a list option
    assert config.lora_alpha == 16 and config.torch_dtype == "auto"  # defaults


def test_sft_without_a_file_takes_the_defaults(captured_sft):
    result = CliRunner().invoke(cli, ["sft", "--packing"])
    assert result.exit_code == 0, result.output
    (config,) = captured_sft
    assert config.packing is True
    assert dataclasses.replace(config, packing=None) == build(SFTConfig, {})


@pytest.mark.parametrize(
    ("yaml_text", "message"),
    [
        ("lerning_rate: 0.001\n", "Error: Unknown option 'lerning_rate'. Did you mean 'learning_rate'?"),
        ("lora_rank: big\n", "Error: Option 'lora_rank' must be an integer, not 'big' (str)."),
        ("torch_dtype: float64\n", "Error: Option 'torch_dtype' is 'float64'; choose one of auto, float32, bfloat16, float16."),
        ("packing: sometimes\n", "Error: Option 'packing' must be true or false or null, not 'sometimes' (str)."),
        ("dataset: {path: a.jsonl}\n", "Error: Option 'dataset' must be a list of strings, not {'path': 'a.jsonl'} (dict)."),
        ("- lora_rank\n", "must hold a mapping of option names to values."),
    ],
    ids=["unknown-key", "wrong-type", "literal", "bool", "list", "not-a-mapping"],
)
def test_the_real_cli_rejects_a_bad_yaml_before_loading_anything(tmp_path, yaml_text, message):
    config_file = tmp_path / "bad.yaml"
    config_file.write_text(yaml_text)

    # -X importtime lists every module imported: a config error must come before torch.
    result = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "tuneforge.cli", "sft", str(config_file)],
        capture_output=True, text=True, timeout=60, env={**os.environ, "TUNEFORGE_LOAD_PLUGINS": ""},
    )

    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if not line.startswith("import time:")]
    assert message in "\n".join(errors)
    imported = {line.split("|")[-1].strip() for line in result.stderr.splitlines() if line.startswith("import time:")}
    assert {"torch", "transformers", "peft"}.isdisjoint(imported)


def test_export_names_its_required_option():
    result = subprocess.run([TUNEFORGE, "export", "--output-dir", "out"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "Error: Option 'model' is required; pass --model or set it in the YAML file." in result.stderr
