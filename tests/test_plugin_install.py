"""One real install: build contrib/mistral with pip and let the real CLI find it."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

MISTRAL_SOURCE = Path(__file__).resolve().parents[1] / "contrib" / "mistral"


def tuneforge_command() -> list[str]:
    script = Path(sys.executable).with_name("tuneforge")
    return [str(script)] if script.exists() else [sys.executable, "-m", "tuneforge.cli"]


@pytest.fixture(scope="module")
def installed_site(tmp_path_factory) -> Path:
    """tuneforge-mistral built from source and pip-installed into a folder of its own."""
    root = tmp_path_factory.mktemp("install")
    # Build from a copy: building in place would leave build/ and *.egg-info in the checkout.
    source = shutil.copytree(
        MISTRAL_SOURCE, root / "source", ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__")
    )
    site = root / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index",
         "--disable-pip-version-check", "--quiet", "--target", str(site), str(source)],
        check=True, capture_output=True, text=True, timeout=120,
    )
    return site


def run_cli(site: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(site)}
    env.pop("TUNEFORGE_LOAD_PLUGINS", None)  # a user's default: every installed plugin loads
    return subprocess.run([*tuneforge_command(), *args], env=env, capture_output=True, text=True, timeout=60)


def test_install_writes_the_package_and_its_entry_point(installed_site):
    (dist_info,) = installed_site.glob("tuneforge_mistral-*.dist-info")
    assert "[tuneforge]\nmistral = tuneforge_mistral.plugin" in (dist_info / "entry_points.txt").read_text()
    assert (installed_site / "tuneforge_mistral" / "plugin.py").is_file()


def test_plugins_lists_the_installed_distribution(installed_site):
    import tomllib

    version = tomllib.loads((MISTRAL_SOURCE / "pyproject.toml").read_text())["project"]["version"]

    result = run_cli(installed_site, "plugins", "--json")

    assert result.returncode == 0, result.stderr
    by_name = {row["name"]: row for row in json.loads(result.stdout)}
    assert by_name["mistral"]["distribution"] == "tuneforge-mistral"
    assert by_name["mistral"]["version"] == version
    assert by_name["mistral"]["error"] is None
    assert by_name["mistral"]["registers"] == {"model_families": ["mistral"]}


def test_list_families_shows_mistral(installed_site):
    result = run_cli(installed_site, "list", "families")

    assert result.returncode == 0, result.stderr
    names = [line.split()[0] for line in result.stdout.splitlines()[1:]]
    assert "mistral" in names


def test_the_installed_copy_is_the_one_loaded(installed_site):
    env = {**os.environ, "PYTHONPATH": str(installed_site)}
    result = subprocess.run(
        [sys.executable, "-c", "import tuneforge_mistral.plugin as p; print(p.__file__)"],
        env=env, capture_output=True, text=True, timeout=60, check=True,
    )
    assert Path(result.stdout.strip()).is_relative_to(installed_site)
