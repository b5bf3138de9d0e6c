"""The template parity check: a named template against the checkpoint's own chat template, on every command.

The checkpoints are real (a tiny random-weight Llama with SmolLM2's tokenizer and chat
template, which adds a default system prompt that the core's ``chatml`` does not); a
copy of it gets a plain ChatML template written here, which ``chatml`` must match,
and variants one character off, which it must not. A copy whose weights file is
garbage shows that a command stops at the check, before any weights load.
"""

import json
import os
from pathlib import Path

import pytest
from click.testing import CliRunner

from tuneforge.cli import cli
from tuneforge.errors import TuneforgeError
from tuneforge.modeling import read_run_record
from tuneforge.parity import TemplateDriftError, compare, first_difference, probes
from tuneforge.templates import get_template
from tuneforge.testing import checkpoint_with_chat_template

# A plain ChatML layout, no default system prompt, no tools: what the core's chatml renders.
CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
# The same, with no newline after an answer's end marker: one character off, in the middle of a conversation.
CHATML_NO_NEWLINE_AFTER_ANSWERS = CHATML.replace(
    "'<|im_end|>\\n' }}", "'<|im_end|>' + ('' if message['role'] == 'assistant' else '\\n') }}"
)
# A template that refuses system messages (as some official ones do).
NO_SYSTEM = "{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}" + CHATML


def run(*args):
    return CliRunner().invoke(cli, [*map(str, args)], catch_exceptions=False)


def tokenizer_of(path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path)


@pytest.fixture(scope="module")
def chatml_dir(tiny_llama_dir, tmp_path_factory):
    return checkpoint_with_chat_template(tiny_llama_dir, tmp_path_factory.mktemp("chatml") / "model", CHATML)


@pytest.fixture(scope="module")
def drifting_dir(tiny_llama_dir, tmp_path_factory):
    """SmolLM2's own template (a default system prompt) and weights that cannot load."""
    return checkpoint_with_chat_template(tiny_llama_dir, tmp_path_factory.mktemp("drift") / "model", tokenizer_of(tiny_llama_dir).chat_template, garbage_weights=True)


