"""Structured output: answers held to a JSON schema by grammar-constrained decoding.

A ``StructuredOutput`` rides on a request's ``SamplingParams.structured``; the
engine that serves the request enforces it with its own guided decoding, or
refuses the request (an engine that enforces it lists ``"structured_output"`` in
its ``features``, see ``check_features``). Three kinds come from the OpenAI
fields (``from_response_format``, ``from_tool_choice``):

- ``response_format: {"type": "json_object"}``: any JSON object whose values are
  scalars, lists of scalars or objects of scalars (``JSON_OBJECT_SCHEMA``);
- ``response_format: {"type": "json_schema", "json_schema": {"schema": ...}}``:
  an answer valid against the schema;
- ``tool_choice: "required"`` or a named function: the answer is the calls, a
  JSON list of ``{"name", "arguments"}`` (one function's arguments for a named
  one), which ``finish_completion`` turns into the completion's ``tool_calls``.

A fourth kind holds an answer to the chat template's own tool-call markup or a
refusal (``for_tool_calls``, what ``tuneforge eval --constrained`` asks for): the
answer is either one or more calls, each a ``{"name", "arguments"}`` valid against
one of the request's tools inside the template's markup (Hermes:
``<tool_call>\n{json}\n</tool_call>``, calls one per line; a template may declare its
own, ``tool_call_markup``, with the key of the arguments, its markers possibly special
tokens of the tokenizer), or plain text
that does not open the markup (its first character is not ``<``, ``{``, ``[`` or a
space, and it holds no ``<``). The template parses the calls out of the text as it
does for any answer, so the completion reads as an unconstrained one would.

A special token of the tokenizer in the markup is that
token in the grammar, allowed where the markup puts it and nowhere else: in the
grammar's vocabulary each special token stands for a byte string of its own
(``SPECIAL``, then its number), which no other token holds and which only the
markup's places in the regular expression take; every other special token is never
allowed. The answer's text (the special tokens the template keeps in it) is the same
language as the regular expression with the markup written out (``guided_regex``).

The pt engine enforces them with outlines-core (``Grammars``: the schema becomes a
regular expression, then an index of the tokens allowed in each of its states),
an optional dependency: ``pip install 'tuneforge[structured]'``. A grammar ends
only where the schema lets it: a string without ``maxLength`` or an array
without ``maxItems`` may run into ``max_tokens`` (``finish_reason: "length"``,
the JSON cut).
"""

from __future__ import annotations

import json
import re
import threading
import uuid
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from ..errors import TuneforgeError
from ..templates import HERMES_TOOL_CALL_MARKUP, HERMES_TOOL_CALL_START

INSTALL = "pip install 'tuneforge[structured]'"

# What json_object allows: an object of scalars, lists of scalars and objects of scalars.
# A fully recursive JSON grammar takes outlines-core some 20 s to index for a 50k vocabulary; this one 2 s.
_SCALAR = {"type": ["string", "number", "boolean", "null"]}
JSON_OBJECT_SCHEMA = {
    "type": "object",
    "additionalProperties": {"anyOf": [
        _SCALAR,
        {"type": "array", "items": _SCALAR},
        {"type": "object", "additionalProperties": _SCALAR},
    ]},
}
WHITESPACE = r"[ ]?"  # between JSON tokens: at most one space, so a model cannot pad an answer forever


