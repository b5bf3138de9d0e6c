"""A model trained with each Qwen template keeps that template in the tokenizers tuneforge saves.

One LoRA step on a tiny random Qwen3 per template, then ``export --format merged``: the
run's output dir and the export both hold a tokenizer whose ``apply_chat_template``
(plain transformers) renders the probe conversations (system, several turns, tools,
reasoning) as the template's ``text()`` and gives the ids of its ``prompt()``; for the
Qwen3 templates with thinking unset, on and off.
"""

import json

import pytest

from tuneforge.testing import registry, train_and_export
from tuneforge.testing.reference import check_saved_tokenizer

NAMES = ["qwen2", "qwen2_5", "qwen3", "qwen3-nothink", "qwen3-answer-only"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory, qwen_tokenizer_dir):
    """For each template: (the run's output dir, its merged export)."""
    import tuneforge_qwen.plugin
    from tuneforge.testing import plugin_installed
    from tuneforge_qwen.testing import tiny_qwen_dir

    root = tmp_path_factory.mktemp("qwen-runs")
    base = tiny_qwen_dir(root / "base", "qwen3", tokenizer_dir=qwen_tokenizer_dir)
    row = {"messages": [{"role": "user", "content": "2+2?"}, {"role": "assistant", "reasoning_content": "Two and two.", "content": "4"}]}
    with plugin_installed(tuneforge_qwen.plugin, "qwen", "tuneforge-qwen"):
        out = train_and_export(base, root, NAMES, row)
    return out


@pytest.mark.parametrize("name", NAMES)
def test_the_output_dir_and_the_export_render_as_the_training_template(manager, runs, qwen_tokenizer, name):
    run_dir, exported = runs[name]
    template = registry(manager).get("chat_templates", name).build(qwen_tokenizer)
    for directory in (run_dir, exported):
        check_saved_tokenizer(directory, template)
        if template.reasoning:  # a request may still switch thinking, as with the official template
            check_saved_tokenizer(directory, template, enable_thinking=True)
            check_saved_tokenizer(directory, template, enable_thinking=False)
    record = json.loads((exported / "tuneforge_export.json").read_text())
    assert (record["template"], record["chat_template"], record["template_matches_tokenizer"]) == (name, name, True)
