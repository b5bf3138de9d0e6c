"""A manager with the core's plugins and this one, for every test module.

The tests that run LMDeploy need it and a CUDA GPU; elsewhere they skip, saying why
(``why_not_runnable``), and the rest (registration, refusals, option checks) run.
"""

import os

os.environ["TUNEFORGE_LOAD_PLUGINS"] = ""  # never autoload whatever else is installed

import pytest
import tuneforge_lmdeploy.plugin
from tuneforge.testing import plugin_installed


@pytest.fixture(scope="module", autouse=True)
def manager():
    """The core's plugins and this one, installed process-wide for each test module (module-scoped, so the
    conformance kit's class-scoped engine, set up before any test's own fixtures, finds the engine)."""
    with plugin_installed(tuneforge_lmdeploy.plugin, "lmdeploy", "tuneforge-lmdeploy") as installed:
        yield installed


@pytest.fixture(scope="session")
def lmdeploy_tiny_dir(tmp_path_factory, smollm2_dir):
    """A random-weight Llama whose heads are 64 wide (LMDeploy's attention kernels take no narrower ones)."""
    from tuneforge.testing import tiny_model_dir

    return tiny_model_dir(
        tmp_path_factory.mktemp("lmdeploy-tiny"), tokenizer_dir=smollm2_dir,
        hidden_size=128, num_heads=2, num_kv_heads=1, intermediate_size=256, initializer_range=0.2,
    )