@dataclass(frozen=True)
class StructuredOutput:
    """A constraint on a request's answer.

    ``schema``: the JSON schema its text must be valid against (``JSON_OBJECT_SCHEMA``
    for ``json_object``). ``tool_call``: None for a plain answer; ``"required"`` when
    the text is a list of ``{"name", "arguments"}`` calls; a function's name when it
    is that function's arguments. ``source`` names the request field it came from
    (for messages).
    """

    schema: Mapping[str, Any]
    tool_call: str | None = None
    source: str = "response_format"
    markup: tuple[str, str, str] | None = None  # (open, close, between): schema is one call, in this markup, or text


    def __post_init__(self) -> None:
        if not isinstance(self.schema, Mapping):
            raise TuneforgeError(f"A structured output's schema must be a JSON schema object, not {self.schema!r}.")
        if self.tool_call is not None and not (isinstance(self.tool_call, str) and self.tool_call):
            raise TuneforgeError(f"A structured output's tool_call must be 'required', a function name or None, not {self.tool_call!r}.")
        if self.markup is not None and self.tool_call is not None:
            raise TuneforgeError("A structured output in a template's tool-call markup is read by the template; give it no tool_call.")

    @property
    def key(self) -> str:
        """The schema (and markup) as canonical JSON (what grammars are cached by)."""
        if self.markup is None:
            return json.dumps(self.schema, sort_keys=True, ensure_ascii=False)
        # A call's keys keep their order (name, then arguments), as the template writes them.
        return json.dumps([self.schema, list(self.markup)], ensure_ascii=False)

    @property
    def regex_schema(self) -> str:
        """The schema as JSON for the grammar: a call's properties in their order (name first, so a stream can name it),
        and each integer bounded on both sides as the enum of its values (``_enumerated``), whatever asked for it."""
        return json.dumps(_enumerated(self.schema), sort_keys=self.markup is None and self.tool_call != "required", ensure_ascii=False)


def from_response_format(response_format: Mapping[str, Any]) -> StructuredOutput | None:
    """The constraint of OpenAI's ``response_format`` (None for ``{"type": "text"}``); TuneforgeError naming what is wrong."""
    kind = response_format.get("type") if isinstance(response_format, Mapping) else None
    if kind == "text":
        return None
    if kind == "json_object":
        return StructuredOutput(JSON_OBJECT_SCHEMA)
    if kind == "json_schema":
        spec = response_format.get("json_schema")
        if not isinstance(spec, Mapping) or not isinstance(spec.get("schema"), Mapping):
            raise TuneforgeError(
                "'response_format' of type 'json_schema' needs 'json_schema': {\"name\": ..., \"schema\": {...}, \"strict\": true}; give the schema as an object."
            )
        if spec.get("strict") not in (None, True, False):
            raise TuneforgeError(f"'response_format.json_schema.strict' is {spec.get('strict')!r}; it must be true or false.")
        # Strict or not, the answer is held to the schema: constrained decoding cannot do less.
        return StructuredOutput(dict(spec["schema"]))
    raise TuneforgeError(
        f"'response_format' is {response_format!r}; give {{\"type\": \"text\"}}, {{\"type\": \"json_object\"}} "
        f"or {{\"type\": \"json_schema\", \"json_schema\": {{\"name\", \"schema\"}}}}."
    )


def from_tool_choice(tools: Sequence[Mapping[str, Any]] | None, choice: Any, parallel: bool = True) -> StructuredOutput | None:
    """The constraint of OpenAI's ``tool_choice`` (None for ``"auto"``, ``"none"`` or no choice)."""
    if choice in (None, "auto", "none"):
        return None
    functions = {t["function"]["name"]: t["function"] for t in tools or ()}
    if not functions:
        raise TuneforgeError(f"'tool_choice' is {choice!r}, but the request has no 'tools'; give the tools to choose from.")
    if choice == "required":
        calls = [
            {"type": "object", "properties": {"name": {"const": name}, "arguments": _parameters(f)},
             "required": ["name", "arguments"], "additionalProperties": False}
            for name, f in functions.items()
        ]
        schema: dict[str, Any] = {"type": "array", "items": calls[0] if len(calls) == 1 else {"anyOf": calls}, "minItems": 1}
        if not parallel:
            schema["maxItems"] = 1
        return StructuredOutput(schema, tool_call="required", source="tool_choice")
    name = choice.get("function", {}).get("name") if isinstance(choice, Mapping) and choice.get("type") == "function" and isinstance(choice.get("function"), Mapping) else None
    if not isinstance(name, str):
        raise TuneforgeError(
            f"'tool_choice' is {choice!r}; give 'auto', 'none', 'required' or {{\"type\": \"function\", \"function\": {{\"name\": NAME}}}}."
        )
    if name not in functions:
        raise TuneforgeError(f"'tool_choice' names the function '{name}', which is not among the tools ({', '.join(functions)}); name one of them.")
    return StructuredOutput(_parameters(functions[name]), tool_call=name, source="tool_choice")


