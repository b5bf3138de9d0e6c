"""Fixtures: the plugin on a fresh plugin manager, a tokenizer with Qwen's tokens, one thread."""

import os

import pytest

os.environ["TUNEFORGE_LOAD_PLUGINS"] = ""  # never autoload whatever else is installed

import tuneforge_qwen.plugin
from tuneforge.testing import manager_fixture, one_thread_fixture

PLUGIN_NAME = "qwen"


one_thread = one_thread_fixture()
manager = manager_fixture(tuneforge_qwen.plugin, PLUGIN_NAME, "tuneforge-qwen")


@pytest.fixture(scope="session")
def qwen_tokenizer_dir(tmp_path_factory, smollm2_dir):
    from tuneforge_qwen.testing import qwen_tokenizer_dir

    return qwen_tokenizer_dir(tmp_path_factory.mktemp("qwen-tokenizer"), smollm2_dir)


@pytest.fixture(scope="session")
def qwen_tokenizer(qwen_tokenizer_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(qwen_tokenizer_dir)
