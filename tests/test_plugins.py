"""The plugin manager: built-in plugins, entry points, failures, the allow-list, tracing."""

import importlib
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import tuneforge
from tuneforge import plugins
from tuneforge.plugins import BUILTIN_PLUGINS, PluginManager, get_plugin_manager, reset_plugin_manager, warn_failures
from tuneforge.records import ModelFamily
from tuneforge.registry import Registry, get_registry

# The real console script beside this interpreter; the other test modules import it
# and the fake-distribution helpers below.
TUNEFORGE = str(Path(sys.executable).with_name("tuneforge"))

FAMILY_PLUGIN = '''
from tuneforge import hookimpl
from tuneforge.records import ModelFamily

@hookimpl
def tuneforge_model_families():
    yield ModelFamily(name="{family}", description="{family} from a fake distribution")
'''


def write_dist(site: Path, dist: str, version: str, plugins: dict[str, str]) -> None:
    """Lay out a distribution as pip leaves it: a dist-info folder and one module per entry point."""
    prefix = dist.replace("-", "_")
    info = site / f"{prefix}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
    lines = ["[tuneforge]"]
    for ep_name, source in plugins.items():
        module = f"{prefix}_{ep_name}"
        (site / f"{module}.py").write_text(textwrap.dedent(source))
        lines.append(f"{ep_name} = {module}")
    (info / "entry_points.txt").write_text("\n".join(lines) + "\n")
    importlib.invalidate_caches()


@pytest.fixture
def site(tmp_path, monkeypatch):
    """A folder on sys.path for fake distributions; their modules are forgotten afterwards."""
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    for name, module in list(sys.modules.items()):
        if str(getattr(module, "__file__", None) or "").startswith(str(tmp_path)):
            del sys.modules[name]


@pytest.fixture
def fresh():
    """Afterwards, the process-wide manager is rebuilt on next use."""
    yield
    reset_plugin_manager()


def loaded_entry_points(manager) -> set[str]:
    return {name for name, info in manager.infos.items() if not info.builtin and not info.error}


# -- the core's own plugins -------------------------------------------------------


def test_builtins_are_plugins_of_the_core_distribution():
    manager = PluginManager()
    manager.load_builtins()

    assert set(manager.infos) == set(BUILTIN_PLUGINS)
    for name in BUILTIN_PLUGINS:
        info = manager.infos[name]
        assert (info.distribution, info.version, info.builtin, info.error) == ("tuneforge", tuneforge.__version__, True, None)
        assert manager.get_plugin(name) is sys.modules[name]


def test_named_register_and_unregister():
    class Extra:
        @tuneforge.hookimpl
        def tuneforge_model_families(self):
            yield ModelFamily(name="extra", description="Extra family")

    manager = PluginManager()
    manager.load_builtins()
    manager.register_plugin(Extra(), "extra", "extra-dist", "2.0")
    assert Registry(manager).has("model_families", "extra")
    assert manager.infos["extra"].registers == {"model_families": ["extra"]}

    manager.unregister(name="extra")
    assert "extra" not in manager.infos
    assert not Registry(manager).has("model_families", "extra")


def test_a_second_registry_does_not_repeat_what_plugins_register():
    manager = PluginManager()
    manager.load_builtins()
    Registry(manager)
    first = {name: dict(info.registers) for name, info in manager.infos.items()}
    Registry(manager)
    assert {name: dict(info.registers) for name, info in manager.infos.items()} == first


def test_reset_plugin_manager_installs_one_process_wide(fresh):
    manager = PluginManager()
    reset_plugin_manager(manager)
    assert get_plugin_manager() is manager
    assert get_registry().manager is manager
    assert get_registry() is get_registry()

    reset_plugin_manager()
    rebuilt = get_plugin_manager()
    assert rebuilt is not manager
    assert set(BUILTIN_PLUGINS) <= set(rebuilt.infos)


# -- entry points -----------------------------------------------------------------


def test_entry_point_plugin_loads_with_its_distribution_and_version(site):
    write_dist(site, "fakeplugin", "1.0", {"fake": FAMILY_PLUGIN.format(family="fake-family")})
    manager = PluginManager()
    manager.load_builtins()

    manager.load_entry_points({"fake"})

    info = manager.infos["fake"]
    assert (info.distribution, info.version, info.builtin, info.error) == ("fakeplugin", "1.0", False, None)
    registry = Registry(manager)
    assert registry.get("model_families", "fake-family").description == "fake-family from a fake distribution"
    assert registry.provider("model_families", "fake-family") == "fake"
    assert info.registers == {"model_families": ["fake-family"]}