# The markup of the Hermes layout, keyed by its opening marker: the templates that read calls with
# ``parse_hermes_tool_calls`` (ChatML, Qwen) write them so (``templates.hermes_tool_calls``).
HERMES_MARKUP = (*HERMES_TOOL_CALL_MARKUP, "arguments")
_MARKUPS = {HERMES_TOOL_CALL_START: HERMES_MARKUP}


def tool_call_markup(template: Any) -> tuple[str, str, str, str] | None:
    """(open, close, between, arguments key) of the calls ``template`` writes and parses back; None when it has none known.

    A template may declare ``tool_call_markup``: ``(open, close, between)``, or with a fourth
    string, the key of a call's arguments in its JSON (``"arguments"`` when left out); otherwise its ``tool_call_start`` names a known layout. One that parses
    no calls (a tokenizer's own Jinja template) gets Hermes's, the layout ``tuneforge.toolcalls``
    reads calls in when the template does not.
    """
    declared = getattr(template, "tool_call_markup", None)
    if declared:
        parts = tuple(declared)
        if len(parts) == 3:
            parts += ("arguments",)
        if len(parts) != 4 or not all(isinstance(p, str) for p in parts) or not (parts[0] and parts[3]):
            name = getattr(template, "name", type(template).__name__)
            raise TuneforgeError(
                f"The chat template {name!r} declares tool_call_markup {declared!r}; give (open, close, between) or "
                f"(open, close, between, arguments key), strings, the opening and the key not empty."
            )
        return parts
    start = getattr(template, "tool_call_start", None)
    if getattr(template, "parse_tool_calls", None) is None or not start:
        return HERMES_MARKUP  # a template that reads no calls (a tokenizer's own): they are read as Hermes text
    return _MARKUPS.get(start)


def for_tool_calls(tools: Sequence[Mapping[str, Any]] | None, template: Any, source: str = "--constrained") -> StructuredOutput:
    """The constraint of an answer that is either calls to ``tools`` in ``template``'s markup, or a plain-text refusal.

    An integer argument bounded on both sides (at most 512 values) is held to its range too, as in every
    structured output (``StructuredOutput.regex_schema``).

    Refused (TuneforgeError) when there are no tools, or when the template's tool-call markup is not known.
    """
    functions = {t.get("function", t)["name"]: t.get("function", t) for t in tools or ()}
    if not functions:
        raise TuneforgeError(f"'{source}' holds answers to the row's tools, but a row has no 'tools'; give every row its tools, or leave {source} out.")
    markup = tool_call_markup(template)
    if markup is None:
        name = getattr(template, "name", type(template).__name__)
        raise TuneforgeError(
            f"The chat template {name!r} writes tool calls in a markup '{source}' does not know (its tool_call_start is "
            f"{getattr(template, 'tool_call_start', None)!r}); use a template with the Hermes layout (<tool_call>), or leave {source} out."
        )
    *markup, key = markup
    calls = [
        {"type": "object", "properties": {"name": {"const": name}, key: _parameters(f)},
         "required": ["name", key], "additionalProperties": False}
        for name, f in functions.items()
    ]
    return StructuredOutput(calls[0] if len(calls) == 1 else {"anyOf": calls}, source=source, markup=tuple(markup))


MAX_ENUMERATED = 512


