"""A broken plugin breaks only itself: a registration hook or ``tuneforge_commands`` that
raises, or a record of the wrong type, sets the plugin aside whole with one warning."""

import json
import os
import subprocess

import pytest
from click.testing import CliRunner
from test_plugins import FAMILY_PLUGIN, TUNEFORGE, site, write_dist  # noqa: F401  (site is a fixture)

from tuneforge.cli import cli
from tuneforge.plugins import PluginManager, reset_plugin_manager
from tuneforge.registry import Registry

# Registers a family and a command, then fails in a later registration hook, the way a
# plugin whose hardware package is missing on this machine does.
RAISES_IN_TUNERS = '''
import click
from tuneforge import hookimpl
from tuneforge.records import ModelFamily

@hookimpl
def tuneforge_model_families():
    yield ModelFamily(name="npu-family", description="registered before the failure")

@hookimpl
def tuneforge_tuners():
    import torch_npu_missing_xyz  # noqa: F401

@hookimpl
def tuneforge_commands(cli):
    @cli.command(name="npu-convert")
    def npu_convert():
        """Convert for the NPU."""
'''

# A valid chat template, then a ModelFamily where a Device belongs.
WRONG_TYPE = '''
from tuneforge import hookimpl
from tuneforge.records import ChatTemplate, ModelFamily

@hookimpl
def tuneforge_chat_templates():
    yield ChatTemplate(name="wrong-template", description="valid on its own", build=lambda tok: tok)

@hookimpl
def tuneforge_devices():
    return ModelFamily(name="wrong-device", description="not a device")
'''

# Adds one command, then raises before adding the second.
RAISES_IN_COMMANDS = '''
import click
from tuneforge import hookimpl
from tuneforge.records import ModelFamily

@hookimpl
def tuneforge_model_families():
    yield ModelFamily(name="cmd-family", description="from a plugin whose commands hook raises")

@hookimpl
def tuneforge_commands(cli):
    @cli.command(name="half-added")
    def half_added():
        """Added before the hook raised."""
    raise RuntimeError("click 9 changed the decorator")
'''

GREETER = '''
import click
from tuneforge import hookimpl

@hookimpl
def tuneforge_commands(cli):
    @cli.command()
    def greet():
        """Greet (from a healthy plugin)."""
        click.echo("hello")
'''

ALL = "good,greeter,npu,wrong,cmds"


def warning(name, dist, error):
    return (
        f"warning: plugin '{name}' from {dist} 1.0 failed to load and was skipped ({error}); fix or uninstall "
        f"{dist}, or leave it out by listing only the plugins you want in TUNEFORGE_LOAD_PLUGINS."
    )


NPU_WARNING = warning(
    "npu", "tuneforge-npu", "tuneforge_tuners raised ModuleNotFoundError: No module named 'torch_npu_missing_xyz'"
)
WRONG_WARNING = warning(
    "wrong", "tuneforge-wrong", "tuneforge_devices returned a ModelFamily; it must return Device records"
)
CMDS_WARNING = warning(
    "cmds", "tuneforge-cmds", "tuneforge_commands raised RuntimeError: click 9 changed the decorator"
)


@pytest.fixture
def dists(site):
    write_dist(site, "tuneforge-good", "1.0", {"good": FAMILY_PLUGIN.format(family="good-family")})
    write_dist(site, "tuneforge-greeter", "1.0", {"greeter": GREETER})
    write_dist(site, "tuneforge-npu", "1.0", {"npu": RAISES_IN_TUNERS})
    write_dist(site, "tuneforge-wrong", "1.0", {"wrong": WRONG_TYPE})
    write_dist(site, "tuneforge-cmds", "1.0", {"cmds": RAISES_IN_COMMANDS})
    return site


@pytest.fixture
def installed(dists):
    """A fresh process-wide manager with the core's plugins and the fake distributions."""
    manager = PluginManager()
    manager.load_builtins()
    manager.load_entry_points(set(ALL.split(",")))
    reset_plugin_manager(manager)
    yield manager
    reset_plugin_manager()


def invoke(*args):
    result = CliRunner().invoke(cli, list(args))
    assert result.exit_code == 0, result.output
    return result


def test_the_registry_sets_aside_every_record_of_a_plugin_whose_hook_fails(installed):
    registry = Registry(installed)

    assert registry.has("model_families", "good-family")
    assert registry.has("model_families", "cmd-family")  # its commands hook has not run yet
    assert not registry.has("model_families", "npu-family")  # registered before its tuners hook raised
    assert not registry.has("chat_templates", "wrong-template")  # valid, but its plugin is not
    assert not registry.has("devices", "wrong-device")
    assert {"lora", "full"} <= set(registry.names("tuners"))
    for name in ("npu", "wrong"):
        assert not installed.has_plugin(name) and installed.infos[name].registers == {}
    assert {info.name for info in installed.failures} == {"npu", "wrong"}
    assert installed.infos["npu"].error == (
        "tuneforge_tuners raised ModuleNotFoundError: No module named 'torch_npu_missing_xyz'"
    )
    assert installed.infos["good"].registers == {"model_families": ["good-family"]}


