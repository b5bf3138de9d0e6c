"""Read dataset files row by row, keeping each row's file and line.

A dataset spec is a local file (``.jsonl``, ``.json``, ``.csv``, ``.parquet``) or a
registered dataset name, optionally ``NAME:SPLIT``. Files are read here rather than
through the ``datasets`` library so that every error can name the line it is about.
A file that cannot be read (not text, corrupt) fails whatever ``--skip-bad-rows``
says; a bad row inside a readable file goes to ``BadRows`` (see ``.text``).
"""

from __future__ import annotations

import bisect
import contextlib
import csv
import difflib
import json
import os
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from ..errors import DataError
from .rows import BadRows, Row
from .text import MAX_DEPTH, RowDecoder, deep_line, loads_row, read_text, row_problem, text_lines

# Longer fields are refused: the csv module holds a field whole while it reads it.
CSV_FIELD_LIMIT = 1 << 30


@dataclass
class Source:
    """Where a dataset spec points: a file, and the registered dataset it came from."""

    spec: str
    path: str
    dataset: str | None = None
    split: str | None = None


def resolve_spec(spec: str) -> Source:
    """Turn a spec (a path, ``NAME`` or ``NAME:SPLIT``) into the file to read."""
    spec = str(spec)
    path = Path(spec).expanduser()
    if path.is_file():
        return Source(spec, str(path))
    if path.is_dir():
        raise DataError(
            f"'{spec}' is a directory; pass a data file (.jsonl, .json, .csv or .parquet) or a registered dataset name."
        )
    from ..registry import get_registry

    registry = get_registry()
    name, split = spec, None
    if not registry.has("datasets", name) and ":" in spec:
        name, split = spec.rsplit(":", 1)
    if registry.has("datasets", name):
        record = registry.get("datasets", name)
        split = split or record.splits[0]
        if split not in record.splits:
            raise DataError(
                f"Dataset '{name}' has no split '{split}'; choose one of {', '.join(record.splits)} "
                f"(for example '{name}:{record.splits[0]}')."
            )
        resolved = str(record.resolve(split))
        if not Path(resolved).is_file():
            raise DataError(
                f"Dataset '{name}' split '{split}' resolved to '{resolved}', which does not exist; "
                f"reinstall the plugin that provides the dataset."
            )
        return Source(spec, resolved, name, split)
    if path.suffix.lower() in READERS or os.sep in spec or "/" in spec:
        raise DataError(f"Data file '{spec}' does not exist; check the path.")
    known = registry.names("datasets")
    close = difflib.get_close_matches(name, known, n=1)
    hint = f" Did you mean '{close[0]}'?" if close else ""
    raise DataError(
        f"'{spec}' is neither a data file nor a registered dataset (known datasets: {', '.join(known) or 'none'}); "
        f"check the path or the name.{hint}"
    )


# --- readers --------------------------------------------------------------------------------


def _read_jsonl(path: str, source: str, bad: BadRows) -> list[Row]:
    rows = []
    for number, line in text_lines(path):
        if not line.strip():
            continue
        where = f"{path} line {number}"
        try:
            rows.append(Row(loads_row(line, "the line"), where, source))
        except json.JSONDecodeError as exc:
            bad.report(where, f"the line is not valid JSON ({exc.msg} at column {exc.colno}); fix or remove the line")
        except DataError as exc:
            bad.report(where, str(exc))
    return rows


_WHITESPACE = " \t\n\r"


def _skip_ws(text: str, at: int) -> int:
    while at < len(text) and text[at] in _WHITESPACE:
        at += 1
    return at


def _array_positions(text: str, at: int, decoder: json.JSONDecoder) -> list[int]:
    """Character offsets of the items of the (valid) JSON array starting at ``at``."""
    positions = []
    at = _skip_ws(text, at + 1)
    while text[at] != "]":
        positions.append(at)
        _, at = decoder.raw_decode(text, at)
        at = _skip_ws(text, at)
        if text[at] == ",":
            at = _skip_ws(text, at + 1)
    return positions