def _enumerated(schema: Any) -> Any:
    """``schema`` with each integer between a ``minimum`` and a ``maximum`` (at most 512 values) as an ``enum``.

    outlines-core's grammar holds an integer to digits but not to its range; the
    values one by one hold it there (a tool's volume 0-100, a screen 1-4).
    """
    if isinstance(schema, list):
        return [_enumerated(item) for item in schema]
    if not isinstance(schema, Mapping):
        return schema
    out = {key: _enumerated(value) for key, value in schema.items()}
    low, high = out.get("minimum"), out.get("maximum")
    if (out.get("type") == "integer" and "enum" not in out and isinstance(low, (int, float)) and isinstance(high, (int, float))
            and not isinstance(low, bool) and not isinstance(high, bool) and 0 <= high - low < MAX_ENUMERATED):
        import math

        values = list(range(math.ceil(low), math.floor(high) + 1))
        if values:
            return {"enum": values, **{k: v for k, v in out.items() if k in ("description", "title")}}
    return out


def _parameters(function: Mapping[str, Any]) -> dict:
    parameters = function.get("parameters")
    return dict(parameters) if isinstance(parameters, Mapping) and parameters else {"type": "object", "properties": {}}


def tool_calls(text: str, structured: StructuredOutput) -> list[dict] | None:
    """The OpenAI tool calls a constrained answer's ``text`` holds (None when it is cut short, so not JSON)."""
    try:
        value = json.loads(text)
    except ValueError:
        return None
    if structured.tool_call == "required":
        pairs = [(call["name"], call["arguments"]) for call in value]
    else:
        pairs = [(structured.tool_call, value)]
    return [
        {"id": "call_" + uuid.uuid4().hex[:24], "type": "function",
         "function": {"name": name, "arguments": json.dumps(arguments, ensure_ascii=False)}}
        for name, arguments in pairs
    ]


class StreamedCalls:
    """The OpenAI ``tool_calls`` deltas of a forced answer (``tool_choice`` "required" or named) as its JSON grows.

    ``push(text)`` takes the next piece of the answer's text and returns the new deltas:
    a call's first one holds its ``index``, ``id``, ``type`` and ``function.name`` (with
    ``arguments`` ""), the next ones pieces of ``function.arguments`` (the JSON as the
    model writes it), as OpenAI streams calls. A named function's answer is its
    arguments; a "required" one is ``[{"name": ..., "arguments": ...}, ...]``, its keys in
    that order (the grammar writes them so).
    """

    def __init__(self, structured: StructuredOutput) -> None:
        self.named = None if structured.tool_call == "required" else structured.tool_call
        self.text = ""
        self.sent: list[int] = []  # per call: how many characters of its arguments were sent

    def push(self, piece: str) -> list[dict]:
        self.text += piece
        deltas = []
        for index, (name, arguments) in enumerate(self._calls()):
            if index == len(self.sent):
                self.sent.append(0)
                deltas.append({"index": index, "id": "call_" + uuid.uuid4().hex[:24], "type": "function",
                               "function": {"name": name, "arguments": ""}})
            if len(arguments) > self.sent[index]:
                deltas.append({"index": index, "function": {"arguments": arguments[self.sent[index]:]}})
                self.sent[index] = len(arguments)
        return deltas

    def _calls(self) -> list[tuple[str, str]]:
        """(name, the arguments' text so far) of each call begun in the text."""
        if self.named is not None:
            return [(self.named, self.text)] if self.text else []
        calls, position = [], 0
        while (match := _CALL_HEAD.search(self.text, position)) is not None:
            start = match.end()
            position = _value_end(self.text, start)
            calls.append((json.loads(match.group(1)), self.text[start:position]))
        return calls


_CALL_HEAD = re.compile(r'\{ ?"name" ?: ?("(?:[^"\\]|\\.)*") ?, ?"arguments" ?: ?')


