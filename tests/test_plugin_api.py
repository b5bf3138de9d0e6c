"""The declared plugin API: plugins import only tuneforge.api and tuneforge.testing, and
declare the API version they were written for, which is checked when they load."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest
from test_plugins import FAMILY_PLUGIN, site, write_dist  # noqa: F401  (site is a fixture)

import tuneforge.api
from tuneforge import apiversion
from tuneforge.plugins import PluginManager, warn_failures
from tuneforge.registry import Registry

ROOT = Path(__file__).parents[1]
PUBLIC = {"tuneforge.api", "tuneforge.testing"}


def _packages() -> list[Path]:
    return sorted(p for parent in ("plugins", "contrib") for p in (ROOT / parent).iterdir() if (p / "pyproject.toml").is_file())


def _private_imports(path: Path) -> list[str]:
    """Every import of a tuneforge module other than the public two, as 'file:line: module'."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            modules = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            # `from tuneforge import registry` imports a module too; `from tuneforge import api` is fine.
            modules = [f"{node.module}.{alias.name}" for alias in node.names] if node.module == "tuneforge" else [node.module]
        else:
            continue
        for module in modules:
            if module.split(".")[0] != "tuneforge":
                continue
            if not any(module == public or module.startswith(public + ".") for public in PUBLIC):
                found.append(f"{path.relative_to(ROOT)}:{node.lineno}: {module}")
    return found


def test_plugins_and_contrib_import_only_the_plugin_api():
    packages = _packages()
    assert {"plugins/qwen", "plugins/internlm", "plugins/vllm", "plugins/dpo", "plugins/deepspeed", "plugins/ascend", "contrib/mistral", "contrib/acme-accelerator"} <= {str(p.relative_to(ROOT)) for p in packages}
    offenders = [hit for package in packages for path in sorted(package.rglob("*.py")) for hit in _private_imports(path)]
    assert not offenders, (
        "these plugin files import private tuneforge modules; import from tuneforge.api "
        "(or tuneforge.testing in tests) instead:\n" + "\n".join(offenders)
    )


def test_the_scan_catches_every_spelling_of_a_private_import(tmp_path):
    path = ROOT / "tests" / "_scan_probe.py"  # under ROOT, as the scanned files are
    path.write_text(
        "import tuneforge\n"
        "import tuneforge.registry\n"
        "from tuneforge import hookimpl, registry\n"
        "from tuneforge.templates import IGNORE_INDEX\n"
        "from tuneforge import api, testing\n"
        "from tuneforge.api import hookimpl\n"
        "from tuneforge.testing.server import Server\n"
        "import tuneforge_qwen.plugin\n"
        "from . import sibling\n"
    )
    try:
        hits = [hit.split(": ", 1)[1] for hit in _private_imports(path)]
    finally:
        path.unlink()
    assert hits == ["tuneforge", "tuneforge.registry", "tuneforge.hookimpl", "tuneforge.registry", "tuneforge.templates"]


def test_the_api_declares_everything_it_exports_and_imports_nothing_heavy():
    assert all(hasattr(tuneforge.api, name) for name in tuneforge.api.__all__)
    public = {name for name in vars(tuneforge.api) if not name.startswith(("_", "@")) and name != "annotations"}
    public |= set(tuneforge.api._LAZY)  # the training names, loaded on first use (they import torch)
    assert public - {"apiversion"} == set(tuneforge.api.__all__) - {"__version__"}
    script = "import sys, tuneforge.api; print(sorted({'torch', 'transformers'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


@pytest.mark.parametrize("package", ["plugins/qwen", "plugins/internlm", "plugins/vllm", "plugins/dpo", "plugins/deepspeed", "plugins/ascend", "contrib/mistral", "contrib/acme-accelerator"])
def test_every_plugin_in_the_repository_declares_the_api_version(package):
    declared = []
    for path in (ROOT / package).glob("tuneforge_*/plugin.py"):
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == apiversion.ATTRIBUTE for t in node.targets):
                declared.append(ast.literal_eval(node.value))
    assert declared == [tuneforge.api.API_VERSION]


# -- the version check at load time, with fake distributions ---------------------------

