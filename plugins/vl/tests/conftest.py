"""Fixtures: the plugin on a fresh plugin manager, one thread."""

import os

os.environ["TUNEFORGE_LOAD_PLUGINS"] = ""  # never autoload whatever else is installed

import tuneforge_vl.plugin
from tuneforge.testing import manager_fixture, one_thread_fixture

PLUGIN_NAME = "vl"


one_thread = one_thread_fixture()
manager = manager_fixture(tuneforge_vl.plugin, PLUGIN_NAME, "tuneforge-vl")