def _data_key_position(text: str, at: int, decoder: json.JSONDecoder) -> int:
    """Offset of the value of the last 'data' key of the (valid) JSON object at ``at``."""
    found = -1
    at = _skip_ws(text, at + 1)
    while text[at] != "}":
        key, at = decoder.raw_decode(text, at)
        at = _skip_ws(text, _skip_ws(text, at) + 1)  # past ':'
        if key == "data":
            found = at
        _, at = decoder.raw_decode(text, at)
        at = _skip_ws(text, at)
        if text[at] == ",":
            at = _skip_ws(text, at + 1)
    return found


def _parse_json_file(path: str, text: str, decoder: RowDecoder):
    if not text.strip():
        raise DataError(f"{path} is empty; write a JSON list of rows into it or leave it out.")
    try:
        return decoder.decode(text)
    except json.JSONDecodeError as exc:
        raise DataError(
            f"{path} is not valid JSON ({exc.msg} at line {exc.lineno}, column {exc.colno}); fix the file "
            f"or write it as jsonl (one row per line)."
        ) from None
    except RecursionError:
        line = deep_line(text)
        raise DataError(
            f"{path}{f' line {line}' if line else ''} is nested more than {MAX_DEPTH} levels deep, too deep to "
            f"read; flatten the rows."
        ) from None


def _read_json(path: str, source: str, bad: BadRows) -> list[Row]:
    text = read_text(path)
    decoder = RowDecoder()
    document = _parse_json_file(path, text, decoder)
    start = _skip_ws(text, 0)
    if isinstance(document, list):
        items, array_at = document, start
    elif isinstance(document, dict) and isinstance(document.get("data"), list):
        items, array_at = document["data"], _data_key_position(text, start, decoder)
    else:
        raise DataError(
            f"{path} holds a JSON {type(document).__name__} without a 'data' list; write a list of rows "
            f"or an object {{\"data\": [rows]}}."
        )
    line_starts = [0] + [match.end() for match in re.finditer("\n", text)]
    positions = _array_positions(text, array_at, decoder)
    rows = []
    for n, (item, at) in enumerate(zip(items, positions)):
        where = f"{path} line {bisect.bisect_right(line_starts, at)}"
        end = positions[n + 1] if n + 1 < len(positions) else len(text)
        problem = row_problem(item, text[at:end], decoder, "the row")
        if problem:
            bad.report(where, problem)
            continue
        rows.append(Row(item, where, source))
    return rows


def _csv_problem(exc: csv.Error) -> str:
    message = str(exc)
    if "field larger than field limit" in message:
        return f"a field is longer than {CSV_FIELD_LIMIT:,} characters; shorten it or use jsonl"
    if "new-line character seen in unquoted field" in message:
        return "a carriage return (\\r) ends a line outside quotes; save the file with \\n or \\r\\n line ends"
    return f"the CSV reader stopped ({message}); fix the line"


@contextlib.contextmanager
def _csv_field_limit(limit: int):
    """Python's csv module refuses fields over 128 KB by default; a long document is a real row."""
    previous = csv.field_size_limit(limit)
    try:
        yield
    finally:
        csv.field_size_limit(previous)


def _read_csv(path: str, source: str, bad: BadRows) -> list[Row]:
    rows = []
    read = [0]  # the number of the last line the csv reader took

    def lines():
        for number, line in text_lines(path):
            read[0] = number
            yield line

    with _csv_field_limit(CSV_FIELD_LIMIT):
        reader = csv.DictReader(lines())
        try:
            columns = len(reader.fieldnames or [])  # reads the header
        except csv.Error as exc:
            raise DataError(f"{path} line {read[0]}: {_csv_problem(exc)}.") from None
        line = read[0]
        while True:
            where = f"{path} line {line + 1}"
            try:
                record = next(reader)
            except StopIteration:
                break
            except csv.Error as exc:  # the reader cannot go on past this point
                raise DataError(f"{path} line {read[0]}: {_csv_problem(exc)}.") from None
            line = read[0]
            if None in record:
                bad.report(where, f"the row has more values than the {columns} columns of the header; quote values that hold commas")
                continue
            if any(value is None for value in record.values()):
                bad.report(where, f"the row has fewer values than the {columns} columns of the header; add the missing values")
                continue
            rows.append(Row(record, where, source))
    return rows


