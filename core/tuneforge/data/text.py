"""Text files and JSON, read so that every failure is one sentence naming what to fix.

Data files are decoded strictly: UTF-8 (with or without a byte-order mark), or
UTF-16/UTF-32 when the file starts with their byte-order mark. Anything else (a
latin-1 file, a binary or compressed file with a text extension, NUL bytes) stops
the run at the line where it shows, because the fix is to convert the whole file,
not to skip rows. JSON is parsed with Python's own limits turned into sentences:
integers longer than Python reads (4,300 digits by default), nesting deeper than
``MAX_DEPTH`` and lone UTF-16 surrogate escapes (``"\\ud800"``) make a row bad.
"""

from __future__ import annotations

import codecs
import json
import re
import reprlib
import sys
from typing import Any, BinaryIO, Iterator

from ..errors import DataError

# Deeper rows are refused: later steps (chat templates, copies) recurse per level.
# Real rows (messages, tool calls, JSON-schema tools) stay far below this.
MAX_DEPTH = 100

_BOMS = (  # UTF-32 first: its little-endian mark starts with UTF-16's
    (codecs.BOM_UTF32_LE, "utf-32"),
    (codecs.BOM_UTF32_BE, "utf-32"),
    (codecs.BOM_UTF8, "utf-8-sig"),
    (codecs.BOM_UTF16_LE, "utf-16"),
    (codecs.BOM_UTF16_BE, "utf-16"),
)

_BINARY = (
    (b"\x1f\x8b", "gzip-compressed", "decompress it first (gunzip)"),
    (b"(\xb5/\xfd", "zstd-compressed", "decompress it first (unzstd)"),
    (b"\xfd7zXZ\x00", "xz-compressed", "decompress it first (unxz)"),
    (b"PK\x03\x04", "a zip archive", "extract the data file from it"),
    (b"PAR1", "a parquet file", "give it the .parquet extension"),
)

_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")
_SURROGATE = re.compile("[\ud800-\udfff]")

_brief = reprlib.Repr()
_brief.maxstring = 40
_brief.maxother = 40
_brief.maxlist = _brief.maxtuple = _brief.maxdict = 4
_brief.maxlevel = 3


def brief(value: Any) -> str:
    """A short ``repr`` for error messages: a row's 10 MB value must not become a 10 MB sentence."""
    return _brief.repr(value)


def brief_keys(row) -> str:
    """The first keys of a row, as a short list for error messages."""
    keys = sorted(map(str, row))
    shown = ", ".join(repr(key if len(key) <= 40 else key[:37] + "...") for key in keys[:12])
    return f"[{shown}{', ...' if len(keys) > 12 else ''}]"


# --- decoding -------------------------------------------------------------------------------


def _encoding(path: str, head: bytes) -> str:
    for bom, encoding in _BOMS:
        if head.startswith(bom):
            return encoding
    for magic, what, fix in _BINARY:
        if head.startswith(magic):
            raise DataError(f"{path} is {what}, not text; {fix}.")
    return "utf-8"


def _not_utf8(path: str, number: int, raw: bytes, exc: UnicodeDecodeError) -> DataError:
    column = len(raw[: exc.start].decode("utf-8", "replace")) + 1
    return DataError(
        f"{path} line {number} is not UTF-8 text (byte 0x{raw[exc.start]:02x} at column {column}); "
        f"save the file as UTF-8 (for example `iconv -f latin1 -t utf-8`)."
    )


def _nul(path: str, number: int) -> DataError:
    return DataError(
        f"{path} line {number} holds a NUL byte, so the file is not text (a binary file, or UTF-16 without a "
        f"byte-order mark); save it as UTF-8 text."
    )


def _split_lines(text: str) -> Iterator[str]:
    """``text`` cut after each ``\\n`` (ends kept), the way a binary file iterates."""
    start = 0
    while start < len(text):
        end = text.find("\n", start)
        end = len(text) if end < 0 else end + 1
        yield text[start:end]
        start = end


def _wide_lines(path: str, handle: BinaryIO, encoding: str) -> Iterator[tuple[int, str]]:
    data = handle.read()
    try:
        text = data.decode(encoding)
    except UnicodeDecodeError as exc:
        number = data[: exc.start].decode(encoding, "replace").count("\n") + 1
        raise DataError(
            f"{path} line {number} is not valid {encoding.upper()} text although the file starts with a "
            f"{encoding.upper()} byte-order mark; save the file as UTF-8."
        ) from None
    del data
    for number, line in enumerate(_split_lines(text), start=1):
        if "\x00" in line:
            raise _nul(path, number)
        yield number, line