DECLARING = FAMILY_PLUGIN + 'TUNEFORGE_API = "{version}"\n'


def _load(site, versions: dict[str, object]) -> tuple[PluginManager, list[str]]:
    for name, version in versions.items():
        source = FAMILY_PLUGIN if version is None else DECLARING.replace("{version}", str(version))
        write_dist(site, f"tuneforge-{name}", "2.3", {name: source.replace("{family}", f"{name}-family")})
    manager = PluginManager()
    manager.load_builtins()
    manager.load_entry_points(set(versions))
    shown = []
    warn_failures(manager, echo=shown.append)
    return manager, shown


def test_plugins_written_for_a_supported_api_load(site):
    manager, shown = _load(site, {"current": apiversion.API_VERSION, "oldest": apiversion.OLDEST_API_VERSION, "undeclared": None})
    assert shown == []
    registry = Registry(manager)
    for name in ("current", "oldest", "undeclared"):
        assert manager.has_plugin(name) and registry.has("model_families", f"{name}-family")


def test_a_plugin_written_for_a_newer_api_is_set_aside_with_one_sentence(site, monkeypatch):
    monkeypatch.setattr(apiversion, "API_VERSION", "1.2")
    manager, shown = _load(site, {"future": "1.3", "fine": "1.2", "nextmajor": "2.0"})
    assert sorted(shown) == [
        "warning: plugin 'future' from tuneforge-future was written for tuneforge plugin API 1.3, newer than this "
        "tuneforge's 1.2, and was skipped; upgrade tuneforge.",
        "warning: plugin 'nextmajor' from tuneforge-nextmajor was written for tuneforge plugin API 2.0, newer than "
        "this tuneforge's 1.2, and was skipped; upgrade tuneforge.",
    ]
    assert manager.has_plugin("fine") and not manager.has_plugin("future")
    assert manager.infos["future"].error == "written for plugin API 1.3; this tuneforge offers 1.2"
    assert not Registry(manager).has("model_families", "future-family")


def test_a_plugin_written_for_an_api_no_longer_supported_is_set_aside(site, monkeypatch):
    monkeypatch.setattr(apiversion, "API_VERSION", "2.1")
    monkeypatch.setattr(apiversion, "OLDEST_API_VERSION", "2.0")
    manager, shown = _load(site, {"old": "1.4", "new": "2.0"})
    assert shown == [
        "warning: plugin 'old' from tuneforge-old was written for tuneforge plugin API 1.4, older than the oldest "
        "this tuneforge supports (2.0; it offers 2.1), and was skipped; upgrade tuneforge-old."
    ]
    assert manager.has_plugin("new") and not manager.has_plugin("old")


def test_a_malformed_declaration_is_set_aside_naming_the_value(site):
    manager, shown = _load(site, {"typo": "v1"})
    assert shown == [
        "warning: plugin 'typo' from tuneforge-typo declares TUNEFORGE_API = 'v1', which is not a plugin API "
        f'version like "{apiversion.API_VERSION}", and was skipped; fix the declaration in tuneforge-typo.'
    ]
    assert not manager.has_plugin("typo")


def test_tuneforge_plugins_lists_a_refused_plugin_as_failed(site, monkeypatch):
    from tuneforge.testing import run_cli

    from tuneforge.plugins import reset_plugin_manager

    write_dist(site, "tuneforge-future", "2.3", {"future": DECLARING.replace("{version}", "9.0").replace("{family}", "f")})
    monkeypatch.setenv("TUNEFORGE_LOAD_PLUGINS", "future")
    reset_plugin_manager()
    try:
        result = run_cli("plugins")
    finally:
        reset_plugin_manager()
    assert "FAILED: written for plugin API 9.0" in result.output


def test_the_plugin_guide_lists_every_name_of_the_api():
    guide = (ROOT / "docs" / "plugins.md").read_text()
    section = guide[guide.index("## The plugin API") : guide.index("### Declaring the API version")]
    missing = [name for name in tuneforge.api.__all__ if f"`{name}`" not in section]
    assert not missing, f"docs/plugins.md's table of the plugin API does not name {missing}; add them to their section."