def _value_end(text: str, start: int) -> int:
    """Where the JSON value that starts at ``start`` ends (the text's end while it is unfinished)."""
    depth, quoted, escaped = 0, False, False
    for position in range(start, len(text)):
        char = text[position]
        if quoted:
            escaped, quoted = (False, True) if escaped else (char == "\\", char != '"')
            continue
        if char == '"':
            quoted = True
        elif char in "{[":
            depth += 1
        elif char in "}]":
            if depth == 0:  # the call's own closing brace: a scalar value ended before it
                return position
            depth -= 1
            if depth == 0:
                return position + 1
        elif char == "," and depth == 0:
            return position
    return len(text)


def require() -> Any:
    """The outlines-core module, or a TuneforgeError saying how to install it."""
    try:
        import outlines_core
    except ImportError:
        raise TuneforgeError(
            f"Structured output (response_format json_object or json_schema, tool_choice 'required' or a named function) "
            f"needs outlines-core, which is not installed; install it with: {INSTALL}"
        ) from None
    return outlines_core


def check_features(engine: Any, requests: Sequence[Any]) -> None:
    """Refuse requests that need what ``engine`` does not declare in its ``features`` (logprobs, structured output)."""
    features = set(getattr(engine, "features", None) or ())
    for request in requests:
        sampling = request.sampling
        if sampling.structured is not None and "structured_output" not in features:
            raise TuneforgeError(
                f"The inference engine {type(engine).__name__} does not enforce structured output ({sampling.structured.source}); "
                f"serve with --engine pt, or leave that field out."
            )
        if sampling.logprobs and "logprobs" not in features:
            raise TuneforgeError(f"The inference engine {type(engine).__name__} does not return logprobs; serve with --engine pt, or leave logprobs out.")


class Grammars:
    """The grammars of one tokenizer: outlines-core's vocabulary (built once) and an index per schema (cached)."""

    def __init__(self, tokenizer: Any, stop_token_ids: Sequence[int], cache_size: int = 32) -> None:
        self.tokenizer = tokenizer
        self.stop_token_ids = list(stop_token_ids)
        self.cache_size = cache_size
        self._vocabulary = None
        self.end_ids: frozenset = frozenset()  # ids standing for END (known once the vocabulary is built)
        self.special: dict[str, str] = {}  # each special token's text: the bytes it stands for in the grammar (see SPECIAL)
        self._indexes: OrderedDict[str, Any] = OrderedDict()
        self._lock = threading.Lock()
        self.masks = MaskCache()  # the blocked tokens of each (grammar, state) with many allowed, shared by every batch

    def guide(self, structured: StructuredOutput) -> Any:
        """A fresh outlines-core ``Guide`` for ``structured`` (its index built, or taken from the cache)."""
        core = require()
        key = structured.key
        with self._lock:
            index = self._indexes.get(key)
            if index is not None:
                self._indexes.move_to_end(key)
        if index is None:
            index = self._index(core, structured)
            with self._lock:
                self._indexes[key] = index
                while len(self._indexes) > self.cache_size:
                    self._indexes.popitem(last=False)
        return core.Guide(index)

    def _index(self, core: Any, structured: StructuredOutput) -> Any:
        with self._lock:
            if self._vocabulary is None:
                self._vocabulary, self.end_ids, self.special = _vocabulary(core, self.tokenizer, self.stop_token_ids)
            vocabulary = self._vocabulary
        regex = _regex(structured, end=True, special=self.special)
        try:
            return core.Index(regex, vocabulary)
        except BaseException as exc:
            if not isinstance(exc, Exception) and type(exc).__name__ != "PanicException":
                raise
            raise TuneforgeError(f"The JSON schema of '{structured.source}' cannot be enforced with this model's vocabulary ({_first_line(exc)}); simplify the schema.") from None


