"""tuneforge-dpo registers through the hooks; its options, formats and tokenization (no training here)."""

import json
import subprocess
import sys

import pytest

from tuneforge.api import Converted, DataError, HFChatTemplate, Row, convert_rows
from tuneforge.api import check_minutes as check
from tuneforge.testing import registry as get_registry
from tuneforge.testing import run_cli
from tuneforge_dpo.data import tokenize_examples, validate_example
from tuneforge_dpo.datasets.minutes_preferences import split_path

METHODS = ["cpo", "dpo", "kto", "orpo", "simpo"]


def test_registers_methods_formats_and_a_dataset(dpo_plugin):
    registry = get_registry()
    assert set(METHODS) <= set(registry.names("training_methods"))
    formats = {f.name: f.kind for f in registry.all("dataset_formats")}
    assert {formats[n] for n in ("messages-rejected", "preference", "kto-unpaired")} == {"preference"}
    assert registry.has("datasets", "minutes-preferences")
    assert dpo_plugin.infos["dpo"].registers["training_methods"] == ["dpo", "simpo", "orpo", "cpo", "kto", "grpo"]


def test_registering_and_listing_do_not_import_trl():
    code = (
        "import sys, tuneforge_dpo.plugin\n"
        "from tuneforge.plugins import PluginManager, reset_plugin_manager\n"
        "from tuneforge.registry import get_registry\n"
        "m = PluginManager(); m.load_builtins(); m.register_plugin(tuneforge_dpo.plugin, 'dpo', 'tuneforge-dpo', 't')\n"
        "reset_plugin_manager(m); get_registry().get('training_methods', 'dpo')\n"
        "print('trl' in sys.modules, 'datasets' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]


@pytest.mark.parametrize(
    "method, present, absent",
    [
        ("dpo", ["--beta", "--loss-type [sigmoid|ipo|hinge]", "--label-smoothing", "--ref-model"], ["--simpo-gamma"]),
        ("simpo", ["--beta", "--simpo-gamma", "--cpo-alpha"], ["--ref-model", "--loss-type"]),
        ("cpo", ["--loss-type [sigmoid|ipo|hinge]", "--cpo-alpha"], ["--ref-model"]),
        ("orpo", ["--beta"], ["--ref-model", "--label-smoothing"]),
        ("kto", ["--desirable-weight", "--undesirable-weight", "--ref-model"], ["--loss-type"]),
    ],
)
def test_each_method_has_its_own_flags(method, present, absent):
    result = run_cli("rlhf", "--method", method, "--help", ok=False)
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    for flag in present + ["--train-type", "--learning-rate"]:
        assert flag in text, flag
    for flag in absent:
        assert flag not in text, flag
    assert "[default: minutes-preferences]" in text


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--beta", "0"], "--beta is 0.0; it must be above 0."),
        (["--packing"], "--packing is not supported by --method dpo"),
        (["--label-smoothing", "0.2", "--loss-type", "ipo"], "--label-smoothing only applies to the sigmoid loss"),
        (["--label-smoothing", "0.7"], "--label-smoothing is 0.7; it must be in [0, 0.5)."),
    ],
)
def test_bad_options_fail_in_one_sentence_before_any_work(extra, message, tmp_path):
    result = run_cli("rlhf", "--method", "dpo", "--model", str(tmp_path / "none"), *extra, ok=False)
    assert result.exit_code == 1 and message in result.output, result.output


def test_yaml_names_the_method_and_its_options(tmp_path):
    config = tmp_path / "kto.yaml"
    config.write_text("method: kto\nper_device_batch_size: 1\ndesirable_weight: 1.5\n")
    result = run_cli("rlhf", str(config), ok=False)
    assert result.exit_code == 1
    assert "--method kto needs --per-device-batch-size of at least 2" in result.output


# --- formats ----------------------------------------------------------------------------------

ROWS = {
    "strings": {"prompt": "Say hi.", "chosen": "Hi!", "rejected": "No."},
    "messages": {
        "prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say hi."}],
        "chosen": [{"role": "assistant", "content": "Hi!"}],
        "rejected": [{"role": "assistant", "content": "No."}],
    },
    "shared-history": {
        "chosen": [
            {"role": "user", "content": "Name a colour."}, {"role": "assistant", "content": "Blue."},
            {"role": "user", "content": "Another?"}, {"role": "assistant", "content": "Green."},
        ],
        "rejected": [
            {"role": "user", "content": "Name a colour."}, {"role": "assistant", "content": "Blue."},
            {"role": "user", "content": "Another?"}, {"role": "assistant", "content": "Blue again."},
        ],
    },
    "history-key": {"prompt": "Another?", "history": [["Name a colour.", "Blue."]], "chosen": "Green.", "rejected": "Blue again."},
    "openai": {
        "messages": [{"role": "user", "content": "Say hi."}, {"role": "assistant", "content": "Hi!"}],
        "rejected_response": "No.",
    },
    "kto": {"prompt": "Say hi.", "completion": "Hi!", "label": "desirable"},
}


def convert(*rows, kind="preference"):
    return convert_rows([Row(row, f"data.jsonl line {n}", "data.jsonl") for n, row in enumerate(rows, 1)], kind=kind)


