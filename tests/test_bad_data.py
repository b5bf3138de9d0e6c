"""The bad-data corpus: every broken kind of data file, through `tuneforge sft` and `tuneforge rlhf --method dpo`.

Each kind is one line of ``CASES``: a name, the file's name, how to write its bytes
for a method (``make(method)``, around that method's good rows), the words its
one-sentence error must hold, and whether ``--skip-bad-rows`` gets past it (a bad
``row``) or not (a ``file`` that cannot be read). Every case runs through the
command line in this process and must exit non-zero with one line on stderr naming
the file (no traceback, nothing else printed), leaving an earlier finished run in
``--output-dir`` (given with ``--overwrite-output-dir``) untouched to the byte. Data
is read before any weights load, so a case costs about a tokenizer load; a few
cases also run as real subprocesses. With ``--skip-bad-rows`` each bad row is
skipped and counted while each unreadable file still fails. Beyond the table,
random JSON anywhere in good rows must give a sample or one sentence, and a 50 MB
row that ``--max-length`` drops is measured for memory.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tuneforge.cli import cli
from tuneforge.config import SFTConfig
from tuneforge.data import read_rows
from tuneforge.data.pipeline import prepare_datasets
from tuneforge.errors import DataError

METHODS = ("sft", "dpo")
QUESTION = "What is 2 plus 2?"


def good(method: str, i: int = 0, text: str = "") -> dict:
    question = f"What is {i} plus {i}?{text}"
    if method == "sft":
        return {"messages": [{"role": "user", "content": question}, {"role": "assistant", "content": f"{2 * i}."}]}
    return {"prompt": question, "chosen": f"{2 * i}.", "rejected": f"{2 * i + 1}."}


def line(row) -> str:
    return json.dumps(row, ensure_ascii=False) + "\n"


def jsonl(method: str, *after: str) -> bytes:
    """A good row, then ``after`` (raw lines), as UTF-8: the bad line is line 2."""
    return (line(good(method)) + "".join(after)).encode()


def json_list(method: str, item: str) -> bytes:
    """A JSON list over several lines; ``item`` (raw JSON) starts on line 3."""
    return f"[\n{json.dumps(good(method))},\n{item}\n]\n".encode()


def csv_header(method: str) -> str:
    return "query,response\n" if method == "sft" else "prompt,chosen,rejected\n"


def csv_row(method: str, text: str = "") -> str:
    return f"q{text},a\n" if method == "sft" else f"q{text},a,b\n"


def parquet_bytes(method: str) -> bytes:
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [{"query": f"q{i}", "response": f"r{i}"} if method == "sft" else good(method, i) for i in range(20)]
    buffer = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows), buffer)
    return buffer.getvalue()


def per_method(sft_row: dict | str, dpo_row: dict | str) -> Callable[[str], bytes]:
    """A jsonl whose line 2 is ``sft_row`` or ``dpo_row`` (a dict, or raw JSON text)."""

    def make(method: str) -> bytes:
        row = sft_row if method == "sft" else dpo_row
        return jsonl(method, row if isinstance(row, str) else line(row))

    return make


def deep(levels: int) -> str:
    return "[" * levels + "]" * levels


def huge() -> str:
    return "9" * 5000


@dataclass
class Case:
    name: str
    file: str
    make: Callable[[str], bytes] | str | None  # "dir": a directory of that name; None: nothing there
    expect: str  # a regex the sentence must match, after the file's path
    level: str  # "file": fails even with --skip-bad-rows; "row": skipped and counted with it
    methods: tuple[str, ...] = METHODS


U = {"role": "user", "content": QUESTION}

CASES = [
    # --- the file cannot be read as text --------------------------------------------------
    Case("latin-1 jsonl", "d.jsonl", lambda m: (line(good(m)) + line(good(m, 1, " Café"))).encode("latin-1"),
         r" line 2 is not UTF-8 text \(byte 0xe9 at column \d+\); save the file as UTF-8", "file"),
    Case("latin-1 json", "d.json", lambda m: json_list(m, json.dumps(good(m, 1, " Café"), ensure_ascii=False)).decode().encode("latin-1"),
         r" line 3 is not UTF-8 text \(byte 0xe9", "file"),
    Case("latin-1 csv", "d.csv", lambda m: (csv_header(m) + csv_row(m) + csv_row(m, "Café")).encode("latin-1"),
         r" line 3 is not UTF-8 text \(byte 0xe9", "file"),
    Case("windows-1252 quotes", "d.jsonl", lambda m: (line(good(m)) + line(good(m, 1, " “quoted”"))).encode("cp1252"),
         r" line 2 is not UTF-8 text \(byte 0x93", "file"),
    Case("UTF-16 without a byte-order mark", "d.jsonl", lambda m: jsonl(m).decode().encode("utf-16-le"),
         r" line 1 holds a NUL byte, so the file is not text \(a binary file, or UTF-16 without a byte-order mark\)", "file"),
    Case("UTF-16 with a mark but a broken surrogate", "d.jsonl",
         lambda m: "\ufeff".encode("utf-16-le") + jsonl(m).decode().encode("utf-16-le") + b"\x00\xd8" + "x\n".encode("utf-16-le"),
         r" line 2 is not valid UTF-16 text although the file starts with a UTF-16 byte-order mark; save the file as UTF-8", "file"),
    Case("NUL bytes in a line", "d.jsonl", lambda m: jsonl(m, '{"query": "a\x00\x00b", "response": "c"}\n'),
         r" line 2 holds a NUL byte", "file"),
    Case("NUL bytes in a csv", "d.csv", lambda m: (csv_header(m) + csv_row(m, "\x00")).encode(), r" line 2 holds a NUL byte", "file"),
    Case("gzip file named .jsonl", "d.jsonl", lambda m: gzip.compress(jsonl(m), mtime=0),
         r" is gzip-compressed, not text; decompress it first", "file"),
    Case("parquet file named .jsonl", "d.jsonl", parquet_bytes, r" is a parquet file, not text; give it the \.parquet extension", "file"),
    Case("zip file named .csv", "d.csv", lambda m: b"PK\x03\x04\x14\x00\x00\x00\x08\x00" + bytes(range(40)),
         r" is a zip archive, not text", "file"),
    Case("image named .jsonl", "d.jsonl", lambda m: b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(64)),
         r" line 1 is not UTF-8 text \(byte 0x89 at column 1\)", "file"),
    Case("random bytes named .json", "d.json", lambda m: bytes((i * 97 + 13) % 256 for i in range(512)),
         r" line 1 (is not UTF-8 text|holds a NUL byte)", "file"),
    Case("csv with carriage-return line ends", "d.csv", lambda m: (csv_header(m) + csv_row(m) + csv_row(m)).replace("\n", "\r").encode(),
         r" line 1: a carriage return \(\\r\) ends a line outside quotes; save the file with \\n or \\r\\n line ends", "file"),
    Case("truncated parquet", "d.parquet", lambda m: parquet_bytes(m)[: len(parquet_bytes(m)) // 2],
         r" is not a readable parquet file \(.*\); write it again, or convert it to jsonl", "file"),
    Case("text named .parquet", "d.parquet", lambda m: (csv_header(m) + csv_row(m)).encode(),
         r" is not a readable parquet file", "file"),
    # --- the file holds no rows -------------------------------------------------------------
    Case("empty jsonl", "d.jsonl", lambda m: b"", r" holds no rows; check the file", "file"),
    Case("only blank lines", "d.jsonl", lambda m: b"\n   \n\t\n\n", r" holds no rows", "file"),
    Case("empty json", "d.json", lambda m: b"", r" is empty; write a JSON list of rows into it", "file"),
    Case("empty csv", "d.csv", lambda m: b"", r" holds no rows", "file"),
    Case("csv with only a header", "d.csv", lambda m: csv_header(m).encode(), r" holds no rows", "file"),
    Case("json that is a string", "d.json", lambda m: b'"rows"', r" holds a JSON str without a 'data' list; write a list of rows", "file"),
    Case("json object without data", "d.json", lambda m: b'{"rows": []}', r" holds a JSON dict without a 'data' list", "file"),
    Case("invalid json", "d.json", lambda m: json_list(m, '{"query": '), r" is not valid JSON \(.* at line 4, column 1\)", "file"),
    Case("json nested past Python's recursion limit", "d.json", lambda m: json_list(m, '{"query": "q", "x": ' + deep(50_000) + "}"),
         r" line 3 is nested more than 100 levels deep, too deep to read; flatten the rows", "file"),
    Case("missing file", "missing.jsonl", None, r"' does not exist; check the path", "file"),
    Case("a directory named like a file", "d.jsonl", "dir", r"' is a directory; pass a data file", "file"),
    Case("unknown extension", "d.txt", lambda m: jsonl(m), r"' has the extension '\.txt', which tuneforge cannot read", "file"),
    # --- one bad row among good ones ------------------------------------------------------------
    Case("invalid JSON line", "d.jsonl", lambda m: jsonl(m, "{not json\n"), r" line 2: the line is not valid JSON \(.*\); fix or remove the line", "row"),
    Case("jsonl line that is a list", "d.jsonl", lambda m: jsonl(m, "[1, 2]\n"), r" line 2: the row is a list, not an object with named fields", "row"),
    Case("jsonl line that is a string", "d.jsonl", lambda m: jsonl(m, '"just text"\n'), r" line 2: the row is a str, not an object", "row"),
    Case("integer of 5000 digits (jsonl)", "d.jsonl", lambda m: jsonl(m, line(good(m))[:-2] + ', "id": ' + huge() + "}\n"),
         r" line 2: the line holds an integer of 5,000 digits, more than the 4,300 Python reads; write the number as a string", "row"),
    Case("integer of 5000 digits (json)", "d.json", lambda m: json_list(m, '{"id": ' + huge() + "}"),
         r" line 3: the row holds an integer of 5,000 digits", "row"),
    Case("integer of 5000 digits in a csv JSON column", "d.csv",
         lambda m: (csv_header(m) + csv_row(m) + (f'"[{huge()}]",a\n' if m == "sft" else f'"[{huge()}]",a,b\n')).encode(),
         r" line 3: the '(query|prompt)' value holds an integer of 5,000 digits", "row", ("dpo",)),
    Case("row nested past Python's recursion limit", "d.jsonl", lambda m: jsonl(m, '{"query": "q", "x": ' + deep(50_000) + "}\n"),
         r" line 2: the line is nested more than 100 levels deep; flatten it", "row"),
    Case("row nested 300 levels", "d.jsonl", lambda m: jsonl(m, '{"query": "q", "x": ' + deep(300) + "}\n"),
         r" line 2: the line is nested more than 100 levels deep", "row"),
    Case("json row nested 300 levels", "d.json", lambda m: json_list(m, '{"x": ' + deep(300) + "}"),
         r" line 3: the row is nested more than 100 levels deep", "row"),
    Case("lone surrogate escape", "d.jsonl", lambda m: jsonl(m, line(good(m))[:-2] + ', "note": "\\ud800"}\n'),
         r" line 2: the line holds \\ud800, half of a UTF-16 surrogate pair and no character", "row"),
    Case("keys of no format", "d.jsonl", lambda m: jsonl(m, line({"foo": 1, "bar": 2})),
         r" line 2: the row has keys \['bar', 'foo'\], which match no dataset format", "row"),
    Case("a thousand keys of no format", "d.jsonl", lambda m: jsonl(m, line({f"key{i}": i for i in range(1000)})),
         r" line 2: the row has keys \['key0', .*, \.\.\.\], which match no dataset format", "row"),
    # --- wrong types: conversations ------------------------------------------------------------
    Case("messages is a number", "d.jsonl", per_method({"messages": 5}, ""), r" line 2: the 'messages' value is a int; it must be a list", "row", ("sft",)),
    Case("messages are strings", "d.jsonl", per_method({"messages": ["hi", "there"]}, ""),
         r" line 2: message 1 is 'hi'; each message must be an object with 'role' and 'content'", "row", ("sft",)),
    Case("a 1 MB message that is no object", "d.jsonl", per_method({"messages": [["x" * 1_000_000]]}, ""),
         r" line 2: message 1 is \['x+\.\.\.x+'\]; each message must be an object", "row", ("sft",)),
    Case("role is a number", "d.jsonl", per_method({"messages": [{"role": 1, "content": "a"}]}, ""),
         r" line 2: message 1 has role 1; use one of system, user, assistant, tool", "row", ("sft",)),
    Case("content is a list of numbers", "d.jsonl", per_method({"messages": [{"role": "user", "content": [1, 2]}]}, ""),
         r" line 2: message 1 \(user\) part 1 is 1; a part must be an object whose 'type' is one of text, image_url", "row", ("sft",)),
    Case("content is an object", "d.jsonl", per_method({"messages": [U, {"role": "assistant", "content": {"text": "4"}}]}, ""),
         r" line 2: message 2 \(assistant\) has content of type dict; it must be text", "row", ("sft",)),
    Case("text part holds a number", "d.jsonl", per_method({"messages": [{"role": "user", "content": [{"type": "text", "text": 4}]}]}, ""),
         r" line 2: message 1 \(user\) part 1 is a text part whose 'text' is a int; it must be text", "row", ("sft",)),
    Case("tool_calls is text", "d.jsonl", per_method({"messages": [U, {"role": "assistant", "content": "", "tool_calls": "call"}]}, ""),
         r" line 2: message 2 \(assistant\) has 'tool_calls' 'call'; it must be a list of calls", "row", ("sft",)),
    Case("tool call without a name", "d.jsonl",
         per_method({"messages": [U, {"role": "assistant", "content": "", "tool_calls": [{"function": {"arguments": "{}"}}]}]}, ""),
         r" line 2: message 2 \(assistant\) has tool call 1 .*; a call must be", "row", ("sft",)),
    Case("tools are numbers", "d.jsonl", per_method({"messages": [U, {"role": "assistant", "content": "4"}], "tools": [1, 2]}, ""),
         r" line 2: the 'tools' value is \[1, 2\]; it must be a list of function descriptions", "row", ("sft",)),
    Case("sharegpt turns are an object", "d.jsonl", per_method({"conversations": {"from": "human"}}, ""),
         r" line 2: the 'conversations' value is a dict; it must be a list", "row", ("sft",)),
    Case("alpaca instruction is an object", "d.jsonl", per_method({"instruction": {"a": 1}, "output": "b"}, ""),
         r" line 2: the 'instruction' value is a dict; it must be text", "row", ("sft",)),
    # --- wrong types: preference pairs ---------------------------------------------------------
    Case("chosen is a list of numbers", "d.jsonl", per_method("", {"prompt": QUESTION, "chosen": [1, 2], "rejected": "5."}),
         r" line 2: message 1 of 'chosen' is 1; each message must be an object", "row", ("dpo",)),
    Case("chosen content is an object", "d.jsonl",
         per_method("", {"prompt": QUESTION, "chosen": {"role": "assistant", "content": {"a": 1}}, "rejected": "5."}),
         r" line 2: 'chosen' has content of type dict; it must be text", "row", ("dpo",)),
    Case("rejected tool_calls is text", "d.jsonl",
         per_method("", {"prompt": QUESTION, "chosen": "4.", "rejected": {"role": "assistant", "content": "", "tool_calls": "x"}}),
         r" line 2: 'rejected' has 'tool_calls' 'x'; it must be a list of calls", "row", ("dpo",)),
    Case("pair tools are text", "d.jsonl", per_method("", {**good("dpo"), "tools": "search"}),
         r" line 2: the 'tools' value is 'search'; it must be a list of function descriptions", "row", ("dpo",)),
    Case("pair history is text", "d.jsonl", per_method("", {**good("dpo"), "history": "earlier"}),
         r" line 2: the 'history' value is 'earlier'; it must be a list of \[user, assistant\] pairs", "row", ("dpo",)),
    Case("prompt content is a list", "d.jsonl",
         per_method("", {"prompt": {"role": "user", "content": [3]}, "chosen": "4.", "rejected": "5."}),
         r" line 2: message 1 \(user\) part 1 is 3; a part must be an object whose 'type' is one of text", "row", ("dpo",)),
    Case("chosen equals rejected", "d.jsonl", per_method("", {"prompt": QUESTION, "chosen": "4.", "rejected": "4."}),
         r" line 2: the chosen and rejected answers are the same text", "row", ("dpo",)),
]

PARAMS = [pytest.param(case, method, id=f"{method}-{case.name}") for case in CASES for method in case.methods]


def write_case(case: Case, method: str, directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / case.file
    if case.make == "dir":
        path.mkdir()
    elif case.make is not None:
        path.write_bytes(case.make(method))
    return path


def tree_digest(root: Path) -> str:
    """Names, sizes, times and bytes of everything under ``root``."""
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        stat = path.lstat()
        digest.update(f"{path.relative_to(root)}|{stat.st_mode}|{stat.st_size}|{stat.st_mtime_ns}\n".encode())
        if path.is_file():
            digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


def args(method: str, model: str, data: Path, out: Path, *extra, max_length: int = 64) -> list[str]:
    command = ["sft"] if method == "sft" else ["rlhf", "--method", "dpo"]
    return [*command, "--model", model, "--dataset", str(data), "--output-dir", str(out), "--max-steps", "1",
            "--max-length", str(max_length), "--per-device-batch-size", "2", "--save-steps", "1", *map(str, extra)]


@pytest.fixture(scope="module")
def dpo_installed():
    pytest.importorskip("tuneforge_dpo")
    import tuneforge_dpo.plugin

    from tuneforge.testing import plugin_installed

    with plugin_installed(tuneforge_dpo.plugin, "dpo", "tuneforge-dpo"):
        yield


def good_file(method: str, directory: Path) -> Path:
    path = directory / f"good-{method}.jsonl"
    path.write_text("".join(line(good(method, i)) for i in range(8)))
    return path


@pytest.fixture(scope="module")
def finished_runs(tiny_llama_dir, tmp_path_factory, dpo_installed):
    """A finished run of each method, made with the same flags the cases use: the harness can succeed."""
    root = tmp_path_factory.mktemp("finished")
    runs = {}
    for method in METHODS:
        out = root / method
        result = CliRunner().invoke(cli, args(method, tiny_llama_dir, good_file(method, root), out))
        assert result.exit_code == 0, result.output
        assert (out / "tuneforge_run.json").is_file()
        runs[method] = out
    return runs


def assert_one_sentence(stderr: str, path: Path) -> str:
    assert "Traceback" not in stderr, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    sentence = lines[0]
    assert sentence.startswith("Error: ") and sentence.endswith("."), sentence
    assert str(path) in sentence, sentence
    assert len(sentence) < 600, sentence  # a row's megabytes never become the message
    return sentence


@pytest.mark.parametrize("case, method", PARAMS)
def test_bad_data_fails_with_one_sentence_and_touches_no_run(case, method, tiny_llama_dir, finished_runs, tmp_path):
    data = write_case(case, method, tmp_path / "data")
    out = tmp_path / "out"
    shutil.copytree(finished_runs[method], out)
    before = tree_digest(out)
    result = CliRunner().invoke(cli, args(method, tiny_llama_dir, data, out, "--overwrite-output-dir"))
    assert isinstance(result.exception, SystemExit), repr(result.exception)  # no exception escaped the CLI
    assert result.exit_code != 0
    sentence = assert_one_sentence(result.stderr, data)
    assert re.search(case.expect, sentence), f"{sentence!r} does not match {case.expect!r}"
    assert tree_digest(out) == before


@pytest.fixture(scope="module")
def tokenizer_and_template(tiny_llama_dir):
    from tuneforge import modeling

    tokenizer = modeling.load_tokenizer(tiny_llama_dir)
    return tokenizer, modeling.build_template("default", tokenizer)


def prepare(method: str, path: Path, tokenizer_and_template, skip: bool):
    tokenizer, template = tokenizer_and_template
    if method == "sft":
        config = SFTConfig(model="unused", dataset=[str(path)], skip_bad_rows=skip, max_length=64)
        return prepare_datasets(config, tokenizer, template)
    from tuneforge_dpo.data import prepare_preference_data
    from tuneforge_dpo.options import DPOOptions

    config = DPOOptions(model="unused", dataset=[str(path)], skip_bad_rows=skip, max_length=64)
    return prepare_preference_data(config, tokenizer, template, paired=True, method="dpo")


@pytest.mark.parametrize("case, method", PARAMS)
def test_skip_bad_rows_skips_bad_rows_but_not_unreadable_files(case, method, tokenizer_and_template, dpo_installed, tmp_path):
    data = write_case(case, method, tmp_path)
    if case.level == "file":
        with pytest.raises(DataError, match=case.expect):
            prepare(method, data, tokenizer_and_template, skip=True)
        return
    with pytest.raises(DataError, match=case.expect):
        prepare(method, data, tokenizer_and_template, skip=False)
    train, _, summary = prepare(method, data, tokenizer_and_template, skip=True)
    assert len(train) == 1 and summary.skipped_rows == 1
    assert re.search(case.expect, summary.skipped_examples[0])


def test_a_file_of_only_bad_rows_fails_even_when_skipping(tmp_path, tokenizer_and_template):
    path = tmp_path / "bad.jsonl"
    path.write_text("{not json\n{\"id\": " + huge() + "}\n")
    with pytest.raises(DataError, match=rf"^{path} holds no usable rows \(all 2 were bad and skipped\); fix the file"):
        prepare("sft", path, tokenizer_and_template, skip=True)


# --- files that look odd but are good -------------------------------------------------------------


@pytest.mark.parametrize("encoding", ["utf-8-sig", "utf-16", "utf-16-be", "utf-32"])
@pytest.mark.parametrize("suffix", [".jsonl", ".json", ".csv"])
def test_files_with_a_byte_order_mark_read_like_utf8(encoding, suffix, tmp_path):
    rows = [{"query": f"Grüße {i} — 日本", "response": f"r{i}"} for i in range(3)]
    if suffix == ".jsonl":
        text = "".join(line(row) for row in rows)
    elif suffix == ".json":
        text = json.dumps(rows, ensure_ascii=False, indent=1)
    else:
        text = "query,response\r\n" + "".join(f"{r['query']},{r['response']}\r\n" for r in rows)
    plain, marked = tmp_path / f"plain{suffix}", tmp_path / f"marked{suffix}"
    plain.write_bytes(text.encode("utf-8"))
    data = text.encode(encoding)
    if encoding == "utf-16-be":
        data = b"\xfe\xff" + data  # Python writes no mark for an explicit byte order
    marked.write_bytes(data)
    assert [r.data for r in read_rows(str(marked))] == [r.data for r in read_rows(str(plain))]
    assert [r.where.rsplit(" ", 1)[1] for r in read_rows(str(marked))] == [r.where.rsplit(" ", 1)[1] for r in read_rows(str(plain))]


def test_csv_field_over_128_kb_is_read(tmp_path):
    path = tmp_path / "long.csv"
    long_text = "word " * 60_000  # 300 KB, past the csv module's default field limit
    path.write_text(f'query,response\n"{long_text}",short\nq,r\n')
    rows = read_rows(str(path))
    assert [len(r.data["query"]) for r in rows] == [len(long_text), 1]
    import csv

    assert csv.field_size_limit() == 131072  # the process-wide default is left as it was


def test_large_integers_within_the_limit_and_moderate_nesting_are_fine(tmp_path):
    path = tmp_path / "d.jsonl"
    row = {"query": "q", "response": "r", "id": 10**4000, "extra": json.loads(deep(90))}
    path.write_text(line(row))
    (read,) = read_rows(str(path))
    assert read.data["id"] == 10**4000 and read.data["extra"] == json.loads(deep(90))


# --- real processes ---------------------------------------------------------------------------------

SUBPROCESS_CASES = ["latin-1 jsonl", "truncated parquet", "row nested past Python's recursion limit"]


def run_cli(arguments: list[str], plugins: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "TUNEFORGE_LOAD_PLUGINS": plugins, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "tuneforge.cli", *arguments], capture_output=True, text=True, env=env, timeout=300)


@pytest.mark.parametrize("name", SUBPROCESS_CASES)
def test_bad_data_in_a_real_process(name, tiny_llama_dir, finished_runs, tmp_path):
    (case,) = [c for c in CASES if c.name == name]
    method = "dpo" if SUBPROCESS_CASES.index(name) % 2 else "sft"
    data = write_case(case, method, tmp_path / "data")
    out = tmp_path / "out"
    shutil.copytree(finished_runs[method], out)
    before = tree_digest(out)
    result = run_cli(args(method, tiny_llama_dir, data, out, "--overwrite-output-dir"), "dpo")
    assert result.returncode == 1, result.stderr
    assert result.stdout == ""
    sentence = assert_one_sentence(result.stderr, data)
    assert re.search(case.expect, sentence), sentence
    assert tree_digest(out) == before


def test_a_foreign_output_dir_is_untouched_by_bad_data(tiny_llama_dir, tmp_path):
    """A folder of the user's: refused for being foreign, or for the data; either way nothing in it changes."""
    (case,) = [c for c in CASES if c.name == "UTF-16 without a byte-order mark"]
    data = write_case(case, "sft", tmp_path / "data")
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("my notes\n")
    before = tree_digest(out)
    result = run_cli(args("sft", tiny_llama_dir, data, out), "")
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert "Traceback" not in result.stderr and len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    assert str(data) in lines[0] or str(out) in lines[0]
    assert tree_digest(out) == before