# Where a grammar in markup may end, it reads END, a byte no answer holds: outlines-core 0.2 drops a
# one-byte token that leaves a state where the grammar could end for one where it cannot (the "\n"
# before a second call), so the calls-or-text grammar has no such state but its very end. The tokens
# of that byte are never generated: where the guide allows them, the stop tokens are allowed instead.
END = "\x00"
# A special token in a grammar is this byte and four hex digits, its number among the tokenizer's special
# tokens: no JSON holds the byte, a plain-text answer may not, and the vocabulary's other tokens that hold it
# are left out, so only that token writes those bytes.
SPECIAL = "\x01"


def guided_regex(structured: StructuredOutput, tokenizer: Any = None) -> str:
    """The regular expression every answer held to ``structured`` matches, for an engine with regex-guided decoding
    of its own (the vllm plugin's): the language the pt engine enforces, so both engines hold answers alike.

    Needs outlines-core (which builds the regex from the schema); a schema it cannot turn into one, or whose
    regex would be too large to index, is refused naming ``structured.source``. Given the engine's ``tokenizer``,
    a tool-call markup that holds one of its special tokens is refused too: a regular
    expression over text cannot tell the special token from the same text in ordinary tokens.
    """
    require()
    if tokenizer is not None and structured.markup is not None:
        special = [t for t in _special_tokens(tokenizer) if any(t in part for part in structured.markup)]
        if special:
            raise TuneforgeError(
                f"'{structured.source}' holds answers to a tool-call markup written in special tokens ({', '.join(special)}), "
                f"which a regular expression over the answer's text cannot hold the model to; use the pt engine, or leave {structured.source} out."
            )
    return _regex(structured, end=False)


def _regex(structured: StructuredOutput, *, end: bool, special: Mapping[str, str] | None = None) -> str:
    """``structured``'s regex (checked for size); in markup, calls or text, then END where ``end``;
    the ``special`` tokens in the markup as the bytes they stand for (``SPECIAL``)."""
    from outlines_core.json_schema import build_regex_from_schema

    try:
        regex = build_regex_from_schema(structured.regex_schema, WHITESPACE)
        if structured.markup is not None:
            regex = _calls_or_text(regex, structured.markup, end=end, special=special)
    except BaseException as exc:  # outlines-core's PanicException is a BaseException
        if not isinstance(exc, Exception) and type(exc).__name__ != "PanicException":
            raise
        raise TuneforgeError(f"The JSON schema of '{structured.source}' cannot be enforced ({_first_line(exc)}); simplify the schema.") from None
    _check_size(regex, structured)
    return regex


def _calls_or_text(call: str, markup: tuple[str, str, str], end: bool = True, special: Mapping[str, str] | None = None) -> str:
    """One or more ``call``s in ``markup``, or plain text that cannot open it (no ``<``; not JSON or a space first); then END.

    The ``special`` tokens (text: bytes) the markup holds are written as their bytes, the rest of it as text.
    """
    opening, closing, between = (_literal(part, special or {}) for part in markup)
    block = f"{opening}({call}){closing}"
    text = r"[^<{\[\s\x00\x01][^<\x00\x01]*"
    return f"(({block}({between}{block})*)|({text}))" + (re.escape(END) if end else "")


def _literal(text: str, special: Mapping[str, str]) -> str:
    """``text`` as a regex: its special tokens (longest first) as the bytes they stand for, the rest escaped."""
    if not special or not any(token in text for token in special):
        return re.escape(text)
    tokens = re.compile("|".join(re.escape(t) for t in sorted(special, key=len, reverse=True)))
    pieces, position = [], 0
    for match in tokens.finditer(text):
        pieces += [re.escape(text[position : match.start()]), re.escape(special[match.group()])]
        position = match.end()
    return "".join(pieces) + re.escape(text[position:])


def _special_tokens(tokenizer: Any) -> list[str]:
    return sorted(set(getattr(tokenizer, "all_special_tokens", None) or ()))


