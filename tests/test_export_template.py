"""The tokenizers tuneforge saves carry the chat template the model was trained with.

A tiny Llama is trained (one LoRA step) with each of the core's named templates, then
exported with ``--format merged``; both the run's output dir and the export hold a
tokenizer whose ``apply_chat_template`` (plain transformers) renders the probe
conversations (system, several turns, tools) as the training template's ``text()`` and
gives the ids of its ``prompt()``. The base checkpoint is never written to. A plugin's
template without a Jinja form keeps the tokenizer's own template, and the export says so.
"""

import hashlib
import json
import shutil
from pathlib import Path

import pytest

from tuneforge import hookimpl
from tuneforge.config import ExportConfig
from tuneforge.export import EXPORT_RECORD, run_export
from tuneforge.templates import get_template
from tuneforge.testing import plugin_installed, train_and_export
from tuneforge.testing.reference import check_saved_tokenizer

LLAMA3_TOKENS = ["<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _fingerprint(directory: Path) -> dict:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(Path(directory).iterdir()) if p.is_file()}


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory, smollm2_dir):
    """A tiny random Llama whose tokenizer has SmolLM2's ChatML template and the Llama 3 header tokens."""
    from transformers import AutoTokenizer

    from tuneforge.testing import tiny_model_dir

    tokenizer_dir = tmp_path_factory.mktemp("tokenizer")
    tokenizer = AutoTokenizer.from_pretrained(smollm2_dir)
    tokenizer.add_tokens(LLAMA3_TOKENS, special_tokens=True)
    tokenizer.save_pretrained(tokenizer_dir)
    return Path(tiny_model_dir(tmp_path_factory.mktemp("base"), tokenizer_dir=str(tokenizer_dir)))


@pytest.fixture(scope="module")
def runs(tmp_path_factory, base_dir):
    """For each template: (the run's output dir, its merged export); the base checkpoint is unchanged by both."""
    root = tmp_path_factory.mktemp("runs")
    row = {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}]}
    before = _fingerprint(base_dir)
    # The base tokenizer's own template (SmolLM2's) differs from the named ones: the parity check needs the flag.
    out = train_and_export(base_dir, root, ["chatml", "llama3"], row, "--allow-template-drift")
    assert _fingerprint(base_dir) == before
    return out


@pytest.mark.parametrize("name", ["chatml", "llama3"])
def test_the_output_dir_and_the_export_render_as_the_training_template(runs, base_dir, name):
    from transformers import AutoTokenizer

    run_dir, exported = runs[name]
    template = get_template(name, AutoTokenizer.from_pretrained(base_dir))
    check_saved_tokenizer(run_dir, template)
    check_saved_tokenizer(exported, template)
    record = json.loads((exported / EXPORT_RECORD).read_text())
    assert (record["template"], record["chat_template"], record["template_matches_tokenizer"]) == (name, name, True)
    # The run was trained with drift allowed against the base's template; its own tokenizer has none left, tools included.
    assert json.loads((run_dir / "tuneforge_run.json").read_text())["template_parity"]["differences"] > 0
    assert (record["template_parity"]["differences"], record["template_parity"]["left_out"]) == (0, [])
    readme = (exported / "README.md").read_text()
    assert f"chat template is the `{name}` template the model was trained with" in readme and "Note:" not in readme
    # The base tokenizer's own template (SmolLM2's ChatML with its default system prompt) is not what was written.
    assert AutoTokenizer.from_pretrained(exported).chat_template != AutoTokenizer.from_pretrained(base_dir).chat_template


class SegmentOnly:
    """A plugin's template written as a render function: it has no Jinja form."""

    @hookimpl
    def tuneforge_chat_templates(self):
        from tuneforge.records import ChatTemplate
        from tuneforge.templates import SegmentTemplate

        def render(messages, tools, add_generation_prompt):
            pieces = [(f"<|im_start|>{m['role']}: {m['content']}<|im_end|>\n", m["role"] == "assistant") for m in messages]
            return pieces + ([("<|im_start|>assistant: ", False)] if add_generation_prompt else [])

        yield ChatTemplate(name="colon", description="role: content (tests)",
                           build=lambda tokenizer: SegmentTemplate(tokenizer, render, name="colon", stop_strings=["<|im_end|>"]))


def test_a_template_without_jinja_keeps_the_tokenizers_own_and_the_export_says_so(runs, tmp_path, capfd):
    from transformers import AutoTokenizer

    run_dir, _ = runs["chatml"]
    copied = tmp_path / "colon-run"
    shutil.copytree(run_dir, copied)
    record = json.loads((copied / "tuneforge_run.json").read_text())
    (copied / "tuneforge_run.json").write_text(json.dumps({**record, "template": "colon"}))
    own = AutoTokenizer.from_pretrained(copied).chat_template
    with plugin_installed(SegmentOnly(), "colon", "tuneforge-colon"):
        run_export(ExportConfig(model=str(copied), output_dir=str(tmp_path / "merged"), merge_lora=True, allow_template_drift=True))
    assert AutoTokenizer.from_pretrained(tmp_path / "merged").chat_template == own
    written = json.loads((tmp_path / "merged" / EXPORT_RECORD).read_text())
    assert (written["template"], written["chat_template"], written["template_matches_tokenizer"]) == ("colon", None, False)
    assert "differs from the 'colon' template the model was trained with" in capfd.readouterr().err
    assert "Note: the tokenizer's own chat template differs" in (tmp_path / "merged" / "README.md").read_text()