def test_a_plugin_that_fails_to_import_is_reported_and_skipped(site):
    write_dist(site, "fakeplugin", "1.0", {
        "good": FAMILY_PLUGIN.format(family="good-family"),
        "broken": "import tuneforge_missing_dependency_xyz\n",
    })
    manager = PluginManager()
    manager.load_builtins()

    manager.load_entry_points({"good", "broken"})

    broken = manager.infos["broken"]
    assert (broken.distribution, broken.version) == ("fakeplugin", "1.0")
    assert broken.error == "ModuleNotFoundError: No module named 'tuneforge_missing_dependency_xyz'"
    assert not manager.has_plugin("broken")
    assert manager.failures == [broken]
    assert Registry(manager).has("model_families", "good-family")

    messages = []
    warn_failures(manager, messages.append)
    assert messages == [
        "warning: plugin 'broken' from fakeplugin 1.0 failed to load and was skipped "
        "(ModuleNotFoundError: No module named 'tuneforge_missing_dependency_xyz'); "
        "fix or uninstall fakeplugin, or leave it out by listing only the plugins you want in "
        "TUNEFORGE_LOAD_PLUGINS."
    ]


def test_the_cli_keeps_working_when_a_plugin_is_broken(site):
    write_dist(site, "fakeplugin", "1.0", {
        "good": FAMILY_PLUGIN.format(family="good-family"),
        "broken": "import tuneforge_missing_dependency_xyz\n",
    })
    env = {**os.environ, "PYTHONPATH": str(site), "TUNEFORGE_LOAD_PLUGINS": "good,broken"}

    result = subprocess.run([TUNEFORGE, "list"], env=env, capture_output=True, text=True, timeout=60)

    assert result.returncode == 0, result.stderr
    assert "  good-family  good-family from a fake distribution" in result.stdout
    assert result.stderr == (
        "warning: plugin 'broken' from fakeplugin 1.0 failed to load and was skipped "
        "(ModuleNotFoundError: No module named 'tuneforge_missing_dependency_xyz'); "
        "fix or uninstall fakeplugin, or leave it out by listing only the plugins you want in "
        "TUNEFORGE_LOAD_PLUGINS.\n"
    )


def test_a_plugin_that_raises_on_import_is_skipped_too(site):
    write_dist(site, "fakeplugin", "1.0", {"raising": "raise RuntimeError('needs a GPU driver')\n"})
    manager = PluginManager()

    manager.load_entry_points({"raising"})

    assert manager.infos["raising"].error == "RuntimeError: needs a GPU driver"
    assert not manager.has_plugin("raising")


def test_a_misspelled_hook_is_reported_with_the_right_name(site):
    write_dist(site, "typoplugin", "0.3", {"typo": """
        from tuneforge import hookimpl

        @hookimpl
        def tuneforge_modle_families():
            return []
    """})
    manager = PluginManager()
    manager.load_builtins()

    manager.load_entry_points({"typo"})

    assert manager.infos["typo"].error == (
        "PluginValidationError: unknown hook 'tuneforge_modle_families'; did you mean 'tuneforge_model_families'?"
    )
    assert not manager.has_plugin("typo")
    manager.check_pending()  # nothing of the skipped plugin is left behind


def test_a_hook_with_wrong_arguments_is_reported(site):
    write_dist(site, "argplugin", "0.1", {"args": """
        from tuneforge import hookimpl

        @hookimpl
        def tuneforge_commands(group):
            pass
    """})
    manager = PluginManager()

    manager.load_entry_points({"args"})

    error = manager.infos["args"].error
    assert error.startswith("PluginValidationError:") and "'group'" in error and "\n" not in error
    assert not manager.has_plugin("args")


def test_the_same_plugin_name_in_two_distributions_is_reported(tmp_path, monkeypatch):
    first, second = tmp_path / "first", tmp_path / "second"
    write_dist(first, "dist-one", "1.0", {"same": FAMILY_PLUGIN.format(family="one")})
    write_dist(second, "dist-two", "2.0", {"same": FAMILY_PLUGIN.format(family="two")})
    monkeypatch.syspath_prepend(str(second))
    monkeypatch.syspath_prepend(str(first))  # first on sys.path, so found first
    manager = PluginManager()

    try:
        manager.load_entry_points({"same"})
    finally:
        sys.modules.pop("dist_one_same", None)

    assert manager.infos["same"].distribution == "dist-one"
    assert manager.warnings == [
        "warning: plugin 'same' from dist-two 2.0 was skipped because dist-one 1.0 already provides "
        "a plugin of that name; uninstall one of the two distributions."
    ]