def test_skip_bad_rows_trains_on_the_good_rows(tiny_llama_dir, tmp_path):
    """Every row-level kind in one file: the run skips them, counts them and trains on the rest."""
    bad_lines = ["{not json\n", "[1, 2]\n", '{"id": ' + huge() + "}\n", '{"x": ' + deep(5000) + "}\n",
                 '{"query": "\\udc00", "response": "r"}\n', line({"messages": [U, {"role": "assistant", "content": {"a": 1}}]})]
    path = tmp_path / "mixed.jsonl"
    path.write_text("".join(line(good("sft", i)) for i in range(6)) + "".join(bad_lines))
    out = tmp_path / "out"
    result = CliRunner().invoke(cli, args("sft", tiny_llama_dir, path, out, "--skip-bad-rows"))
    assert result.exit_code == 0, result.output
    assert f"skipped 6 bad rows, first: {path} line 7: the line is not valid JSON" in result.stderr
    assert json.loads((out / "tuneforge_run.json").read_text())["data"]["skipped_rows"] == 6


# --- a long row that --max-length drops ------------------------------------------------------------

PEAK_RSS = """
import resource, subprocess, sys
result = subprocess.run(sys.argv[1:], capture_output=True, text=True)
sys.stderr.write(result.stderr)
print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)  # KiB on Linux
sys.exit(result.returncode)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="ru_maxrss is in KiB on Linux only")
def test_a_50_mb_row_that_max_length_drops_costs_no_gigabytes(tiny_llama_dir, tmp_path):
    """Measured on 2 cores: 9.5 GB peak and 1:45 before the length bound, 0.56 GB and 11 s with it."""
    rows = [good("sft", i) for i in range(16)]
    rows.insert(7, {"messages": [{"role": "user", "content": "Summarise: " + "lorem ipsum dolor sit amet " * 1_950_000},
                                 {"role": "assistant", "content": "Lorem."}]})
    path = tmp_path / "long.jsonl"
    path.write_text("".join(line(row) for row in rows))
    assert path.stat().st_size > 50_000_000
    out = tmp_path / "out"
    env = {**os.environ, "TUNEFORGE_LOAD_PLUGINS": "", "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-c", PEAK_RSS, sys.executable, "-m", "tuneforge.cli", *args("sft", tiny_llama_dir, path, out, max_length=256)]
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "train: 16 samples" in result.stderr and "1 dropped for being over 256 tokens" in result.stderr
    peak_gib = int(result.stdout.strip().splitlines()[-1]) / 2**20
    assert peak_gib < 2.0, f"peak RSS {peak_gib:.2f} GiB"


def test_the_length_bound_never_drops_a_row_that_fits(tokenizer_and_template):
    """Rows around the bound, built of the vocabulary's longest tokens (the worst case): a row it calls over is over."""
    from tuneforge.data.tokenize import LengthBound

    tokenizer, template = tokenizer_and_template
    max_length = 64
    bound = LengthBound(template, max_length)
    limit = bound.chars_limit
    assert limit == max(map(len, tokenizer.get_vocab())) * max_length
    called_over = 0
    for unit in ["#" * 80, "\n" + " " * 80, "=" * 64, "lorem ipsum ", "日本語", "a"]:
        for share in (0.5, 0.9, 0.99, 1.0, 1.01, 1.05, 1.2, 2.0):
            text = unit * max(1, int(limit * share) // len(unit))
            messages = [{"role": "user", "content": text}, {"role": "assistant", "content": "ok"}]
            over = bound.surely_over(messages)
            tokens = len(template.encode(messages).input_ids)
            assert not over or tokens > max_length, (unit[:5], share, tokens)
            called_over += over
    assert called_over >= 6  # past twice the bound every kind of text is called over


# --- any JSON in any field ---------------------------------------------------------------------------

JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20)
    | st.sampled_from(["user", "assistant", "system", "tool", "function", "text", "human", "gpt", ""]),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.sampled_from(["role", "content", "type", "text", "function", "name", "arguments", "from", "value", "x"]), inner, max_size=4),
    max_leaves=12,
)
ROW_KEYS = {
    "sft": ["messages", "tools", "conversations", "system", "instruction", "input", "output", "history", "query", "response"],
    "dpo": ["prompt", "chosen", "rejected", "tools", "history", "system", "messages", "rejected_response"],
}


