"""The vllm engine refuses a checkpoint that needs its own code, as the core does, before vLLM starts.

vLLM loads the config, tokenizer and weights again itself; it gets the same
decision through its engine arguments. The refusal comes before vLLM is imported,
so these tests need only tuneforge-vllm installed, not vLLM.
"""

import pytest

pytest.importorskip("tuneforge_vllm", reason="tuneforge-vllm is not installed here; the README's test command runs these tests in .venv-vllm")

from tuneforge.api import TuneforgeError
from tuneforge.testing import remote_code_dir


def test_a_checkpoint_with_its_own_code_is_refused_before_vllm_loads(tiny_llama_dir, tmp_path):
    import tuneforge_vllm.plugin
    from tuneforge.api import create_engine
    from tuneforge.testing import plugin_installed

    marker = tmp_path / "MARKER"
    checkpoint = remote_code_dir(tiny_llama_dir, tmp_path / "checkpoint", marker)
    with plugin_installed(tuneforge_vllm.plugin, "vllm", "tuneforge-vllm"):
        with pytest.raises(TuneforgeError, match=r"needs the Python code shipped with it.*--trust-remote-code"):
            create_engine("vllm", str(checkpoint))
    assert not marker.exists()


def test_the_engine_takes_the_decision_from_the_bundle_off_by_default(tiny_llama_dir):
    import tuneforge_vllm.plugin
    from tuneforge.api import BUNDLE_OPTIONS, resolve_bundle
    from tuneforge.testing import check_engine_options, plugin_installed
    from tuneforge_vllm.engine import VLLMEngine

    assert "trust_remote_code" in BUNDLE_OPTIONS  # --trust-remote-code resolves the bundle vLLM is given
    assert resolve_bundle(tiny_llama_dir).trust_remote_code is False
    with plugin_installed(tuneforge_vllm.plugin, "vllm", "tuneforge-vllm"):
        check_engine_options("vllm", {"trust_remote_code": True})  # accepted for every engine
    with pytest.raises(TuneforgeError, match="from a resolved model bundle, not a str"):
        VLLMEngine(tiny_llama_dir)
