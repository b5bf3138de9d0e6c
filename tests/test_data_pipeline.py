"""prepare_datasets end to end: mix, convert, validate, split, tokenize, summarise."""

import csv
import json

import pytest

from tuneforge.config import TrainConfig
from tuneforge.data import prepare_datasets
from tuneforge.errors import DataError
from tuneforge.templates import CHATML, IGNORE_INDEX, TurnTemplate, get_template


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def write_csv(path, rows):
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return str(path)


def qa_rows(n, prefix="q"):
    return [{"query": f"{prefix} question {i}?", "response": f"Answer number {i}."} for i in range(n)]


def chat_rows(n):
    return [
        {"messages": [{"role": "user", "content": f"Topic {i}?"}, {"role": "assistant", "content": f"Topic {i} is fine."}]}
        for i in range(n)
    ]


def alpaca_rows(n):
    return [{"instruction": f"Summarise item {i}.", "input": "", "output": f"Item {i}."} for i in range(n)]


class CountingTemplate(TurnTemplate):
    """ChatML that remembers how many conversations it encoded."""

    def __init__(self, tokenizer):
        super().__init__(tokenizer, CHATML)
        self.calls = 0

    def encode(self, messages, tools=None, train_on_prompt=False):
        self.calls += 1
        return super().encode(messages, tools, train_on_prompt)


@pytest.fixture
def files(tmp_path):
    return {
        "qa": write_jsonl(tmp_path / "qa.jsonl", qa_rows(12)),
        "chat": write_jsonl(tmp_path / "chat.jsonl", chat_rows(6)),
        "alpaca": write_csv(tmp_path / "alpaca.csv", alpaca_rows(4)),
    }


def test_mixed_sources_with_a_split(files, smollm2_tokenizer):
    config = TrainConfig(dataset=[files["qa"], files["chat"], files["alpaca"]], val_split_ratio=0.2, max_length=256)
    template = get_template("default", smollm2_tokenizer)
    train, evaluation, summary = prepare_datasets(config, smollm2_tokenizer, template)

    assert len(train) + len(evaluation) == 22
    assert len(evaluation) == round(22 * 0.2)
    assert summary.formats == {"query-response": 12, "messages": 6, "alpaca": 4}
    assert [(s.path, s.split, s.rows) for s in summary.sources] == [
        (files["qa"], "train", 12), (files["chat"], "train", 6), (files["alpaca"], "train", 4)
    ]
    assert summary.eval_from == "split"
    assert summary.train.samples == len(train)
    assert summary.eval.samples == len(evaluation)
    assert summary.train.tokens == sum(len(s["input_ids"]) for s in train)
    assert summary.train.learned_tokens == sum(
        1 for s in train for label in s["labels"][1:] if label != IGNORE_INDEX
    )
    for sample in train:
        assert set(sample) == {"input_ids", "labels"}
        assert len(sample["input_ids"]) == len(sample["labels"]) <= 256
        assert sample["input_ids"] != sample["labels"]  # the prompt is masked
    assert json.loads(json.dumps(summary.to_dict()))["formats"]["alpaca"] == 4
    text = summary.describe()
    assert "22 training rows" in text and "query-response 12" in text and "template: default" in text
    assert f"train: {len(train)} samples" in text and "split off the training rows" in text
    assert summary.fingerprint in text and len(summary.fingerprint) == 64


def test_fingerprint_follows_the_data_not_the_order(files, smollm2_tokenizer, tmp_path):
    template = get_template("chatml", smollm2_tokenizer)
    specs = [files["qa"], files["chat"]]
    _, _, first = prepare_datasets(TrainConfig(dataset=specs, seed=1), smollm2_tokenizer, template)
    train, _, again = prepare_datasets(TrainConfig(dataset=specs, seed=1), smollm2_tokenizer, template)
    _, _, reseeded = prepare_datasets(TrainConfig(dataset=specs, seed=7), smollm2_tokenizer, template)
    assert first.fingerprint == again.fingerprint == reseeded.fingerprint
    changed = write_jsonl(tmp_path / "qa2.jsonl", qa_rows(11) + [{"query": "new?", "response": "New."}])
    _, _, other = prepare_datasets(TrainConfig(dataset=[changed, files["chat"]], seed=1), smollm2_tokenizer, template)
    assert other.fingerprint != first.fingerprint
    _, _, masked_differently = prepare_datasets(
        TrainConfig(dataset=specs, seed=1, train_on_prompt=True), smollm2_tokenizer, template
    )
    assert masked_differently.fingerprint != first.fingerprint


def test_validation_files_max_samples_and_system(files, smollm2_tokenizer):
    config = TrainConfig(dataset=[files["qa"]], val_dataset=[files["chat"]], max_samples=5, system="Be brief.")
    train, evaluation, summary = prepare_datasets(config, smollm2_tokenizer, get_template("chatml", smollm2_tokenizer))
    assert (len(train), len(evaluation), summary.eval_from) == (5, 6, "val_dataset")
    assert [(s.split, s.rows) for s in summary.sources] == [("train", 12), ("eval", 6)]
    decoded = smollm2_tokenizer.decode(train[0]["input_ids"])
    assert decoded.startswith("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nq question")


def test_a_bad_row_fails_before_any_tokenization(tmp_path, smollm2_tokenizer):
    path = write_jsonl(tmp_path / "meetings.jsonl", qa_rows(16) + [{"foo": 1, "bar": 2}])
    template = CountingTemplate(smollm2_tokenizer)
    with pytest.raises(DataError, match=r"meetings\.jsonl line 17: the row has keys \['bar', 'foo'\], which match no dataset format"):
        prepare_datasets(TrainConfig(dataset=[path]), smollm2_tokenizer, template)
    assert template.calls == 0