CALL = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\": \"Vienna\"}"}}
TOOL = {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}
RICH_ROWS = {
    "sft": [
        {"messages": [{"role": "system", "content": "Be brief."}, U, {"role": "assistant", "content": "", "tool_calls": [CALL]},
                      {"role": "tool", "content": "sunny", "tool_call_id": "call_1"}, {"role": "assistant", "content": "Sunny."}],
         "tools": [TOOL]},
        {"system": "Be brief.", "conversations": [{"from": "human", "value": "Hi"}, {"from": "function_call", "value": {"name": "f", "arguments": {}}},
                                                  {"from": "observation", "value": "x"}, {"from": "gpt", "value": "Done."}]},
        {"instruction": "Add.", "input": "2 and 2", "output": "4", "history": [["Hi", "Hello."]]},
        {"messages": [{"role": "user", "content": [{"type": "text", "text": "Hi"}]}, {"role": "assistant", "content": "Hello."}]},
    ],
    "dpo": [
        {"prompt": [U], "chosen": [{"role": "assistant", "content": "4."}], "rejected": [{"role": "assistant", "content": "5."}],
         "history": [["Hi", "Hello."]], "system": "Be brief.", "tools": [TOOL]},
        {"messages": [U, {"role": "assistant", "content": "4."}], "rejected_response": "5."},
        {"chosen": [U, {"role": "assistant", "content": "4."}], "rejected": [U, {"role": "assistant", "content": "5."}]},
    ],
}


