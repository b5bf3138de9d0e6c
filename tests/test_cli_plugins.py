"""`tuneforge plugins` and `tuneforge list`, and commands that plugins add."""

import json
import os
import subprocess
import sys

import pytest
from click.testing import CliRunner
from test_plugins import FAMILY_PLUGIN, TUNEFORGE, site, write_dist  # noqa: F401  (site is a fixture)

import tuneforge
from tuneforge.cli import LISTABLE, cli
from tuneforge.plugins import BUILTIN_PLUGINS, PluginManager, reset_plugin_manager
from tuneforge.records import RECORD_KINDS

COMMAND_PLUGIN = '''
import click
from tuneforge import hookimpl

@hookimpl
def tuneforge_commands(cli):
    @cli.command()
    @click.option("--name", default="world")
    def greet(name):
        """Greet someone (added by a plugin)."""
        click.echo(f"hello {name}")
'''


@pytest.fixture
def installed(site):
    """Install a manager with the core's plugins and the named fake ones, process-wide."""

    def install(allowed):
        manager = PluginManager()
        manager.load_builtins()
        manager.load_entry_points(set(allowed))
        reset_plugin_manager(manager)
        return manager

    yield install
    reset_plugin_manager()


def invoke(*args):
    result = CliRunner().invoke(cli, list(args))
    assert result.exit_code == 0, result.output
    return result


def test_plugins_without_any_installed(installed):
    installed([])
    result = invoke("plugins")
    assert result.stdout == "No plugins installed beyond the core's own (`tuneforge plugins --all` shows those).\n"


def test_plugins_shows_distribution_version_and_what_it_registers(installed, site):
    write_dist(site, "fakeplugin", "1.0", {"fake": FAMILY_PLUGIN.format(family="fake-family")})
    installed(["fake"])

    result = invoke("plugins")

    assert result.stdout == "fake  (fakeplugin 1.0)\n    model families: fake-family\n"


def test_plugins_all_includes_the_core_marked_as_such(installed, site):
    write_dist(site, "fakeplugin", "1.0", {"fake": FAMILY_PLUGIN.format(family="fake-family")})
    manager = installed(["fake"])

    lines = invoke("plugins", "--all").stdout.splitlines()

    headers = [line for line in lines if not line.startswith(" ")]
    assert headers == [f"{name}  (tuneforge {tuneforge.__version__}) [core]" for name in BUILTIN_PLUGINS] + [
        "fake  (fakeplugin 1.0)"
    ]
    for info in manager.infos.values():  # what each registers, under its own header
        for kind, names in info.registers.items():
            assert f"    {kind.replace('_', ' ')}: {', '.join(names)}" in lines


def test_plugins_json(installed, site):
    write_dist(site, "fakeplugin", "1.0", {"fake": FAMILY_PLUGIN.format(family="fake-family")})
    installed(["fake"])

    rows = json.loads(invoke("plugins", "--json").stdout)
    assert rows == [{
        "name": "fake", "distribution": "fakeplugin", "version": "1.0", "builtin": False,
        "error": None, "registers": {"model_families": ["fake-family"]},
    }]

    rows = json.loads(invoke("plugins", "--all", "--json").stdout)
    assert [row["name"] for row in rows] == [*BUILTIN_PLUGINS, "fake"]
    assert all(row["builtin"] and row["distribution"] == "tuneforge" for row in rows[:-1])


def test_plugins_shows_a_failed_plugin(installed, site):
    write_dist(site, "fakeplugin", "1.0", {"broken": "import tuneforge_missing_dependency_xyz\n"})
    installed(["broken"])

    result = invoke("plugins")
    assert result.stdout == (
        "broken  (fakeplugin 1.0)  FAILED: ModuleNotFoundError: No module named 'tuneforge_missing_dependency_xyz'\n"
    )
    assert result.stderr.startswith("warning: plugin 'broken' from fakeplugin 1.0 failed to load and was skipped")

    (row,) = json.loads(invoke("plugins", "--json").stdout)
    assert row["error"] == "ModuleNotFoundError: No module named 'tuneforge_missing_dependency_xyz'"
    assert row["registers"] == {}


def test_list_covers_every_kind_of_record():
    assert sorted(LISTABLE.values()) == sorted(RECORD_KINDS)


def test_list_shows_a_plugins_records_and_who_provides_them(installed, site):
    write_dist(site, "fakeplugin", "1.0", {"fake": FAMILY_PLUGIN.format(family="fake-family")})
    installed(["fake"])

    assert "  fake-family" in invoke("list", "families").stdout
    result = json.loads(invoke("list", "families", "--json").stdout)
    assert list(result) == ["families"]
    assert {"name": "fake-family", "description": "fake-family from a fake distribution", "plugin": "fake"} in result["families"]

    everything = json.loads(invoke("list", "--json").stdout)
    assert list(everything) == list(LISTABLE)


def test_list_rejects_an_unknown_kind():
    result = CliRunner().invoke(cli, ["list", "famillies"])
    assert result.exit_code == 2
    assert "'famillies' is not one of" in result.output


def test_a_plugin_adds_a_command(site):
    write_dist(site, "greeter", "0.2", {"greeter": COMMAND_PLUGIN})
    env = {**os.environ, "PYTHONPATH": str(site), "TUNEFORGE_LOAD_PLUGINS": "greeter"}

    run = subprocess.run([TUNEFORGE, "greet", "--name", "tuneforge"], env=env, capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    assert run.stdout == "hello tuneforge\n"

    listing = subprocess.run([TUNEFORGE, "--help"], env=env, capture_output=True, text=True, timeout=60)
    assert "greet" in listing.stdout and "Greet someone (added by a plugin)." in listing.stdout

    without = {**env, "TUNEFORGE_LOAD_PLUGINS": ""}
    missing = subprocess.run([TUNEFORGE, "greet"], env=without, capture_output=True, text=True, timeout=60)
    assert missing.returncode == 2
    assert "No such command 'greet'" in missing.stderr


def test_plugins_in_a_subprocess_with_the_allow_list_unset(site):
    write_dist(site, "fakeplugin", "1.0", {"fake": FAMILY_PLUGIN.format(family="fake-family")})
    env = {**os.environ, "PYTHONPATH": str(site)}
    env.pop("TUNEFORGE_LOAD_PLUGINS", None)

    result = subprocess.run([TUNEFORGE, "plugins", "--json"], env=env, capture_output=True, text=True, timeout=60)

    assert result.returncode == 0, result.stderr
    by_name = {row["name"]: row for row in json.loads(result.stdout)}
    assert by_name["fake"]["distribution"] == "fakeplugin"
    assert not any(row["builtin"] for row in by_name.values())


@pytest.mark.parametrize("args", [["--help"], ["plugins", "--all"], ["list"]], ids=" ".join)
def test_listing_imports_nothing_heavy(args):
    """Every hook of every plugin is called here, so each record must stay lazy."""
    result = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "tuneforge.cli", *args],
        capture_output=True, text=True, timeout=60, env={**os.environ, "TUNEFORGE_LOAD_PLUGINS": "mistral"},
    )
    assert result.returncode == 0, result.stderr
    imported = {line.split("|")[-1].strip() for line in result.stderr.splitlines() if line.startswith("import time:")}
    assert "tuneforge.registry" in imported or args == ["--help"]
    assert {"torch", "transformers", "peft", "accelerate"}.isdisjoint(imported)
