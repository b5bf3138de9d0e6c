"""The template parity check with the official Qwen templates: each named template passes on its model's checkpoint,
and a template of another Qwen generation is stopped before the weights load.

The checkpoints are tiny random-weight Qwen models whose tokenizer carries the official
chat template from the reference folder (read with ``tuneforge.testing.reference``:
skipped without it, failing under ``CI=true``).
"""

import pytest

from tuneforge.api import compare_with_chat_template, parity_probes, read_run_record
from tuneforge.testing import checkpoint_with_chat_template, registry, run_cli
from tuneforge.testing.reference import official_template

# (template, the official template of the model it is for)
MATCHING = [
    ("qwen2", "Qwen2-7B-Instruct.jinja"),
    ("qwen2_5", "Qwen2.5-7B-Instruct.jinja"),
    ("qwen3", "Qwen3-8B.jinja"),
    ("qwen3-nothink", "Qwen3-8B.jinja"),
    ("qwen3-answer-only", "Qwen3-8B.jinja"),
]


def tokenizer_with(qwen_tokenizer_dir, tmp_path, file_name):
    from transformers import AutoTokenizer

    path = checkpoint_with_chat_template(qwen_tokenizer_dir, tmp_path / "tokenizer", official_template(file_name))
    return AutoTokenizer.from_pretrained(path)


@pytest.mark.parametrize("name, file_name", MATCHING)
def test_each_template_matches_its_models_own(manager, qwen_tokenizer_dir, tmp_path, name, file_name):
    tokenizer = tokenizer_with(qwen_tokenizer_dir, tmp_path, file_name)
    template = registry(manager).get("chat_templates", name).build(tokenizer)
    report = compare_with_chat_template(template, tokenizer, parity_probes())
    assert report.ok, report.describe()
    if name == "qwen2":  # Qwen2's official template renders no tools: the tool probes are left out, and said so
        assert any("probes with tools" in note for note in report.left_out)
        assert report.conversations == 4
    else:
        assert report.conversations == len(parity_probes()) and not report.left_out


@pytest.mark.parametrize("name, file_name", [("qwen2_5", "Qwen3-8B.jinja"), ("qwen3", "Qwen2.5-7B-Instruct.jinja"), ("qwen3", "Qwen2-7B-Instruct.jinja")])
def test_a_template_of_another_generation_differs(manager, qwen_tokenizer_dir, tmp_path, name, file_name):
    tokenizer = tokenizer_with(qwen_tokenizer_dir, tmp_path, file_name)
    template = registry(manager).get("chat_templates", name).build(tokenizer)
    assert not compare_with_chat_template(template, tokenizer, parity_probes()).ok


@pytest.fixture(scope="module")
def official_qwen3_dir(qwen_tokenizer_dir, tmp_path_factory):
    from tuneforge_qwen.testing import tiny_qwen_dir

    root = tmp_path_factory.mktemp("official-qwen3")
    tiny = tiny_qwen_dir(root / "plain", "qwen3", tokenizer_dir=qwen_tokenizer_dir)
    return checkpoint_with_chat_template(tiny, root / "model", official_template("Qwen3-8B.jinja"))


def test_sft_on_a_checkpoint_with_the_official_template_passes_the_check(manager, official_qwen3_dir, tmp_path):
    import json

    rows = tmp_path / "rows.jsonl"
    rows.write_text("".join(json.dumps({"messages": [
        {"role": "user", "content": f"Is {n} even?"},
        {"role": "assistant", "reasoning_content": f"{n} mod 2 = {n % 2}.", "content": "yes" if n % 2 == 0 else "no"},
    ]}) + "\n" for n in range(6)))
    out = tmp_path / "run"
    run_cli("sft", "--model", official_qwen3_dir, "--dataset", rows, "--output-dir", out, "--max-steps", 1,
            "--max-length", 256, "--lora-rank", 4, "--save-steps", 100)
    parity = read_run_record(out).template_parity
    assert parity["template"] == "qwen3" and parity["differences"] == 0 and parity["compared"] > 0
    refused = run_cli("sft", "--model", official_qwen3_dir, "--template", "qwen2_5", "--dataset", rows,
                      "--output-dir", tmp_path / "other", "--max-steps", 1, ok=False)
    assert refused.exit_code == 1 and "lay out conversations differently" in refused.output
    assert "You are Qwen, created by Alibaba Cloud" in refused.output  # Qwen2.5's default system prompt, in the diff
    assert not (tmp_path / "other").exists()