def _nodes(value, path=()):
    yield path
    children = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, child in children:
        yield from _nodes(child, (*path, key))


def _replaced(row, pick: int, value):
    """``row`` with one of its values (the ``pick``-th node, any depth) replaced by ``value``."""
    row = json.loads(json.dumps(row))
    paths = list(_nodes(row))[1:]
    *parents, last = paths[pick % len(paths)]
    target = row
    for key in parents:
        target = target[key]
    target[last] = value
    return row


def rows(method: str):
    """Rows of random JSON, and good rows with one value anywhere replaced by random JSON."""
    mutated = st.builds(_replaced, st.sampled_from(RICH_ROWS[method]), st.integers(0, 10_000), JSON_VALUES)
    return mutated | st.dictionaries(st.sampled_from(ROW_KEYS[method]), JSON_VALUES, min_size=1, max_size=4)


def test_rich_rows_are_good(tokenizer_and_template, dpo_installed, tmp_path):
    for method in METHODS:
        path = tmp_path / f"{method}.jsonl"
        path.write_text("".join(line(row) for row in RICH_ROWS[method]))
        train, _, summary = prepare(method, path, tokenizer_and_template, skip=False)
        assert len(train) == len(RICH_ROWS[method]) and summary.skipped_rows == 0


@pytest.mark.parametrize("template_name", ["default", "chatml"])
@pytest.mark.parametrize("method", METHODS)
def test_any_json_in_any_field_is_a_sample_or_one_sentence(method, template_name, tokenizer_and_template, dpo_installed, tmp_path):
    """Random JSON in the fields the formats read: every row trains or is refused with a DataError naming its line.

    The tokenizer's own (jinja) template and the core's chatml (Python) template see what gets through.
    """
    from tuneforge import modeling

    tokenizer = tokenizer_and_template[0]
    tokenizer_and_template = (tokenizer, modeling.build_template(template_name, tokenizer))

    @settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
    @given(row=rows(method))
    def check(row):
        path = tmp_path / "row.jsonl"
        path.write_text(line(row))
        try:
            prepare(method, path, tokenizer_and_template, skip=False)
        except DataError as exc:
            message = str(exc)
            assert message.startswith(f"{path} line 1: ") or message.startswith(("No usable", "Every training")), message
            assert "\n" not in message and len(message) < 600, message

    check()


def test_the_length_bound_stays_off_for_tokenizers_that_drop_characters(tokenizer_and_template):
    """A whitespace-splitting pre-tokenizer turns a long run of spaces into no token at all: no bound holds."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from tuneforge.data.tokenize import _keeps_every_character

    assert _keeps_every_character(tokenizer_and_template[0])  # byte-level BPE keeps every byte
    backend = Tokenizer(models.WordLevel({"[UNK]": 0, "a": 1}, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    dropping = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]")
    assert len(dropping("a" + " " * 10_000 + "a")["input_ids"]) == 2
    assert not _keeps_every_character(dropping)
