"""The registry: one collector that checks records, sets broken plugins aside and answers look-ups."""

import os
import subprocess

import pytest
from test_plugins import FAMILY_PLUGIN, TUNEFORGE, site, write_dist  # noqa: F401  (site is a fixture)

import tuneforge
from tuneforge.plugins import PluginManager
from tuneforge.records import ChatTemplate, Device, ModelFamily
from tuneforge.registry import Registry, RegistryError, UnknownName


def family(name, **kw):
    return ModelFamily(name=name, description=f"{name} family", **kw)


def families_plugin(*records, returns=None):
    """A plugin whose tuneforge_model_families yields ``records`` (or returns ``returns``)."""

    class Plugin:
        @tuneforge.hookimpl
        def tuneforge_model_families(self):
            if returns is not None:
                return returns
            return iter(records)

    return Plugin()


@pytest.fixture
def manager():
    manager = PluginManager()
    manager.load_builtins()
    return manager


def test_duplicate_names_across_two_plugins_name_both_distributions(manager):
    manager.register_plugin(families_plugin(family("twin")), "alpha", "tuneforge-alpha", "1.0")
    manager.register_plugin(families_plugin(family("twin")), "beta", "tuneforge-beta", "2.5")
    registry = Registry(manager)  # a conflict stops only the use of its kind
    assert registry.has("chat_templates", "chatml")

    with pytest.raises(RegistryError) as caught:
        registry.names("model_families")

    message = str(caught.value)
    assert message.startswith("Conflicting plugins for model family 'twin': provided by ")
    assert "tuneforge-alpha 1.0 (plugin 'alpha')" in message
    assert "tuneforge-beta 2.5 (plugin 'beta')" in message
    assert message.endswith("uninstall one of them or limit the plugins that load with TUNEFORGE_LOAD_PLUGINS.")


def test_a_plugin_cannot_take_a_name_the_core_uses(manager):
    core_family = Registry(manager).names("model_families")[0]
    manager.register_plugin(families_plugin(family(core_family)), "squatter", "tuneforge-squatter", "0.1")

    with pytest.raises(RegistryError) as caught:
        Registry(manager).get("model_families", core_family)
    assert f"model family '{core_family}'" in str(caught.value)
    assert f"tuneforge {tuneforge.__version__} (plugin 'tuneforge.builtin.model_families')" in str(caught.value)
    assert "tuneforge-squatter 0.1 (plugin 'squatter')" in str(caught.value)


def test_one_plugin_registering_a_name_twice_is_set_aside(manager):
    manager.register_plugin(families_plugin(family("again"), family("again")), "rep", "tuneforge-rep", "1.0")

    assert not Registry(manager).has("model_families", "again")
    assert manager.infos["rep"].error == (
        "tuneforge_model_families registers the model family 'again' twice; give each record its own name"
    )


def test_the_same_name_in_two_kinds_is_fine(manager):
    class Both:
        @tuneforge.hookimpl
        def tuneforge_model_families(self):
            yield family("shared-name")

        @tuneforge.hookimpl
        def tuneforge_chat_templates(self):
            yield ChatTemplate(name="shared-name", description="t", build=lambda tok: tok)

    manager.register_plugin(Both(), "both", "tuneforge-both", "1.0")
    registry = Registry(manager)
    assert registry.has("model_families", "shared-name") and registry.has("chat_templates", "shared-name")
    assert manager.infos["both"].registers == {"model_families": ["shared-name"], "chat_templates": ["shared-name"]}


def test_failed_look_up_lists_the_known_names(manager):
    manager.register_plugin(families_plugin(family("mistral"), family("mixtral")), "m", "tuneforge-m", "1.0")
    registry = Registry(manager)

    with pytest.raises(UnknownName) as caught:
        registry.get("model_families", "mistrel")

    known = ", ".join(registry.names("model_families"))
    assert str(caught.value) == (
        f"Unknown model family 'mistrel'; known: {known}. Did you mean 'mistral'? "
        "Install the plugin that provides it or check the spelling (`tuneforge list`)."
    )
    assert "mistral, mixtral" in known
    assert isinstance(caught.value, KeyError) and isinstance(caught.value, RegistryError)


def test_failed_look_up_in_an_empty_kind():
    registry = Registry(PluginManager())

    with pytest.raises(UnknownName, match=r"^Unknown exporter 'awq'; known: none\. Install the plugin"):
        registry.get("exporters", "awq")


