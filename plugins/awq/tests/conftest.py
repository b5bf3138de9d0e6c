"""Fixtures of the awq tests: a LoRA run of a tiny random Llama, and the plugin on a fresh manager.

The exports need llmcompressor, which pins an older transformers than the main test
environment has: they run in ``.venv-awq`` (the README's test command) and skip
elsewhere; the main environment, which lacks llmcompressor, checks the refusal that
says so. The plugin is put on the path here because only ``.venv-awq`` installs it.
"""

import json
import sys
from pathlib import Path

import pytest

# On the path only while the package is imported (its submodules resolve through the package
# afterwards): where .venv-awq's editable install left tuneforge_awq.egg-info beside it, a
# path left in place would show that metadata to every later test of the same process, and
# the core's startup check would then ask for llmcompressor in an environment built without it.
_PLUGIN_ROOT = str(Path(__file__).parents[1])
sys.path.insert(0, _PLUGIN_ROOT)
try:
    import tuneforge_awq.plugin  # noqa: E402
finally:
    sys.path.remove(_PLUGIN_ROOT)

from tuneforge.testing import plugin_installed, run_cli, tiny_model_dir  # noqa: E402

QUESTIONS = ["What is {a} plus {b}?", "Name a colour that starts with {c}.", "Spell the word {w}.", "Is {a} larger than {b}?"]
WORDS = ["apple", "river", "stone", "cloud", "lamp", "bridge", "garden", "window"]


def conversation(i: int) -> dict:
    a, b, w = i * 3 % 17, i * 5 % 11, WORDS[i % len(WORDS)]
    question = QUESTIONS[i % len(QUESTIONS)].format(a=a, b=b, c="bgrw"[i % 4], w=w)
    answer = [f"{a} plus {b} is {a + b}.", "Blue, for example.", " ".join(w.upper()), "Yes." if a > b else "No."][i % len(QUESTIONS)]
    return {"messages": [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]}


@pytest.fixture(scope="module")
def awq_plugin():
    """The core's plugins and this one, installed process-wide for a module's exports."""
    with plugin_installed(tuneforge_awq.plugin, "awq", "tuneforge-awq") as manager:
        yield manager


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, smollm2_dir):
    """One LoRA step of ``tuneforge sft`` on a tiny random Llama (hidden 64, intermediate 128), a quarter of its 16 rows held out."""
    import torch

    root = tmp_path_factory.mktemp("awq-run")
    # A larger initialisation than the default, so that answers depend on the prompt and quantization shows.
    base = tiny_model_dir(root / "base", tokenizer_dir=smollm2_dir, initializer_range=0.2)
    data = root / "rows.jsonl"
    data.write_text("".join(json.dumps(conversation(i)) + "\n" for i in range(16)))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with plugin_installed(tuneforge_awq.plugin, "awq", "tuneforge-awq"):
            run_cli("sft", "--model", base, "--dataset", data, "--output-dir", root / "run", "--max-steps", 1,
                    "--per-device-batch-size", 2, "--save-steps", 100, "--max-length", 64, "--lora-rank", 4,
                    "--val-split-ratio", 0.25)
    finally:
        torch.set_num_threads(threads)
    return root / "run"
