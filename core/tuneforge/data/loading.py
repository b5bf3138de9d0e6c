"""Read dataset files row by row, keeping each row's file and line.

A dataset spec is a local file (``.jsonl``, ``.json``, ``.csv``, ``.parquet``) or a
registered dataset name, optionally ``NAME:SPLIT``. Files are read here rather than
through the ``datasets`` library so that every error can name the line it is about.
"""

from __future__ import annotations

import bisect
import csv
import difflib
import json
import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from ..errors import DataError
from .rows import BadRows, Row


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
    with open(path, encoding="utf-8-sig") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            where = f"{path} line {number}"
            try:
                rows.append(Row(json.loads(line), where, source))
            except json.JSONDecodeError as exc:
                bad.report(where, f"the line is not valid JSON ({exc.msg} at column {exc.colno}); fix or remove the line")
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


def _read_json(path: str, source: str, bad: BadRows) -> list[Row]:
    with open(path, encoding="utf-8-sig") as handle:
        text = handle.read()
    try:
        document = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(
            f"{path} is not valid JSON ({exc.msg} at line {exc.lineno}, column {exc.colno}); fix the file "
            f"or write it as jsonl (one row per line)."
        ) from None
    decoder = json.JSONDecoder()
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
    line_starts = [0] + [i + 1 for i, char in enumerate(text) if char == "\n"]
    positions = _array_positions(text, array_at, decoder)
    return [
        Row(item, f"{path} line {bisect.bisect_right(line_starts, at)}", source)
        for item, at in zip(items, positions)
    ]


def _read_csv(path: str, source: str, bad: BadRows) -> list[Row]:
    rows = []
    with open(path, encoding="utf-8-sig", newline="") as handle:
        reader = csv.DictReader(handle)
        columns = len(reader.fieldnames or [])  # reads the header
        line = reader.line_num
        for record in reader:
            where = f"{path} line {line + 1}"
            line = reader.line_num
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
        import pyarrow.parquet as pq
    except ImportError:
        raise DataError(f"Reading '{path}' needs pyarrow, which is not installed; run `pip install pyarrow`.") from None
    table = pq.read_table(path)
    return [Row(record, f"{path} row {number}", source) for number, record in enumerate(table.to_pylist(), start=1)]


READERS: dict[str, Callable[[str, str, BadRows], list[Row]]] = {
    ".jsonl": _read_jsonl,
    ".json": _read_json,
    ".csv": _read_csv,
    ".parquet": _read_parquet,
}


def read_rows(path: str, source: str | None = None, bad: BadRows | None = None) -> list[Row]:
    """Every row of one data file, each with its file and line."""
    bad = bad if bad is not None else BadRows()
    suffix = Path(path).suffix.lower()
    reader = READERS.get(suffix)
    if reader is None:
        raise DataError(
            f"Data file '{path}' has the extension '{suffix or '(none)'}', which tuneforge cannot read; "
            f"convert it to {', '.join(READERS)}."
        )
    if not Path(path).is_file():
        raise DataError(f"Data file '{path}' does not exist; check the path.")
    return reader(str(path), source or str(path), bad)


def load_source(spec: str, bad: BadRows | None = None) -> tuple[Source, list[Row]]:
    """Resolve one spec and read its rows; a file without rows is an error."""
    source = resolve_spec(spec)
    rows = read_rows(source.path, spec, bad)
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
