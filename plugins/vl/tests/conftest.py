"""Fixtures: the plugin on a fresh plugin manager, one thread."""

import os

import pytest

os.environ["TUNEFORGE_LOAD_PLUGINS"] = ""  # never autoload whatever else is installed

import tuneforge_vl.plugin
from tuneforge.testing import plugin_installed

PLUGIN_NAME = "vl"


@pytest.fixture(autouse=True, scope="session")
def one_thread():
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def manager():
    """A fresh manager with the core's defaults and this plugin, installed process-wide."""
    with plugin_installed(tuneforge_vl.plugin, PLUGIN_NAME, "tuneforge-vl") as manager:
        yield manager