# -- TUNEFORGE_LOAD_PLUGINS -------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [(None, {"a", "b"}), ("a", {"a"}), ("", set()), (" b , a ", {"a", "b"})],
    ids=["unset-loads-all", "only-a", "empty-loads-none", "spaces-ignored"],
)
def test_load_plugins_allow_list(site, fresh, monkeypatch, value, expected):
    write_dist(site, "dist-a", "1.0", {"a": FAMILY_PLUGIN.format(family="family-a")})
    write_dist(site, "dist-b", "1.0", {"b": FAMILY_PLUGIN.format(family="family-b")})
    if value is None:
        monkeypatch.delenv(plugins.LOAD_ENV, raising=False)
    else:
        monkeypatch.setenv(plugins.LOAD_ENV, value)
    reset_plugin_manager()

    manager = get_plugin_manager()

    assert loaded_entry_points(manager) & {"a", "b"} == expected
    if value == "":
        assert all(info.builtin for info in manager.infos.values())
    assert set(BUILTIN_PLUGINS) <= set(manager.infos)
    families = set(get_registry().names("model_families"))
    assert {name for name in ("family-a", "family-b") if name in families} == {f"family-{n}" for n in expected}


def test_an_allow_list_name_that_matches_nothing_is_reported(site):
    write_dist(site, "dist-a", "1.0", {"a": FAMILY_PLUGIN.format(family="family-a")})
    manager = PluginManager()

    manager.load_entry_points({"a", "mistrall"})

    assert loaded_entry_points(manager) == {"a"}
    (warning,) = manager.warnings
    assert warning.startswith("warning: TUNEFORGE_LOAD_PLUGINS names 'mistrall', but no installed plugin has that name")
    assert "a" in warning.split("(installed: ")[1]


# -- TUNEFORGE_TRACE_PLUGINS ------------------------------------------------------


class Traced:
    @tuneforge.hookimpl
    def tuneforge_model_families(self):
        yield ModelFamily(name="traced-family", description="Traced")

    @tuneforge.hookimpl
    def tuneforge_commands(self, cli):
        pass


def test_trace_plugins_prints_each_hook_call(monkeypatch, capsys):
    monkeypatch.setenv(plugins.TRACE_ENV, "1")
    manager = PluginManager()
    manager.register_plugin(Traced(), "traced", "traced-dist", "1.0")

    Registry(manager)
    manager.hook.tuneforge_commands(cli="the-group")

    lines = capsys.readouterr().err.splitlines()
    assert all(line.startswith("[tuneforge] ") for line in lines)
    assert any("tuneforge_model_families from traced --> traced-family" in line for line in lines)
    assert not any("tuneforge_devices from" in line for line in lines)  # no implementation, no call
    assert any("tuneforge_commands [hook]" in line for line in lines)
    assert any("cli: the-group" in line for line in lines)


@pytest.mark.parametrize("value", [None, "", "0", "false"])
def test_trace_plugins_off(monkeypatch, capsys, value):
    if value is None:
        monkeypatch.delenv(plugins.TRACE_ENV, raising=False)
    else:
        monkeypatch.setenv(plugins.TRACE_ENV, value)
    manager = PluginManager()
    manager.register_plugin(Traced(), "traced", "traced-dist", "1.0")

    Registry(manager)
    manager.hook.tuneforge_commands(cli="the-group")

    assert capsys.readouterr().err == ""


def test_trace_plugins_in_the_cli(site):
    write_dist(site, "fakeplugin", "1.0", {"fake": FAMILY_PLUGIN.format(family="fake-family")})
    env = {**os.environ, "PYTHONPATH": str(site), "TUNEFORGE_LOAD_PLUGINS": "fake", "TUNEFORGE_TRACE_PLUGINS": "1"}

    result = subprocess.run(
        [TUNEFORGE, "list", "families"],
        env=env, capture_output=True, text=True, timeout=60,
    )

    assert result.returncode == 0, result.stderr
    assert "[tuneforge] tuneforge_model_families from fake --> fake-family" in result.stderr
    assert "[tuneforge] tuneforge_model_families from tuneforge.builtin.model_families --> " in result.stderr
    assert "[tuneforge]" not in result.stdout