def test_a_record_of_the_wrong_kind_names_the_plugin(manager):
    wrong = Device(name="gpu", description="d", torch_device="cuda", is_available=lambda: True)
    manager.register_plugin(families_plugin(wrong), "mixed", "tuneforge-mixed", "1.0")

    registry = Registry(manager)
    assert not registry.has("devices", "gpu") and not registry.has("model_families", "gpu")
    assert not manager.has_plugin("mixed")
    info = manager.infos["mixed"]
    assert (info.distribution, info.version, info.registers) == ("tuneforge-mixed", "1.0", {})
    assert info.error == "tuneforge_model_families returned a Device; it must return ModelFamily records"


@pytest.mark.parametrize("bad_name", ["", "two words", " padded", None])
def test_a_record_name_must_be_one_word(manager, bad_name):
    manager.register_plugin(families_plugin(family(bad_name)), "badname", "tuneforge-badname", "1.0")

    assert bad_name not in Registry(manager).names("model_families")
    assert manager.infos["badname"].error == (
        f"tuneforge_model_families registered a model family named {bad_name!r}; "
        "a name must be a non-empty string without spaces"
    )


def test_a_hook_that_raises_names_the_plugin(manager):
    class Raising:
        @tuneforge.hookimpl
        def tuneforge_model_families(self):
            import tuneforge_missing_dependency_xyz  # noqa: F401

    manager.register_plugin(Raising(), "raising", "tuneforge-raising", "3.0")

    assert Registry(manager).names("model_families")  # the core's are all there
    info = manager.infos["raising"]
    assert (info.distribution, info.version) == ("tuneforge-raising", "3.0")
    assert info.error == (
        "tuneforge_model_families raised ModuleNotFoundError: No module named 'tuneforge_missing_dependency_xyz'"
    )
    assert manager.failures == [info]


@pytest.mark.parametrize(
    "returns",
    [family("one"), [family("one")], (family("one"),), None],
    ids=["a-record", "a-list", "a-tuple", "an-iterator"],
)
def test_a_hook_may_return_a_record_a_list_or_yield(returns):
    manager = PluginManager()
    plugin = families_plugin(family("one"), returns=returns)
    manager.register_plugin(plugin, "p", "tuneforge-p", "1.0")
    assert Registry(manager).names("model_families") == ["one"]


def test_a_hook_may_return_nothing():
    class Nothing:
        @tuneforge.hookimpl
        def tuneforge_model_families(self):
            return None

    manager = PluginManager()
    manager.register_plugin(Nothing(), "nothing", "tuneforge-nothing", "1.0")
    assert Registry(manager).names("model_families") == []
    assert manager.infos["nothing"].registers == {}


def test_a_plugins_records_come_before_the_cores(manager):
    """pluggy's order: the plugin registered last answers first, so at equal priority
    an installed plugin's record is tried before the core's default."""
    core_names = Registry(manager).names("model_families")
    manager.register_plugin(
        families_plugin(family("plugin-family", model_types=("llama",))), "p", "tuneforge-p", "1.0"
    )

    names = [f.name for f in Registry(manager).all("model_families")]
    assert names == ["plugin-family", *names[1:]]
    assert sorted(names[1:]) == core_names


def test_a_plugin_without_infos_is_named_by_its_plugin_name():
    manager = PluginManager()
    manager.register(families_plugin(family("x")), name="anonymous-a")
    manager.register(families_plugin(family("x")), name="anonymous-b")

    with pytest.raises(RegistryError) as caught:
        Registry(manager).all("model_families")
    assert "plugin 'anonymous-a'" in str(caught.value) and "plugin 'anonymous-b'" in str(caught.value)


def test_conflicting_distributions_stop_the_cli_with_both_names(site):
    write_dist(site, "tuneforge-left", "1.0", {"left": FAMILY_PLUGIN.format(family="contested")})
    write_dist(site, "tuneforge-right", "2.0", {"right": FAMILY_PLUGIN.format(family="contested")})
    env = {**os.environ, "PYTHONPATH": str(site), "TUNEFORGE_LOAD_PLUGINS": "left,right"}

    result = subprocess.run([TUNEFORGE, "list", "families"], env=env, capture_output=True, text=True, timeout=60)

    assert result.returncode == 1
    assert result.stderr.startswith("Error: Conflicting plugins for model family 'contested': provided by ")
    assert "tuneforge-left 1.0 (plugin 'left')" in result.stderr
    assert "tuneforge-right 2.0 (plugin 'right')" in result.stderr
    assert "Traceback" not in result.stderr
