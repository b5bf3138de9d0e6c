"""Shared fixtures: the real SmolLM2 (cached), a tiny random Llama with its tokenizer."""

import os

import pytest

# The project's own tests never autoload whatever plugins happen to be installed;
# tests that need a plugin register it on a fresh manager.
os.environ.setdefault("TUNEFORGE_LOAD_PLUGINS", "")


@pytest.fixture(scope="session")
def smollm2_dir():
    from tuneforge.testing import smollm2_dir as resolve

    return resolve()


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory, smollm2_dir):
    from tuneforge.testing import tiny_model_dir

    return tiny_model_dir(tmp_path_factory.mktemp("tiny-llama"), tokenizer_dir=smollm2_dir)


@pytest.fixture(scope="session")
def smollm2_tokenizer(smollm2_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(smollm2_dir)
