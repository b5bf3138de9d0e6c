"""Bad input to the awq and gptq exporters fails in one sentence, before any weights load.

The runs here point at a base checkpoint whose weights file is not weights: an export
that got as far as loading them would fail with a traceback instead of the sentence.
The test of a missing llmcompressor runs where it is missing (the main environment).
"""

import importlib.util
import json
import shutil

import pytest

from tuneforge.testing import make_lora_adapter, plugin_installed, run_cli

import tuneforge_awq.plugin

HAS_LLMCOMPRESSOR = importlib.util.find_spec("llmcompressor") is not None


def _unloadable_base(source, target):
    """``source``'s config and tokenizer with a weights file that cannot load."""
    target.mkdir()
    for path in source.iterdir():
        if path.suffix != ".safetensors":
            shutil.copy(path, target / path.name)
    (target / "model.safetensors").write_bytes(b"these are not weights")
    return target


def _refusal(*args) -> str:
    with plugin_installed(tuneforge_awq.plugin, "awq", "tuneforge-awq"):
        result = run_cli("export", *map(str, args), ok=False)
    assert result.exit_code != 0 and "Traceback" not in result.output, result.output
    [line] = [line for line in result.output.splitlines() if line.startswith("Error:")]
    return line


@pytest.fixture(scope="module")
def broken_run(tiny_run, tmp_path_factory):
    """The tiny LoRA run (with its data) on a base whose weights cannot load."""
    from pathlib import Path

    root = tmp_path_factory.mktemp("broken-run")
    record = json.loads((Path(tiny_run) / "tuneforge_run.json").read_text())
    base = _unloadable_base(Path(record["base_model"]), root / "base")
    run = shutil.copytree(tiny_run, root / "run", ignore=shutil.ignore_patterns("checkpoint-*"))
    record["base_model"] = str(base)
    (run / "tuneforge_run.json").write_text(json.dumps(record))
    return run


needs_llmcompressor = pytest.mark.skipif(not HAS_LLMCOMPRESSOR, reason="llmcompressor is not installed here; the README's test command runs these tests in .venv-awq")


@needs_llmcompressor
@pytest.mark.parametrize(("args", "expected"), [
    (["--group-size", "48"], "--group-size 48 does not divide the model's hidden size 64 (each quantized layer's inputs split into groups of that size); pick one that divides it, such as 32 or 64."),
    (["--group-size", "0"], "--group-size is 0; give a positive whole number."),
    (["--num-calibration-samples", "-3"], "--num-calibration-samples is -3; give a positive whole number."),
    (["--max-quality-loss", "-0.1"], "--max-quality-loss is -0.1; give the largest share the perplexity may rise, such as 0.05 for 5%."),
    (["--calibration-dataset", "no-such-rows.jsonl", "--group-size", "32"], "--calibration-dataset no-such-rows.jsonl cannot be read (Data file 'no-such-rows.jsonl' does not exist; check the path); fix it, or pass --calibration-dataset with rows to calibrate on."),
])
def test_bad_options_fail_in_one_sentence_before_the_weights_load(broken_run, tmp_path, args, expected):
    assert _refusal("--model", broken_run, "--format", "awq", "--output-dir", tmp_path / "out", *args) == f"Error: {expected}"
    assert list(tmp_path.iterdir()) == []


@needs_llmcompressor
def test_a_run_that_records_no_data_needs_a_calibration_dataset(tmp_path, tiny_run):
    from pathlib import Path

    base = json.loads((Path(tiny_run) / "tuneforge_run.json").read_text())["base_model"]
    run = make_lora_adapter(base, tmp_path / "run", seed=0, run_record=True)  # a record without the run's options
    line = _refusal("--model", run, "--format", "gptq", "--output-dir", tmp_path / "out", "--group-size", 32)
    assert line == (
        f"Error: '{run}' records no training data to calibrate on (its run record names no --dataset); "
        f"pass --calibration-dataset FILE with rows like the ones the model will answer."
    )


@pytest.mark.skipif(HAS_LLMCOMPRESSOR, reason="llmcompressor is installed here: the refusal is for an environment without it")
def test_without_llmcompressor_the_export_says_what_to_install(tiny_llama_dir, tmp_path):
    run = make_lora_adapter(tiny_llama_dir, tmp_path / "run", seed=0, run_record=True)
    line = _refusal("--model", run, "--format", "awq", "--output-dir", tmp_path / "out", "--group-size", 32)
    # The exporter's own sentence; the core's check of declared requirements says it first where the
    # plugin's metadata is visible (plugins/awq after an editable install).
    assert line in (
        "Error: The awq exporter needs llmcompressor, which is not installed here; install it with "
        "pip install 'llmcompressor>=0.14,<0.15' (it pins transformers 5.15 to 5.17: give it an environment of its own).",
        "Error: llmcompressor is not installed, but tuneforge-awq needs llmcompressor<0.15,>=0.14; "
        "install it with pip install 'llmcompressor<0.15,>=0.14'.",
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]
