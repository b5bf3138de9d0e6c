"""A manager with the core's plugins and this one, for every test; one CPU thread per test process.

The fixtures smollm2_dir, tiny_llama_dir ... come from tuneforge.testing.pytest_plugin.
"""

import pytest
import torch

import tuneforge_dpo.plugin
from tuneforge.plugins import PluginManager, reset_plugin_manager

PLUGIN_NAME = "dpo"

torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def dpo_plugin():
    manager = PluginManager()
    manager.load_builtins()
    manager.register_plugin(tuneforge_dpo.plugin, PLUGIN_NAME, "tuneforge-dpo", "test")
    reset_plugin_manager(manager)
    yield manager
    reset_plugin_manager()
