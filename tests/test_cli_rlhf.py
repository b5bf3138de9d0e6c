"""`tuneforge rlhf --method NAME`: flags and --help come from the method's options dataclass."""

import types
from dataclasses import dataclass
from typing import Literal

import pytest
from click.testing import CliRunner

from tuneforge import hookimpl
from tuneforge.cli import cli
from tuneforge.config import TrainConfig
from tuneforge.options import option
from tuneforge.plugins import PluginManager, reset_plugin_manager
from tuneforge.records import TrainingMethod


@dataclass
class ToyOptions(TrainConfig):
    strength: float = option(0.5, "How hard the toy method pushes.", group="toy")
    flavour: Literal["plain", "spicy"] = option("plain", "Which toy loss.", group="toy")


RUNS = []


def _run_toy(config):
    RUNS.append(config)
    return "nowhere"


@pytest.fixture
def toy_method():
    """A manager with the core's plugins and a plugin adding the training method 'toy'."""
    plugin = types.SimpleNamespace(
        tuneforge_training_methods=hookimpl(
            lambda: [TrainingMethod(name="toy", description="a toy method", options=ToyOptions, run=_run_toy)]
        )
    )
    manager = PluginManager()
    manager.load_builtins()
    manager.register_plugin(plugin, "toy", "tuneforge-toy", "1.0")
    reset_plugin_manager(manager)
    RUNS.clear()
    yield
    reset_plugin_manager()


def rlhf(*args):
    return CliRunner().invoke(cli, ["rlhf", *map(str, args)])


def test_method_help_lists_its_own_options_and_the_shared_ones(toy_method):
    result = rlhf("--method", "toy", "--help")
    assert result.exit_code == 0, result.output
    assert "--strength" in result.output and "[plain|spicy]" in result.output
    assert "--learning-rate" in result.output and "--train-type" in result.output
    # a plugin's own group is listed after the shared groups (model, data, tuner, training)
    assert result.output.index("--seed") < result.output.index("--strength") < result.output.index("--help")


def test_help_without_a_method_names_the_installed_ones(toy_method):
    result = rlhf("--help")
    assert result.exit_code == 0, result.output
    assert "Installed methods: sft, toy." in " ".join(result.output.split())
    assert "--strength" not in result.output


def test_flags_and_yaml_build_the_method_options(toy_method, tmp_path):
    result = rlhf("--method", "toy", "--strength", "0.9", "--flavour", "spicy", "--max-steps", "3")
    assert result.exit_code == 0, result.output
    (config,) = RUNS
    assert isinstance(config, ToyOptions)
    assert (config.strength, config.flavour, config.max_steps) == (0.9, "spicy", 3)

    yaml_file = tmp_path / "toy.yaml"
    yaml_file.write_text("method: toy\nstrength: 0.25\nlearning_rate: 0.001\n")
    result = rlhf(yaml_file, "--flavour", "spicy")  # the method comes from the YAML file
    assert result.exit_code == 0, result.output
    assert (RUNS[-1].strength, RUNS[-1].learning_rate, RUNS[-1].flavour) == (0.25, 0.001, "spicy")


def test_bad_values_are_refused_by_name(toy_method):
    result = rlhf("--method", "toy", "--flavour", "sour")
    assert result.exit_code == 2 and "'sour' is not one of 'plain', 'spicy'" in result.output
    result = rlhf("--method", "toy", "--beta", "1")  # an option of another method
    assert result.exit_code == 2 and "No such option '--beta'" in result.output
    assert not RUNS


def test_a_method_that_is_not_installed_is_one_sentence(toy_method):
    result = rlhf("--method", "dpo", "--help")
    assert result.exit_code == 2
    assert (
        "Training method 'dpo' is not installed (installed: sft, toy); install the plugin that provides it "
        "(docs/plugins.md lists them) and check `tuneforge plugins`."
        in result.output
    )
    result = rlhf("--method", "mystery")
    assert "Training method 'mystery' is not installed (installed: sft, toy); install the plugin that provides it" in result.output


def test_no_method_says_how_to_give_one(toy_method):
    result = rlhf("--max-steps", "2")
    assert result.exit_code == 2
    assert "tuneforge rlhf needs --method NAME (installed: sft, toy)" in result.output


def test_a_multi_process_run_relaunches_through_rlhf(toy_method, monkeypatch):
    """The launcher re-runs the method's own command line: `rlhf --method NAME CONFIG.yaml`."""
    import subprocess
    import types as types_

    from tuneforge.options import build
    from tuneforge.training import setup

    launched = []

    def fake_run(command):
        launched.append(command)
        cli_args = command[command.index("tuneforge.cli") + 1:]
        result = CliRunner().invoke(cli, cli_args)  # what each launched process would parse
        assert result.exit_code == 0, result.output
        return types_.SimpleNamespace(returncode=0)

    monkeypatch.delenv("LOCAL_RANK", raising=False)
    monkeypatch.setattr(subprocess, "run", fake_run)
    backend = types_.SimpleNamespace(name="fake", launch_command=lambda n: ["torchrun", f"--nproc-per-node={n}"])
    config = build(ToyOptions, {"strength": 0.75, "nproc_per_node": 2})
    assert setup.relaunch(config, "toy", backend) is True
    (command,) = launched
    assert command[:2] == ["torchrun", "--nproc-per-node=2"]
    assert command[2:-1] == ["-m", "tuneforge.cli", "rlhf", "--method", "toy"] and command[-1].endswith(".yaml")
    assert RUNS[-1] == config  # the launched command rebuilt the very same options
