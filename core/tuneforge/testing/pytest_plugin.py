"""Pytest fixtures for tuneforge and its plugins (loaded through the ``pytest11`` entry point).

- ``smollm2_dir``: the real SmolLM2-135M-Instruct checkpoint (converted once, cached).
- ``smollm2_tokenizer``: its tokenizer (ChatML template).
- ``tiny_llama_dir``: a random-weight two-layer Llama with SmolLM2's tokenizer.
- ``varied_tiny_dir``: the same with a larger initialisation, so its greedy answers
  depend on the prompt (the default one answers much the same to everything).
"""

import pytest


@pytest.fixture(scope="session")
def smollm2_dir():
    from tuneforge.testing import smollm2_dir as resolve

    return resolve()


@pytest.fixture(scope="session")
def smollm2_tokenizer(smollm2_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(smollm2_dir)


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory, smollm2_dir):
    from tuneforge.testing import tiny_model_dir

    return tiny_model_dir(tmp_path_factory.mktemp("tiny-llama"), tokenizer_dir=smollm2_dir)


@pytest.fixture(scope="session")
def varied_tiny_dir(tmp_path_factory, smollm2_dir):
    from tuneforge.testing import tiny_model_dir

    return tiny_model_dir(tmp_path_factory.mktemp("tiny-varied"), tokenizer_dir=smollm2_dir, initializer_range=0.2)