def _vocabulary(core: Any, tokenizer: Any, stop_token_ids: Sequence[int]) -> tuple[Any, frozenset, dict[str, str]]:
    """outlines-core's ``Vocabulary``, the ids that stand for ``END`` (the tokens of that byte, and one id of its
    own where none has it), and the bytes each special token stands for.

    The vocabulary holds each text token's bytes and ids, and each special token (but the stop tokens) as
    ``SPECIAL`` and its number: allowed only where a grammar names it (a template's tool-call markup).
    Text tokens holding the ``SPECIAL`` byte are left out.
    """
    vocab = tokenizer.get_vocab()
    stops = set(stop_token_ids) | {tokenizer.eos_token_id}
    special_ids = set(getattr(tokenizer, "all_special_ids", None) or ())
    to_bytes = _token_bytes(tokenizer)
    tokens: dict[bytes, list[int]] = {}
    for token, token_id in vocab.items():
        if token_id in special_ids or token_id in stops:
            continue
        raw = to_bytes(token)
        if raw and SPECIAL.encode() not in raw:
            tokens.setdefault(raw, []).append(token_id)
    special: dict[str, str] = {}
    for number, token in enumerate(_special_tokens(tokenizer)):
        token_id = vocab.get(token)
        if token_id is not None and token_id not in stops:
            special[token] = f"{SPECIAL}{number:04x}"
            tokens.setdefault(special[token].encode(), []).append(token_id)
    ids = tokens.setdefault(END.encode(), [])
    ids.append(max(vocab.values(), default=0) + 1)
    eos = stop_token_ids[0] if stop_token_ids else tokenizer.eos_token_id
    return core.Vocabulary(eos, tokens), frozenset(ids), special


def _token_bytes(tokenizer: Any):
    """How a token of the vocabulary becomes the bytes it stands for (byte-level BPE, or SentencePiece's ``▁`` and ``<0x..>``)."""
    if tokenizer.convert_tokens_to_string(["\u0120a"]) == " a":  # GPT-2's byte-level alphabet
        alphabet = _byte_alphabet()

        def byte_level(token: str) -> bytes:
            try:
                return bytes(alphabet[c] for c in token)
            except KeyError:  # an added token outside the alphabet: its text
                return token.encode("utf-8")

        return byte_level

    def sentencepiece(token: str) -> bytes:
        if len(token) == 6 and token.startswith("<0x") and token.endswith(">"):
            return bytes([int(token[3:5], 16)])
        return token.replace("\u2581", " ").encode("utf-8")

    return sentencepiece


