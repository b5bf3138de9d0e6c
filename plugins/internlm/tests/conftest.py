"""Fixtures: the plugin on a fresh plugin manager, a tokenizer with InternLM's tokens, one thread."""

import os

import pytest

os.environ["TUNEFORGE_LOAD_PLUGINS"] = ""  # never autoload whatever else is installed

import tuneforge_internlm.plugin
from tuneforge.testing import plugin_installed

PLUGIN_NAME = "internlm"


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
    with plugin_installed(tuneforge_internlm.plugin, PLUGIN_NAME, "tuneforge-internlm") as manager:
        yield manager


@pytest.fixture(scope="session")
def internlm_tokenizer_dir(tmp_path_factory, smollm2_dir):
    from tuneforge_internlm.testing import internlm_tokenizer_dir

    return internlm_tokenizer_dir(tmp_path_factory.mktemp("internlm-tokenizer"), smollm2_dir)


@pytest.fixture(scope="session")
def internlm_tokenizer(internlm_tokenizer_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(internlm_tokenizer_dir)