def test_a_second_registry_warns_nothing_new_and_finds_the_same(installed):
    first = Registry(installed)
    second = Registry(installed)
    assert second.names("model_families") == first.names("model_families")
    assert {info.name for info in installed.failures} == {"npu", "wrong"}


def test_plugins_shows_the_failed_ones_and_warns_once_each(installed):
    result = invoke("plugins")

    assert sorted(result.stdout.splitlines()) == sorted([
        "good  (tuneforge-good 1.0)",
        "    model families: good-family",
        "greeter  (tuneforge-greeter 1.0)",
        "npu  (tuneforge-npu 1.0)  FAILED: tuneforge_tuners raised ModuleNotFoundError: "
        "No module named 'torch_npu_missing_xyz'",
        "wrong  (tuneforge-wrong 1.0)  FAILED: tuneforge_devices returned a ModelFamily; "
        "it must return Device records",
        "cmds  (tuneforge-cmds 1.0)",
        "    model families: cmd-family",
    ])
    assert sorted(result.stderr.splitlines()) == sorted([NPU_WARNING, WRONG_WARNING])

    rows = {row["name"]: row for row in json.loads(invoke("plugins", "--json").stdout)}
    assert rows["npu"]["registers"] == {} and rows["npu"]["error"].startswith("tuneforge_tuners raised ")


def test_help_and_list_keep_working_and_the_broken_commands_are_gone(installed):
    help_result = invoke("--help")

    commands = help_result.stdout.split("Commands:")[1]
    assert "greet" in commands and "sft" in commands and "list" in commands
    assert "half-added" not in commands  # added before the hook raised, then taken back
    assert "npu-convert" not in commands  # its plugin was set aside by a registration hook
    assert sorted(help_result.stderr.splitlines()) == sorted([NPU_WARNING, WRONG_WARNING, CMDS_WARNING])

    # The plugin whose commands hook raised is set aside whole: its family goes too.
    families = json.loads(invoke("list", "families", "--json").stdout)["families"]
    names = {row["name"] for row in families}
    assert "good-family" in names
    assert not names & {"npu-family", "cmd-family", "wrong-device"}
    assert installed.infos["cmds"].error == "tuneforge_commands raised RuntimeError: click 9 changed the decorator"
    assert "cmds  (tuneforge-cmds 1.0)  FAILED: tuneforge_commands raised RuntimeError" in invoke("plugins").stdout

    assert invoke("greet").stdout == "hello\n"
    assert "lora" in invoke("list", "tuners").stdout


def test_a_conflict_stops_only_the_kind_it_is_in(site):
    write_dist(site, "tuneforge-left", "1.0", {"left": FAMILY_PLUGIN.format(family="contested")})
    write_dist(site, "tuneforge-right", "2.0", {"right": FAMILY_PLUGIN.format(family="contested")})
    manager = PluginManager()
    manager.load_builtins()
    manager.load_entry_points({"left", "right"})
    reset_plugin_manager(manager)
    try:
        assert "lora" in invoke("list", "tuners").stdout
        assert "left  (tuneforge-left 1.0)" in invoke("plugins").stdout
        result = CliRunner().invoke(cli, ["list", "families"])
        assert result.exit_code == 1
        assert result.stderr.startswith("Error: Conflicting plugins for model family 'contested': provided by ")
    finally:
        reset_plugin_manager()


@pytest.mark.parametrize(
    "args",
    [["plugins"], ["list"], ["--help"], ["list", "tuners"], ["sft", "--help"]],
    ids=" ".join,
)
def test_the_real_cli_keeps_working_with_broken_plugins_installed(dists, args):
    env = {**os.environ, "PYTHONPATH": str(dists), "TUNEFORGE_LOAD_PLUGINS": ALL}

    result = subprocess.run([TUNEFORGE, *args], env=env, capture_output=True, text=True, timeout=60)

    assert result.returncode == 0, result.stderr
    warnings = result.stderr.splitlines()
    assert len(warnings) == len(set(warnings))  # each once
    assert set(warnings) <= {NPU_WARNING, WRONG_WARNING, CMDS_WARNING}
    if args != ["sft", "--help"]:  # sft's help reads no plugin's records, so it finds no failure to report
        assert NPU_WARNING in warnings and WRONG_WARNING in warnings
    if args == ["--help"]:
        assert CMDS_WARNING in warnings
        assert "greet" in result.stdout and "half-added" not in result.stdout and "npu-convert" not in result.stdout
    if args == ["list"]:
        assert "  good-family  good-family from a fake distribution" in result.stdout
        assert "npu-family" not in result.stdout and "wrong-template" not in result.stdout
    if args == ["list", "tuners"]:
        assert "  lora" in result.stdout
    if args == ["sft", "--help"]:
        assert "--train-type" in result.stdout


def test_commands_are_added_one_plugin_at_a_time_and_traced(dists, monkeypatch, capsys):
    import click

    monkeypatch.setenv("TUNEFORGE_TRACE_PLUGINS", "1")
    manager = PluginManager()
    manager.load_entry_points({"greeter", "cmds"})
    group = click.Group()

    manager.add_commands(group)

    assert sorted(group.commands) == ["greet"]
    assert not manager.has_plugin("cmds") and manager.has_plugin("greeter")
    assert "[tuneforge] tuneforge_commands from greeter --> greet" in capsys.readouterr().err