def _read_parquet(path: str, source: str, bad: BadRows) -> list[Row]:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise DataError(f"Reading '{path}' needs pyarrow, which is not installed; run `pip install pyarrow`.") from None
    try:
        records = pq.read_table(path).to_pylist()
    except (pa.ArrowException, OSError, ValueError) as exc:
        reason = " ".join(str(exc).split()).split(". ")[0].rstrip(".")  # the first sentence of pyarrow's
        reason = reason if len(reason) <= 160 else reason[:157] + "..."
        raise DataError(
            f"{path} is not a readable parquet file ({reason}); write it again, or convert it to jsonl."
        ) from None
    return [Row(record, f"{path} row {number}", source) for number, record in enumerate(records, start=1)]


READERS: dict[str, Callable[[str, str, BadRows], list[Row]]] = {
    ".jsonl": _read_jsonl,
    ".json": _read_json,
    ".csv": _read_csv,
    ".parquet": _read_parquet,
}


def read_rows(path: str, source: str | None = None, bad: BadRows | None = None) -> list[Row]:
    """Every row of one data file, each with its file and line (and the file's folder)."""
    bad = bad if bad is not None else BadRows()
    suffix = Path(path).suffix.lower()
    reader = READERS.get(suffix)
    if reader is None:
        raise DataError(
            f"Data file '{path}' has the extension '{suffix or '(none)'}', which tuneforge cannot read; "
            f"convert it to {', '.join(READERS)}."
        )
    if Path(path).is_dir():
        raise DataError(f"'{path}' is a directory; pass a data file (.jsonl, .json, .csv or .parquet) in it.")
    if not Path(path).exists():
        raise DataError(f"Data file '{path}' does not exist; check the path.")
    if not Path(path).is_file():
        raise DataError(f"Data file '{path}' is not a regular file; copy the data into a file and pass that.")
    try:
        rows = reader(str(path), source or str(path), bad)
    except RecursionError:
        raise DataError(f"{path} is nested too deeply to read; flatten its rows.") from None
    except OSError as exc:
        raise DataError(f"Data file '{path}' cannot be read ({exc.strerror or exc}); check its permissions.") from None
    folder = str(Path(path).resolve().parent)  # where the rows' relative image paths are read from
    for row in rows:
        row.folder = folder
    return rows


def load_source(spec: str, bad: BadRows | None = None) -> tuple[Source, list[Row]]:
    """Resolve one spec and read its rows; a file without rows is an error."""
    source = resolve_spec(spec)
    bad = bad if bad is not None else BadRows()
    skipped = bad.count
    rows = read_rows(source.path, spec, bad)
    if not rows and bad.count > skipped:
        raise DataError(
            f"{source.path} holds no usable rows (all {bad.count - skipped} were bad and skipped); "
            f"fix the file or leave '{spec}' out."
        )
    if not rows:
        raise DataError(f"{source.path} holds no rows; check the file or leave '{spec}' out.")
    return source, rows


def load_mixture(specs: Sequence[str], seed: int, bad: BadRows | None = None) -> tuple[list[Row], list[tuple[Source, int]]]:
    """Read several specs, concatenate their rows and shuffle them with ``seed``.

    Returns the rows and, per spec, the source and how many rows it gave.
    """
    if not specs:
        raise DataError("No dataset was given; pass --dataset with a data file or a registered dataset name.")
    rows: list[Row] = []
    counts: list[tuple[Source, int]] = []
    for spec in specs:
        source, source_rows = load_source(spec, bad)
        rows += source_rows
        counts.append((source, len(source_rows)))
    random.Random(seed).shuffle(rows)
    return rows, counts
