"""The template parity check with the official InternLM templates: each named template passes on a checkpoint that
carries its model's own (read from the reference folder: skipped without it, failing under ``CI=true``)."""

import pytest

from tuneforge.api import compare_with_chat_template, parity_probes
from tuneforge.testing import checkpoint_with_chat_template, registry
from tuneforge.testing.reference import official_template

FILES = {"internlm2": "internlm2_5-7b-chat.jinja", "internlm3": "internlm3-8b-instruct.jinja"}


@pytest.mark.parametrize("name", sorted(FILES))
def test_each_template_matches_its_models_own(manager, internlm_tokenizer_dir, tmp_path, name):
    from transformers import AutoTokenizer

    path = checkpoint_with_chat_template(internlm_tokenizer_dir, tmp_path / "tokenizer", official_template(FILES[name]))
    tokenizer = AutoTokenizer.from_pretrained(path)
    report = compare_with_chat_template(registry(manager).get("chat_templates", name).build(tokenizer), tokenizer, parity_probes())
    assert report.ok, report.describe()
    # The official templates render no tools: the probes with tools are left out, and the report says so.
    assert report.conversations == 4 and any("probes with tools" in note for note in report.left_out)
    # The core's chatml lacks InternLM's begin token: on the same checkpoint it differs.
    assert not compare_with_chat_template(registry(manager).get("chat_templates", "chatml").build(tokenizer), tokenizer, parity_probes()).ok
