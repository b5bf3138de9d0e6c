"""The decode benchmark, on the tiny shape on a CPU."""

import json

import pytest

from tuneforge.bench import decode


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_tiny_benchmark_runs_both_runners_and_writes_json(tmp_path, capsys):
    output = tmp_path / "bench.json"
    report = decode.main([
        "--shape", "tiny", "--dtype", "float32", "--device", "cpu", "--batch-sizes", "1,3",
        "--new-tokens", "5", "--prompt-tokens", "7", "--warmup", "0", "--repeats", "1", "--output", str(output),
    ])
    assert json.loads(output.read_text()) == report
    assert report["compile"] is False and report["shape"] == "tiny"
    assert [row["batch_size"] for row in report["results"]] == [1, 3]
    for row in report["results"]:
        for runner in ("generate", "pt"):
            assert row[runner]["tokens"] == 5 * row["batch_size"]  # the random model never stops early
            assert row[runner]["decode_tokens_per_s"] > 0 and row[runner]["ttft_s"] > 0
        assert row["same_greedy_answers"] == 1.0  # the engine answers exactly as plain generate()
    printed = capsys.readouterr().out
    assert "decode tok/s" in printed and "    3  pt" in printed


def test_prompts_reach_the_model_as_the_same_ids():
    template, tokenizer = decode.IdTemplate(), decode.IdTokenizer()
    ids = decode.random_prompts(2, 9, 512)[1]
    assert len(ids) == 9 and all(1 <= i < 512 for i in ids)
    text = tokenizer.decode(ids)
    assert template.prompt([{"role": "user", "content": text}]) == ids


def test_bad_arguments_are_refused(tmp_path):
    with pytest.raises(SystemExit):
        decode.main(["--batch-sizes", "0,2", "--output", str(tmp_path / "x.json")])
    with pytest.raises(SystemExit):
        decode.main(["--runners", "vllm", "--output", str(tmp_path / "x.json")])


def test_an_installed_engine_runs_beside_pt_on_the_saved_model(tmp_path):
    """A plugin's engine (here the pt engine's factory under another name) loads the saved checkpoint and
    answers the same ids: its tokenizer reads each id's word back as that id."""
    import types

    from tuneforge.api import InferenceEngine, hookimpl
    from tuneforge.registry import get_registry
    from tuneforge.testing import plugin_installed

    pt = get_registry().get("inference_engines", "pt")
    module = types.ModuleType("copy_engine_plugin")
    module.TUNEFORGE_API = "1.0"
    module.tuneforge_inference_engines = hookimpl(lambda: [InferenceEngine(name="pt-copy", description="the pt engine again", create=pt.create)])
    with plugin_installed(module, "pt-copy", "pt-copy-plugin"):
        report = decode.main([
            "--shape", "tiny", "--dtype", "float32", "--device", "cpu", "--batch-sizes", "2", "--new-tokens", "4",
            "--prompt-tokens", "6", "--warmup", "0", "--repeats", "1", "--runners", "pt,pt-copy",
            "--engine-option", "device=cpu", "--work-dir", str(tmp_path / "model"), "--output", str(tmp_path / "bench.json"),
        ])
    [row] = report["results"]
    assert row["pt-copy"]["tokens"] == row["pt"]["tokens"] == 2 * 4
    assert row["pt-copy"]["same_greedy_answers_as_pt"] == 1.0  # the same prompt ids reached the same model
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "model")  # the Qwen2 tokenizer transformers picks for the model
    ids = decode.random_prompts(1, 50, 512)[0] + [0, 25, 26, 484]
    text = "".join(decode.id_words(512)[i] for i in ids)
    assert tokenizer.encode(text) == ids and tokenizer.decode(ids) == text