def test_every_format_converts_to_one_canonical_shape():
    converted = {name: convert(row)[0] for name, row in ROWS.items()}
    assert {name: c.format for name, c in converted.items()} == {
        "strings": "preference", "messages": "preference", "shared-history": "preference",
        "history-key": "preference", "openai": "messages-rejected", "kto": "kto-unpaired",
    }
    pair = validate_example(converted["strings"].data, paired=True, method="dpo")[0]
    assert pair == {
        "prompt": [{"role": "user", "content": "Say hi."}],
        "chosen": [{"role": "assistant", "content": "Hi!"}],
        "rejected": [{"role": "assistant", "content": "No."}],
    }
    assert validate_example(converted["openai"].data, paired=True, method="dpo")[0] == pair
    # a shared history given as whole conversations, or as 'history', is the same prompt
    shared = validate_example(converted["shared-history"].data, paired=True, method="dpo")[0]
    assert shared == validate_example(converted["history-key"].data, paired=True, method="dpo")[0]
    assert [m["content"] for m in shared["prompt"]] == ["Name a colour.", "Blue.", "Another?"]
    assert shared["chosen"][0]["content"] == "Green." and shared["rejected"][0]["content"] == "Blue again."
    # KTO takes unpaired rows, and splits pairs into a desirable and an undesirable answer
    assert validate_example(converted["kto"].data, paired=False, method="kto")[0]["label"] is True
    split = validate_example(converted["strings"].data, paired=False, method="kto")
    assert [(e["completion"][0]["content"], e["label"]) for e in split] == [("Hi!", True), ("No.", False)]


def test_rows_that_fit_no_format_get_the_core_error():
    with pytest.raises(DataError, match=r"data.jsonl line 1: the row has keys \['answer', 'question'\], which match no "
                                        r"dataset format \(messages-rejected, preference, kto-unpaired\)"):
        convert({"question": "Say hi.", "answer": "Hi!"})


@pytest.mark.parametrize(
    "row, method, message",
    [
        (ROWS["kto"], "dpo", "the row is an unpaired example (prompt, completion, label), but --method dpo needs a chosen"),
        ({"prompt": "Say hi.", "chosen": "Hi!", "rejected": "Hi!"}, "dpo", "the chosen and rejected answers are the same text"),
        ({"prompt": "Say hi.", "completion": "Hi!", "label": "maybe"}, "kto", "the 'label' value is 'maybe'; use true"),
        ({"prompt": "", "chosen": "Hi!", "rejected": "No."}, "dpo", "the 'prompt' value is empty"),
        ({"prompt": [{"role": "assistant", "content": "Hello"}], "chosen": "Hi!", "rejected": "No."}, "dpo",
         "must start with a user message"),
    ],
)
def test_bad_rows_are_one_sentence_naming_the_value(row, method, message):
    with pytest.raises(DataError) as caught:
        for example in convert(row):
            validate_example(example.data, paired=method != "kto", method=method)
    assert message in str(caught.value)


# --- tokenization with the model's chat template -----------------------------------------------


def test_chosen_and_rejected_share_the_prompt_and_only_answers_are_scored(smollm2_tokenizer):
    template = HFChatTemplate(smollm2_tokenizer)
    examples = [Converted(e, "row", "data", "preference") for e in validate_example(
        convert(ROWS["shared-history"])[0].data, paired=True, method="dpo")]
    (sample,), stats = tokenize_examples(examples, template, max_length=512)
    decode = smollm2_tokenizer.decode
    assert decode(sample["chosen_ids"]) == "Green.<|im_end|>"
    assert decode(sample["rejected_ids"]) == "Blue again.<|im_end|>"
    prompt = decode(sample["prompt_ids"])
    assert prompt.endswith("<|im_start|>user\nAnother?<|im_end|>\n<|im_start|>assistant\n")
    assert "Blue.<|im_end|>" in prompt  # the shared history's answer is context, not scored
    # exactly the ids the template gives the whole conversation: the rendering is the model family's
    whole = template.encode(examples[0].data["prompt"] + examples[0].data["chosen"]).input_ids
    assert whole[: len(sample["prompt_ids"]) + len(sample["chosen_ids"])] == sample["prompt_ids"] + sample["chosen_ids"]
    assert stats.learned_tokens == len(sample["chosen_ids"]) + len(sample["rejected_ids"])


def test_length_policy(smollm2_tokenizer):
    template = HFChatTemplate(smollm2_tokenizer)
    row = {"prompt": "word " * 60, "chosen": "Short.", "rejected": "Also short."}
    examples = [Converted(e, "row", "data", "preference") for e in validate_example(convert(row)[0].data, paired=True, method="dpo")]
    dropped, stats = tokenize_examples(examples, template, max_length=40, truncation="drop")
    assert dropped == [] and stats.dropped_too_long == 1
    (kept,), stats = tokenize_examples(examples, template, max_length=40, truncation="left")
    assert len(kept["prompt_ids"]) + len(kept["rejected_ids"]) == 40 and stats.truncated == 1
    assert smollm2_tokenizer.decode(kept["chosen_ids"]) == "Short.<|im_end|>"


# --- the bundled preference set ---------------------------------------------------------------


@pytest.mark.parametrize("split", ["train", "test"])
def test_bundled_set_chosen_follow_the_structure_and_rejected_do_not(split):
    rows = [json.loads(line) for line in split_path(split).read_text().splitlines()]
    assert len(rows) == {"train": 192, "test": 32}[split]
    assert all(not check(row["chosen"]) for row in rows)
    assert all(check(row["rejected"]) for row in rows)
    assert {row["meta"]["rejected_style"] for row in rows} == {"prose", "loose_bullets", "shuffled_sections"}


def test_bundled_set_is_what_the_generator_writes(tmp_path):
    from tuneforge_dpo.datasets.minutes_preferences.generate import write

    written = write(tmp_path)
    for split, path in written.items():
        assert path.read_bytes() == split_path(split).read_bytes()