def text_lines(path: str) -> Iterator[tuple[int, str]]:
    """The lines of a text file (ends kept) with their numbers, strictly decoded.

    UTF-8 is decoded line by line, so an error names its line and a large file is
    never held twice.
    """
    with open(path, "rb") as handle:
        head = handle.read(8)
        handle.seek(0)
        encoding = _encoding(path, head)
        if encoding not in ("utf-8", "utf-8-sig"):
            yield from _wide_lines(path, handle, encoding)
            return
        if encoding == "utf-8-sig":
            handle.seek(len(codecs.BOM_UTF8))
        for number, raw in enumerate(handle, start=1):
            if b"\x00" in raw:
                raise _nul(path, number)
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise _not_utf8(path, number, raw, exc) from None
            yield number, line


def read_text(path: str) -> str:
    """A whole text file, strictly decoded (see ``text_lines``)."""
    return "".join(line for _, line in text_lines(path))


# --- JSON -----------------------------------------------------------------------------------


class _HugeInt:
    """Stands in for an integer with more digits than Python converts; the row is refused."""

    def __init__(self, digits: int) -> None:
        self.digits = digits


def _int_limit() -> int:
    return sys.get_int_max_str_digits() if hasattr(sys, "get_int_max_str_digits") else 0


class RowDecoder(json.JSONDecoder):
    """``json.JSONDecoder`` whose integers past Python's digit limit become ``_HugeInt`` markers.

    ``int(text)`` of such an integer raises ValueError (and takes quadratic time
    without the limit); a marker lets the row be named and refused instead.
    """

    def __init__(self) -> None:
        self.huge = 0
        limit = _int_limit()

        def parse_int(text: str):
            digits = len(text.lstrip("-"))
            if limit and digits > limit:
                self.huge += 1
                return _HugeInt(digits)
            return int(text)

        super().__init__(parse_int=parse_int)


def row_problem(data: Any, text: str, decoder: RowDecoder | None = None, what: str = "the row") -> str | None:
    """Why a parsed row cannot be used (a clause about ``what``, for an error message), or None.

    ``text`` is the row's JSON; it gates the walk over the row, so ordinary rows
    (few brackets, no surrogate escape, no huge integer) cost two counts and a search.
    """
    huge = decoder is not None and decoder.huge > 0
    deep = text.count("[") + text.count("{") > MAX_DEPTH
    surrogate = _SURROGATE_ESCAPE.search(text) is not None
    if not (huge or deep or surrogate):
        return None
    stack = [(data, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, _HugeInt):
            return (
                f"{what} holds an integer of {value.digits:,} digits, more than the {_int_limit():,} Python reads; "
                f"write the number as a string"
            )
        if isinstance(value, str):
            found = _SURROGATE.search(value)
            if found:
                return (
                    f"{what} holds \\u{ord(found.group()):04x}, half of a UTF-16 surrogate pair and no character; "
                    f"write the character itself or its whole pair"
                )
            continue
        if isinstance(value, (list, dict)):
            if depth > MAX_DEPTH:
                return too_deep(what)
            stack.extend((item, depth + 1) for item in (value.values() if isinstance(value, dict) else value))
            if isinstance(value, dict):
                stack.extend((key, depth) for key in value)
    return None


def too_deep(what: str) -> str:
    return f"{what} is nested more than {MAX_DEPTH} levels deep; flatten it"


def loads_row(text: str, what: str = "the row") -> Any:
    """Parse one row's JSON, for a jsonl line as much as for JSON text in a csv or parquet column.

    Invalid JSON raises ``json.JSONDecodeError`` (the caller knows how to word it);
    what Python cannot hold (a huge integer, deep nesting, a lone surrogate) raises
    DataError with a clause about ``what``. Rows parse with the json module's fast
    path; only one with an integer past the digit limit is parsed again with markers.
    """
    decoder = None
    try:
        try:
            data = json.loads(text)
        except json.JSONDecodeError:
            raise
        except ValueError:  # an integer past Python's digit limit
            decoder = RowDecoder()
            data = decoder.decode(text)
    except RecursionError:
        raise DataError(too_deep(what)) from None
    problem = row_problem(data, text, decoder, what)
    if problem:
        raise DataError(problem)
    return data


def deep_line(text: str) -> int | None:
    """The line where ``text``'s JSON nesting first goes past ``MAX_DEPTH`` (brackets in strings ignored)."""
    depth = 0
    for match in re.finditer(r'"(?:[^"\\]|\\.)*"|[\[\]{}]', text):
        token = match.group()
        if token == "[" or token == "{":
            depth += 1
            if depth > MAX_DEPTH:
                return text.count("\n", 0, match.start()) + 1
        elif token == "]" or token == "}":
            depth -= 1
    return None
