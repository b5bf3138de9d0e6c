"""Fixtures: the plugin on a fresh plugin manager, a tokenizer with InternLM's tokens, one thread."""

import os

import pytest

os.environ["TUNEFORGE_LOAD_PLUGINS"] = ""  # never autoload whatever else is installed

import tuneforge_internlm.plugin
from tuneforge.testing import manager_fixture, one_thread_fixture

PLUGIN_NAME = "internlm"


one_thread = one_thread_fixture()
manager = manager_fixture(tuneforge_internlm.plugin, PLUGIN_NAME, "tuneforge-internlm")


@pytest.fixture(scope="session")
def internlm_tokenizer_dir(tmp_path_factory, smollm2_dir):
    from tuneforge_internlm.testing import internlm_tokenizer_dir

    return internlm_tokenizer_dir(tmp_path_factory.mktemp("internlm-tokenizer"), smollm2_dir)


@pytest.fixture(scope="session")
def internlm_tokenizer(internlm_tokenizer_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(internlm_tokenizer_dir)
