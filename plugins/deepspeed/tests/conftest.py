"""A manager with the core's plugins and this one, for every test; one CPU thread per test process.

The fixtures smollm2_dir, tiny_llama_dir ... come from tuneforge.testing.pytest_plugin.
"""

import os

os.environ["TUNEFORGE_LOAD_PLUGINS"] = ""  # never autoload whatever else is installed

import tuneforge_deepspeed.plugin
from tuneforge.testing import manager_fixture, one_thread_fixture

PLUGIN_NAME = "deepspeed"

one_thread = one_thread_fixture()
manager = manager_fixture(tuneforge_deepspeed.plugin, PLUGIN_NAME, "tuneforge-deepspeed", autouse=True)