def test_bad_rows_skipped_and_counted(tmp_path, smollm2_tokenizer):
    path = tmp_path / "meetings.jsonl"
    path.write_text(
        "".join(json.dumps(r) + "\n" for r in qa_rows(3))
        + "{broken\n"
        + json.dumps({"query": "Q", "response": ""}) + "\n"
    )
    config = TrainConfig(dataset=[str(path)], skip_bad_rows=True)
    train, evaluation, summary = prepare_datasets(config, smollm2_tokenizer, get_template("chatml", smollm2_tokenizer))
    assert (len(train), evaluation, summary.skipped_rows) == (3, None, 2)
    assert summary.skipped_examples[0].startswith(f"{path} line 4: the line is not valid JSON")
    assert summary.skipped_examples[1] == f"{path} line 5: message 2 (assistant) is empty; give it text or remove the row."
    assert "skipped 2 bad rows" in summary.describe()


def test_length_policy_counts_reach_the_summary(tmp_path, smollm2_tokenizer):
    long_rows = [{"query": "word " * 200, "response": "Short answer."} for _ in range(2)]
    path = write_jsonl(tmp_path / "d.jsonl", qa_rows(3) + long_rows)
    template = get_template("chatml", smollm2_tokenizer)
    _, _, dropped = prepare_datasets(TrainConfig(dataset=[path], max_length=64), smollm2_tokenizer, template)
    assert (dropped.train.samples, dropped.train.dropped_too_long, dropped.train.truncated) == (3, 2, 0)
    assert "2 dropped for being over 64 tokens" in dropped.describe()
    _, _, cut = prepare_datasets(TrainConfig(dataset=[path], max_length=64, truncation="left"), smollm2_tokenizer, template)
    assert (cut.train.samples, cut.train.dropped_too_long, cut.train.truncated) == (5, 0, 2)
    assert "2 cut to 64 tokens from the left" in cut.describe()


def test_everything_dropped_is_an_error(tmp_path, smollm2_tokenizer):
    path = write_jsonl(tmp_path / "d.jsonl", qa_rows(2))
    with pytest.raises(DataError, match="Every training sample was dropped .*raise --max-length or pass --truncation left"):
        prepare_datasets(TrainConfig(dataset=[path], max_length=8), smollm2_tokenizer, get_template("chatml", smollm2_tokenizer))


@pytest.mark.parametrize(
    "options, message",
    [
        ({"val_split_ratio": 1.0}, r"--val-split-ratio is 1.0; give a number from 0 up to \(not including\) 1"),
        ({"val_split_ratio": 0.9}, "--val-split-ratio 0.9 of 2 rows leaves no training rows"),
        ({"max_samples": 0}, "--max-samples is 0; give a positive number"),
        ({"dataset_format": "alpaca"}, "lacks 'instruction', 'output'"),
    ],
)
def test_bad_options(tmp_path, smollm2_tokenizer, options, message):
    path = write_jsonl(tmp_path / "d.jsonl", qa_rows(2))
    with pytest.raises(DataError, match=message):
        prepare_datasets(TrainConfig(dataset=[path], **options), smollm2_tokenizer, get_template("chatml", smollm2_tokenizer))


def test_parquet_with_nested_messages(tmp_path, smollm2_tokenizer):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "chat.parquet"
    pq.write_table(pa.Table.from_pylist(chat_rows(3)), path)
    train, _, summary = prepare_datasets(
        TrainConfig(dataset=[str(path)]), smollm2_tokenizer, get_template("chatml", smollm2_tokenizer)
    )
    assert summary.formats == {"messages": 3}
    learned = {smollm2_tokenizer.decode([x for x in s["labels"] if x != IGNORE_INDEX]) for s in train}
    assert learned == {f"Topic {i} is fine.<|im_end|>" for i in range(3)}


def test_a_template_that_drops_the_rows_tools_is_named_with_the_way_out(tmp_path, smollm2_tokenizer, tiny_llama_dir, capsys):
    from tuneforge.config import EvalConfig
    from tuneforge.datasets import device_actions
    from tuneforge.evaluation import run_eval

    rows = write_jsonl(tmp_path / "actions.jsonl", device_actions.load("train")[:2])
    config = TrainConfig(dataset=[rows], max_length=4096)
    # SmolLM2's own chat template has no place for tools: the rows' tools vanish from every sample
    _, _, summary = prepare_datasets(config, smollm2_tokenizer, get_template("default", smollm2_tokenizer))
    assert "renders no tools, but the rows of" in summary.tools_dropped and "--template" in summary.tools_dropped
    assert "warning: the chat template" in summary.describe()
    assert summary.to_dict()["tools_dropped"] == summary.tools_dropped  # kept in the run record's data
    # chatml writes them into the system turn: nothing to say
    _, _, summary = prepare_datasets(config, smollm2_tokenizer, get_template("chatml", smollm2_tokenizer))
    assert summary.tools_dropped == "" and "warning" not in summary.describe()

    # tuneforge eval says the same before it answers
    run_eval(EvalConfig(model=tiny_llama_dir, dataset="device-actions", split="test", limit=1, max_new_tokens=2))
    assert "warning: the chat template 'default' renders no tools, but the rows of 'device-actions' (row 1 on)" in capsys.readouterr().err
    run_eval(EvalConfig(model=tiny_llama_dir, dataset="device-actions", split="test", limit=1, max_new_tokens=2,
                        template="chatml", allow_template_drift=True))
    assert "warning: the chat template 'chatml'" not in capsys.readouterr().err
