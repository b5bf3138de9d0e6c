"""The vllm tests need vLLM: they run in the environment that has it (see README.md), and skip elsewhere."""

import pytest


@pytest.fixture(scope="session")
def vllm_tiny_dir(tmp_path_factory, smollm2_dir):
    """A random-weight Llama whose heads are 64 wide (vLLM's CPU attention takes no narrower ones)."""
    from tuneforge.testing import tiny_model_dir

    return tiny_model_dir(
        tmp_path_factory.mktemp("vllm-tiny"), tokenizer_dir=smollm2_dir,
        hidden_size=128, num_heads=2, num_kv_heads=1, intermediate_size=256, initializer_range=0.2,
    )
