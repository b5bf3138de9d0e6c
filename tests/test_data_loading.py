"""Reading data files and registered datasets, row by row with file and line."""

import json

import pytest

import tuneforge
from tuneforge.data import BadRows, load_mixture, load_source, read_rows, resolve_spec
from tuneforge.errors import DataError
from tuneforge.plugins import PluginManager, reset_plugin_manager
from tuneforge.records import DatasetSource

ROWS = [{"query": f"q{i}", "response": f"r{i}"} for i in range(5)]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_jsonl_rows_keep_their_line_numbers(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps(ROWS[0]) + "\n\n" + json.dumps(ROWS[1]) + "\n")
    rows = read_rows(str(path))
    assert [r.data for r in rows] == ROWS[:2]
    assert [r.where for r in rows] == [f"{path} line 1", f"{path} line 3"]


def test_invalid_json_line_fails_or_is_skipped(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps(ROWS[0]) + "\n{not json\n" + json.dumps(ROWS[1]) + "\n")
    with pytest.raises(DataError, match=rf"^{path} line 2: the line is not valid JSON .*; fix or remove the line\.$"):
        read_rows(str(path))
    bad = BadRows(skip=True)
    assert len(read_rows(str(path), bad=bad)) == 2
    assert bad.count == 1


def test_json_list_rows_get_line_numbers(tmp_path):
    path = tmp_path / "d.json"
    path.write_text(json.dumps(ROWS[:3], indent=2))
    rows = read_rows(str(path))
    assert [r.data for r in rows] == ROWS[:3]
    lines = path.read_text().splitlines()
    for row in rows:
        number = int(row.where.rsplit(" ", 1)[1])
        assert lines[number - 1].strip() == "{"
    assert rows[0].where == f"{path} line 2"


def test_json_object_with_data_list(tmp_path):
    path = tmp_path / "d.json"
    path.write_text('{"version": 1, "meta": {"data": "no"},\n "data": [\n' + ",\n".join(json.dumps(r) for r in ROWS[:2]) + "\n]}")
    rows = read_rows(str(path))
    assert [r.data for r in rows] == ROWS[:2]
    assert [r.where for r in rows] == [f"{path} line 3", f"{path} line 4"]


def test_json_without_rows_is_refused(tmp_path):
    path = tmp_path / "d.json"
    path.write_text('{"rows": []}')
    with pytest.raises(DataError, match="holds a JSON dict without a 'data' list; write a list of rows"):
        read_rows(str(path))
    path.write_text("[1, 2")
    with pytest.raises(DataError, match=r"is not valid JSON \(.* at line 1, column 6\)"):
        read_rows(str(path))


def test_csv_rows(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text('instruction,input,output\nSay hi,,Hi\n"Multi\nline",x,y\nshort,row\n')
    bad = BadRows(skip=True)
    rows = read_rows(str(path), bad=bad)
    assert [r.data for r in rows] == [
        {"instruction": "Say hi", "input": "", "output": "Hi"},
        {"instruction": "Multi\nline", "input": "x", "output": "y"},
    ]
    assert [r.where for r in rows] == [f"{path} line 2", f"{path} line 3"]
    assert bad.examples == [f"{path} line 5: the row has fewer values than the 3 columns of the header; add the missing values."]


def test_parquet_rows(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "d.parquet"
    pq.write_table(pa.Table.from_pylist(ROWS), path)
    rows = read_rows(str(path))
    assert [r.data for r in rows] == ROWS
    assert rows[4].where == f"{path} row 5"


def test_unknown_extension_and_missing_file(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("hello")
    with pytest.raises(DataError, match=r"has the extension '\.txt', which tuneforge cannot read; convert it to \.jsonl, \.json, \.csv, \.parquet\."):
        load_source(str(path))
    with pytest.raises(DataError, match=r"^Data file '.*missing\.jsonl' does not exist; check the path\.$"):
        load_source(str(tmp_path / "missing.jsonl"))
    with pytest.raises(DataError, match="is a directory"):
        load_source(str(tmp_path))
    with pytest.raises(DataError, match="is neither a data file nor a registered dataset"):
        load_source("no-such-dataset")


def test_empty_file_is_an_error(tmp_path):
    path = tmp_path / "empty.jsonl"
    path.write_text("\n")
    with pytest.raises(DataError, match="holds no rows"):
        load_source(str(path))


def test_mixture_concatenates_and_shuffles_with_the_seed(tmp_path):
    a = write_jsonl(tmp_path / "a.jsonl", ROWS)
    b = write_jsonl(tmp_path / "b.jsonl", [{"query": f"b{i}", "response": "x"} for i in range(7)])
    rows, counts = load_mixture([str(a), str(b)], seed=1)
    assert [(source.path, n) for source, n in counts] == [(str(a), 5), (str(b), 7)]
    assert len(rows) == 12
    assert {r.source for r in rows} == {str(a), str(b)}
    again, _ = load_mixture([str(a), str(b)], seed=1)
    other, _ = load_mixture([str(a), str(b)], seed=2)
    assert [r.where for r in rows] == [r.where for r in again]
    assert [r.where for r in rows] != [r.where for r in other]
    assert [r.where for r in rows] != [r.where for r in sorted(rows, key=lambda r: (r.source, int(r.where.split()[-1])))]


class DatasetPlugin:
    def __init__(self, directory):
        self.directory = directory

    @tuneforge.hookimpl
    def tuneforge_datasets(self):
        yield DatasetSource(
            name="test-minutes",
            description="minutes for the data tests",
            resolve=lambda split: str(self.directory / f"{split}.jsonl"),
            splits=("train", "test"),
        )


@pytest.fixture
def registered_dataset(tmp_path):
    write_jsonl(tmp_path / "train.jsonl", ROWS)
    write_jsonl(tmp_path / "test.jsonl", ROWS[:2])
    manager = PluginManager()
    manager.load_builtins()
    manager.register_plugin(DatasetPlugin(tmp_path), "test-minutes", "test-data", "0")
    reset_plugin_manager(manager)
    yield tmp_path
    reset_plugin_manager(None)


def test_registered_dataset_and_split(registered_dataset):
    source, rows = load_source("test-minutes")
    assert (source.dataset, source.split, len(rows)) == ("test-minutes", "train", 5)
    source, rows = load_source("test-minutes:test")
    assert (source.split, source.path, len(rows)) == ("test", str(registered_dataset / "test.jsonl"), 2)
    assert rows[0].where == f"{registered_dataset / 'test.jsonl'} line 1"


def test_registered_dataset_errors(registered_dataset):
    with pytest.raises(DataError, match="Dataset 'test-minutes' has no split 'dev'; choose one of train, test"):
        resolve_spec("test-minutes:dev")
    with pytest.raises(DataError, match="Did you mean 'test-minutes'"):
        resolve_spec("test-minute")
    (registered_dataset / "test.jsonl").unlink()
    with pytest.raises(DataError, match="resolved to .*test.jsonl', which does not exist"):
        resolve_spec("test-minutes:test")
