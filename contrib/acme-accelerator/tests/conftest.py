"""Fixtures: the acme plugin on a fresh plugin manager, and as an installed distribution for subprocesses."""

import os
from pathlib import Path

import pytest

os.environ["TUNEFORGE_LOAD_PLUGINS"] = ""  # never autoload whatever else is installed

import tuneforge_acme.plugin
from tuneforge.testing import plugin_installed

PACKAGE_ROOT = Path(__file__).parents[1]


@pytest.fixture
def manager():
    """A fresh manager with the core's defaults and this plugin, installed process-wide."""
    with plugin_installed(tuneforge_acme.plugin, "acme", "tuneforge-acme-accelerator") as manager:
        yield manager


@pytest.fixture(scope="session")
def installed_env(tmp_path_factory):
    """The environment of a `tuneforge` subprocess that finds this plugin through its entry point.

    What `pip install -e contrib/acme-accelerator` leaves, laid out by hand: a dist-info
    folder naming the entry point, and the package on the path.
    """
    site = tmp_path_factory.mktemp("acme-site")
    info = site / "tuneforge_acme_accelerator-0.1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: tuneforge-acme-accelerator\nVersion: 0.1.0\n")
    (info / "entry_points.txt").write_text("[tuneforge]\nacme = tuneforge_acme.plugin\n")
    path = [str(site), str(PACKAGE_ROOT), os.environ.get("PYTHONPATH", "")]
    return {"PYTHONPATH": os.pathsep.join(p for p in path if p), "TUNEFORGE_LOAD_PLUGINS": "acme"}


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory, smollm2_dir):
    from tuneforge.testing import tiny_model_dir

    return tiny_model_dir(tmp_path_factory.mktemp("tiny-llama"), tokenizer_dir=smollm2_dir)
