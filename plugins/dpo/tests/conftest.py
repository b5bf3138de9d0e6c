"""A manager with the core's plugins and this one, for every test; one CPU thread per test process.

The fixtures smollm2_dir, tiny_llama_dir ... come from tuneforge.testing.pytest_plugin.
"""

import pytest
import torch

import tuneforge_dpo.plugin
from tuneforge.testing import plugin_installed

PLUGIN_NAME = "dpo"

torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def dpo_plugin():
    with plugin_installed(tuneforge_dpo.plugin, PLUGIN_NAME, "tuneforge-dpo") as manager:
        yield manager