@pytest.fixture(scope="module")
def chats(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "chats.jsonl"
    rows = [{"messages": [{"role": "user", "content": f"{i} + {i}?"}, {"role": "assistant", "content": str(2 * i)}]} for i in range(8)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_a_template_that_lays_out_what_the_checkpoint_does_passes(chatml_dir):
    tokenizer = tokenizer_of(chatml_dir)
    report = compare(get_template("chatml", tokenizer), tokenizer, probes())
    assert report.ok, report.describe()
    assert report.compared >= 8 and report.conversations >= 4
    # The plain template renders no tools, so the probes that need them are left out, and the report says so.
    assert any("probes with tools" in note for note in report.left_out)


def test_one_character_off_is_found_where_it_is(chatml_dir, tmp_path):
    path = checkpoint_with_chat_template(chatml_dir, tmp_path / "off", CHATML_NO_NEWLINE_AFTER_ANSWERS)
    tokenizer = tokenizer_of(path)
    template = get_template("chatml", tokenizer)
    report = compare(template, tokenizer, probes())
    assert not report.ok
    two_turns = next(d for d in report.differences if d.label == "system prompt, two turns" and not d.generation_prompt)
    messages = two_turns.messages
    assert two_turns.expected == tokenizer.apply_chat_template(messages, tokenize=False)
    assert two_turns.got == template.text(messages)
    at = len(os.path.commonprefix([two_turns.expected, two_turns.got]))
    assert two_turns.got[at - len("Four.<|im_end|>"): at] == "Four.<|im_end|>"  # right after the first answer
    described = report.describe()
    assert f"first difference at character {at}" in described
    assert "expected (the checkpoint's chat template):" in described and "got (template 'chatml'):" in described
    # The prompts of a conversation's first answer are alike in both, so not every rendering differs.
    assert len(report.differences) < report.compared


def test_where_the_checkpoints_template_fails_a_dataset_row_is_a_difference_and_a_probe_is_left_out(chatml_dir, tmp_path):
    path = checkpoint_with_chat_template(chatml_dir, tmp_path / "nosystem", NO_SYSTEM)
    rows = tmp_path / "rows.jsonl"
    rows.write_text(json.dumps({"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}]}) + "\n")
    result = run("template", "check", "--model", path, "--template", "chatml", "--dataset", rows)
    assert result.exit_code == 1, result.output
    assert "fails: TemplateError" in result.output or "fails:" in result.output
    assert "System role not supported" in result.output and "rows.jsonl" in result.output
    assert "probes the checkpoint's chat template cannot render" in result.output


def test_template_check_command(tiny_llama_dir, chatml_dir, chats):
    drift = run("template", "check", "--model", tiny_llama_dir, "--template", "chatml")
    assert drift.exit_code == 1
    assert "You are a helpful AI assistant named SmolLM" in drift.output  # SmolLM2's default system prompt, expected
    assert "got (template 'chatml'):" in drift.output and "the same difference in" in drift.output
    same = run("template", "check", "--model", chatml_dir, "--template", "chatml", "--dataset", chats, "--rows", 3)
    assert same.exit_code == 0, same.output
    assert "renders all" in same.output and "(7 conversations)" in same.output  # 4 probes + 3 rows (tool probes left out)
    own = run("template", "check", "--model", tiny_llama_dir)
    assert own.exit_code == 0 and "its own chat template" in own.output
    bad = run("template", "check", "--model", tiny_llama_dir, "--template", "no-such-template")
    assert bad.exit_code != 0 and "no-such-template" in bad.output


@pytest.mark.parametrize("command", ["sft", "infer", "deploy", "eval"])
def test_a_command_stops_at_the_drift_before_any_weights_load(command, drifting_dir, chats, tmp_path):
    out = tmp_path / "out"
    args = {
        "sft": ["--dataset", chats, "--output-dir", out, "--max-steps", 1],
        "infer": ["--input", chats, "--output", out],
        "deploy": ["--port", 0],
        "eval": ["--limit", 1],
    }[command]
    result = run(command, "--model", drifting_dir, "--template", "chatml", *args)
    assert result.exit_code == 1, result.output
    assert "lay out conversations differently" in result.output and "--allow-template-drift" in result.output
    assert "You are a helpful AI assistant named SmolLM" in result.output  # the diff comes with it
    assert not out.exists()  # nothing written


def test_allowed_drift_trains_and_is_recorded(tiny_llama_dir, chats, tmp_path):
    out = tmp_path / "run"
    args = ["--model", tiny_llama_dir, "--template", "chatml", "--dataset", chats, "--output-dir", out,
            "--max-steps", 1, "--max-length", 64, "--save-steps", 100]
    result = run("sft", *args, "--allow-template-drift")
    assert result.exit_code == 0, result.output
    assert "going on with template drift (--allow-template-drift was given)" in result.output
    record = read_run_record(out)
    assert record.template_parity["allowed"] is True and record.template_parity["differences"] > 0
    assert record.config["allow_template_drift"] is True
    # Later commands on the run go on without the flag: the run's own tokenizer, or its record, vouches for it.
    from tuneforge.modeling import resolve_bundle

    assert resolve_bundle(str(out)).template_name == "chatml"


def test_export_checks_the_run_it_exports(chatml_dir, chats, tmp_path):
    out = tmp_path / "run"
    trained = run("sft", "--model", chatml_dir, "--template", "chatml", "--dataset", chats, "--output-dir", out,
                  "--max-steps", 1, "--max-length", 64, "--save-steps", 100)
    assert trained.exit_code == 0, trained.output
    assert read_run_record(out).template_parity == {**read_run_record(out).template_parity, "differences": 0, "allowed": False}
    # Someone gives the run's tokenizer another chat template afterwards: export notices.
    config_path = out / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    config["chat_template"] = CHATML_NO_NEWLINE_AFTER_ANSWERS
    (out / "chat_template.jinja").unlink(missing_ok=True)
    config_path.write_text(json.dumps(config))
    refused = run("export", "--model", out, "--output-dir", tmp_path / "merged")
    assert refused.exit_code == 1 and "lay out conversations differently" in refused.output
    assert not (tmp_path / "merged").exists()
    allowed = run("export", "--model", out, "--output-dir", tmp_path / "merged", "--allow-template-drift")
    assert allowed.exit_code == 0, allowed.output
    exported = json.loads((tmp_path / "merged" / "tuneforge_export.json").read_text())
    assert exported["template_parity"]["allowed"] is True and exported["template_parity"]["differences"] > 0


def test_the_error_is_one_sentence_then_the_diff(drifting_dir):
    from tuneforge.modeling import resolve_bundle

    with pytest.raises(TemplateDriftError) as raised:
        resolve_bundle(drifting_dir, template="chatml")
    first_line = str(raised.value).splitlines()[0]
    assert first_line.endswith(".") and first_line.count(". ") == 0 and drifting_dir in first_line
    assert isinstance(raised.value, TuneforgeError)
    assert first_difference("abc", "abd") == 2 and first_difference("ab", "abc") == 2