def _byte_alphabet() -> dict[str, int]:
    """GPT-2's map from the characters of byte-level tokens to the bytes they stand for."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    chars = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return {chr(c): b for b, c in zip(printable, chars)}


class MaskCache:
    """The tokens a grammar blocks in one of its states, kept for the states that allow many tokens.

    Such a state (free text, inside a string) allows most of the vocabulary, and listing
    its tokens through outlines-core and turning them into a mask costs more than the
    model's step on a GPU; the same few states come back at every step of every answer.
    A state that allows a few tokens is cheap to work out and is not kept.
    """

    MIN_ALLOWED = 1024  # a state allowing fewer tokens is worked out each time
    SIZE = 256  # masks kept (one byte a vocabulary entry each)

    def __init__(self) -> None:
        self._masks: OrderedDict[tuple, Any] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = self.misses = 0

    def get(self, key: tuple) -> Any:
        with self._lock:
            mask = self._masks.get(key)
            if mask is not None:
                self._masks.move_to_end(key)
                self.hits += 1
            else:
                self.misses += 1
            return mask

    def put(self, key: tuple, mask: Any) -> None:
        with self._lock:
            self._masks[key] = mask
            while len(self._masks) > self.SIZE:
                self._masks.popitem(last=False)


class GuidedRows:
    """A transformers logits processor holding each constrained row of a batch to its guide.

    ``guides[row]`` is an outlines-core ``Guide`` (None: the row is free). After each
    step the row's guide advances by the token generated; then every token it does
    not allow gets ``-inf``, and where the grammar may end (the guide is finished, or
    allows one of ``end_ids``, see ``END``), the stop tokens are allowed. A row whose
    guide has ended (or that generated a stop token) is left alone. ``keys[row]`` names
    the row's grammar (``StructuredOutput.key``) so the blocked tokens of its states
    can be kept in ``masks`` (a ``MaskCache``).
    """

    def __init__(self, guides: list, width: int, stop_token_ids: Sequence[int], end_ids: Sequence[int] = (),
                 keys: Sequence[str | None] | None = None, masks: MaskCache | None = None) -> None:
        self.guides, self.width = guides, width
        self.stop_token_ids = list(stop_token_ids)
        self.end_ids = frozenset(end_ids)
        self.done = [False] * len(guides)
        self.keys = list(keys) if keys is not None else [None] * len(guides)
        self.masks = masks if masks is not None else MaskCache()

    def __call__(self, input_ids, scores):
        generated = input_ids.shape[1] - self.width
        blocked = {}
        for row, guide in enumerate(self.guides):
            if guide is None or self.done[row]:
                continue
            if generated:
                token = int(input_ids[row, -1])
                if token in self.stop_token_ids:
                    self.done[row] = True
                    continue
                guide.advance(token_id=token, return_tokens=False)
            blocked[row] = self._blocked(row, guide, scores)
        if not blocked:
            return scores
        import torch

        mask = torch.zeros_like(scores, dtype=torch.bool)
        for row, row_mask in blocked.items():
            mask[row] = row_mask
        return scores.masked_fill(mask, float("-inf"))

    def _blocked(self, row: int, guide: Any, scores: Any) -> Any:
        """The tokens the row's guide blocks in its state, as a boolean row of the scores' width."""
        import torch

        width = scores.shape[1]
        key = None if self.keys[row] is None else (self.keys[row], guide.get_state(), width, str(scores.device))
        if key is not None:
            kept = self.masks.get(key)
            if kept is not None:
                return kept
        tokens = guide.get_tokens()
        allowed = [t for t in tokens if t < width and t not in self.end_ids]
        if guide.is_finished() or any(t in self.end_ids for t in tokens):
            allowed += self.stop_token_ids
        mask = torch.ones(width, dtype=torch.bool, device=scores.device)
        mask[torch.tensor(allowed, dtype=torch.long, device=scores.device)] = False
        if key is not None and len(allowed) >= self.masks.MIN_ALLOWED:
            self.masks.put(key, mask)
        return mask


# Indexing a grammar costs its states times the vocabulary: a bounded string repeats its character
# class up to the bound (maxLength 8 indexes in 0.3 s for a 50k vocabulary, 16 in 13 s, 32 in minutes),
# so larger bounds, and very long grammars, are refused before they hold the server.
MAX_BOUND = 16
MAX_REGEX_CHARS = 20_000
_BOUND = re.compile(r"\{(\d+)(?:,(\d*))?\}")


def _check_size(regex: str, structured: StructuredOutput) -> None:
    bounds = [int(high or low) for low, high in _BOUND.findall(regex) if (high or low)]
    if bounds and max(bounds) > MAX_BOUND:
        raise TuneforgeError(
            f"The JSON schema of '{structured.source}' bounds a string, list or number at {max(bounds)} (maxLength, maxItems, "
            f"minLength, ...), above the {MAX_BOUND} this engine can index in reasonable time; lower the bound, or leave it out "
            f"(max_tokens then bounds the answer)."
        )
    if len(regex) > MAX_REGEX_CHARS:
        raise TuneforgeError(
            f"The JSON schema of '{structured.source}' makes a grammar of {len(regex)} characters, more than the {MAX_REGEX_CHARS} "
            f"this engine indexes; simplify the schema (fewer properties or alternatives)."
        )


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0].strip()
