"""Declared dependency versions: the start-up check, and the floors that CI installs.

The check reads package metadata from ``sys.path``, so a test puts a folder with an
old (or too new) package's ``dist-info`` first on ``PYTHONPATH`` of a real
``tuneforge`` process and reads what it says.
"""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tuneforge import versions

ROOT = Path(__file__).resolve().parents[1]


def fake_dist(folder: Path, name: str, version: str) -> None:
    info = folder / f"{name}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")


def tuneforge(folder: Path, *args):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(folder), os.environ.get("PYTHONPATH", "")]))
    return subprocess.run([sys.executable, "-m", "tuneforge.cli", *args], capture_output=True, text=True, env=env, timeout=120)


def declared() -> dict[str, str]:
    """The core's dependencies as pyproject.toml declares them: {name: specifier}."""
    import tomllib

    from packaging.requirements import Requirement

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return {r.name.lower(): str(r.specifier) for r in map(Requirement, project["dependencies"])}


def floor(specifier: str) -> str:
    [found] = re.findall(r">=([\w.]+)", specifier)
    return found


def test_this_environment_passes_the_check():
    assert versions.problems() == []


def test_the_ci_floors_are_the_declared_floors():
    from packaging.version import Version

    pinned = {}
    for line in (ROOT / ".ci" / "min-versions.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, _, version = line.partition("==")
            pinned[name.lower()] = Version(version)
    floors = {name: Version(floor(spec)) for name, spec in declared().items() if name != "torch"}  # torch: see pyproject.toml
    assert pinned == floors


def test_a_too_old_peft_stops_a_command_before_its_work(tmp_path):
    peft_floor = floor(declared()["peft"])
    old = ".".join([*peft_floor.split(".")[:1], str(int(peft_floor.split(".")[1]) - 1), "0"])
    fake_dist(tmp_path, "peft", old)
    done = tuneforge(tmp_path, "deploy", "--model", str(tmp_path / "no-such-model"))
    assert done.returncode == 1
    message = done.stderr.strip()
    assert message == f"Error: peft {old} is installed, but tuneforge needs peft>={peft_floor}; install a version that fits with pip install 'peft>={peft_floor}'."
    assert "no-such-model" not in done.stdout + done.stderr  # refused before the model was looked at


def test_a_transformers_above_the_declared_range_is_named(tmp_path):
    spec = declared()["transformers"]
    cap = re.search(r"<([\w.]+)", spec).group(1)
    fake_dist(tmp_path, "transformers", cap + ".0")
    done = tuneforge(tmp_path, "list")
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        f"Error: transformers {cap}.0 is installed, but tuneforge needs transformers{spec}; install a version that fits with pip install 'transformers{spec}'."
    ]


def test_a_peft_too_old_for_the_installed_transformers_is_named(tmp_path):
    """transformers' MIN_PEFT_VERSION, which its metadata does not declare, is read from its source."""
    from importlib.metadata import version

    package = tmp_path / "transformers"
    (package / "integrations").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "integrations" / "peft.py").write_text('MIN_PEFT_VERSION = "99.0.0"\n')
    (package / "utils").mkdir()
    (package / "utils" / "import_utils.py").write_text('ACCELERATE_MIN_VERSION = "0.1.0"\n')
    fake_dist(tmp_path, "transformers", "5.1.0")
    done = tuneforge(tmp_path, "list")
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        f"Error: transformers 5.1.0 loads and switches LoRA adapters only with peft>=99.0.0, but peft {version('peft')} is installed; "
        f"install a newer one with pip install 'peft>=99.0.0', or a transformers that works with it."
    ]


def test_the_installed_transformers_names_its_minimums():
    from packaging.version import Version
    from transformers.integrations import peft as integration

    from transformers.utils import import_utils

    assert versions.transformers_minimum("peft") == integration.MIN_PEFT_VERSION
    assert versions.transformers_minimum("accelerate") == import_utils.ACCELERATE_MIN_VERSION
    # With transformers at its floor (.venv-min), the declared floors meet its own minimums.
    from importlib.metadata import version

    if Version(version("transformers")) == Version(floor(declared()["transformers"])):
        for package in versions.TRANSFORMERS_MINIMUMS:
            assert Version(floor(declared()[package])) >= Version(versions.transformers_minimum(package)), package


def test_a_missing_dependency_is_named(tmp_path):
    """A plugin requiring a package that is not installed is refused in one sentence."""
    info = tmp_path / "tuneforge_needy-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: tuneforge-needy\nVersion: 1.0\nRequires-Dist: no-such-package-xyz>=1.2\n")
    (info / "entry_points.txt").write_text("[tuneforge]\nneedy = tuneforge_needy\n")
    done = tuneforge(tmp_path, "list")
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        "Error: no-such-package-xyz is not installed, but tuneforge-needy needs no-such-package-xyz>=1.2; install it with pip install 'no-such-package-xyz>=1.2'."
    ]


@pytest.mark.parametrize("spec", list(declared().values()))
def test_every_declared_dependency_has_a_floor(spec):
    assert floor(spec)
