"""The vllm engine refuses a checkpoint that needs its own code, as the core does, before vLLM starts.

vLLM loads the config, tokenizer and weights again itself; it gets the same
decision through its engine arguments. The refusal comes before vLLM is imported,
so these tests need only tuneforge-vllm installed, not vLLM.
"""

import pytest

pytest.importorskip("tuneforge_vllm", reason="tuneforge-vllm is not installed here; the README's test command runs these tests in .venv-vllm")

from tuneforge.errors import TuneforgeError
from tuneforge.testing import remote_code_dir


def test_a_checkpoint_with_its_own_code_is_refused_before_vllm_loads(tiny_llama_dir, tmp_path):
    from tuneforge_vllm.engine import VLLMEngine

    marker = tmp_path / "MARKER"
    checkpoint = remote_code_dir(tiny_llama_dir, tmp_path / "checkpoint", marker)
    with pytest.raises(TuneforgeError, match=r"needs the Python code shipped with it.*--trust-remote-code"):
        VLLMEngine(str(checkpoint))
    assert not marker.exists()


def test_the_engine_takes_the_option_off_by_default():
    import inspect

    import tuneforge_vllm.plugin
    from tuneforge.inference import engine_options
    from tuneforge.testing import plugin_installed

    assert inspect.signature(tuneforge_vllm.plugin.create_vllm).parameters["trust_remote_code"].default is False
    with plugin_installed(tuneforge_vllm.plugin, "vllm", "tuneforge-vllm"):
        assert "trust_remote_code" in engine_options("vllm")  # --trust-remote-code reaches it
