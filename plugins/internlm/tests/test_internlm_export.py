"""A model trained with an InternLM template keeps that template in the tokenizers tuneforge saves.

One LoRA step on a tiny random InternLM3 per template, then ``export --format merged``:
the run's output dir and the export both hold a tokenizer whose ``apply_chat_template``
(plain transformers) renders the probe conversations (system, several turns, tools) as
the template's ``text()`` and gives the ids of its ``prompt()``.
"""

import json

import pytest

from tuneforge.testing import registry, train_and_export
from tuneforge.testing.reference import check_saved_tokenizer

NAMES = ["internlm2", "internlm3"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory, internlm_tokenizer_dir):
    import tuneforge_internlm.plugin
    from tuneforge.testing import plugin_installed
    from tuneforge_internlm.testing import tiny_internlm3_dir

    root = tmp_path_factory.mktemp("internlm-runs")
    base = tiny_internlm3_dir(root / "base", tokenizer_dir=internlm_tokenizer_dir)
    row = {"messages": [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}]}
    with plugin_installed(tuneforge_internlm.plugin, "internlm", "tuneforge-internlm"):
        out = train_and_export(base, root, NAMES, row)
    return out


@pytest.mark.parametrize("name", NAMES)
def test_the_output_dir_and_the_export_render_as_the_training_template(manager, runs, internlm_tokenizer, name):
    run_dir, exported = runs[name]
    template = registry(manager).get("chat_templates", name).build(internlm_tokenizer)
    check_saved_tokenizer(run_dir, template)
    check_saved_tokenizer(exported, template)
    record = json.loads((exported / "tuneforge_export.json").read_text())
    assert (record["template"], record["chat_template"], record["template_matches_tokenizer"]) == (name, name, True)
