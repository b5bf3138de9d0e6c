"""Built-in dataset formats (an internal plugin).

Each format recognises a row by its keys and converts it to the canonical
conversation ``{"messages": [{"role", "content"}, ...], "tools": [...]}``. A
converter raises ``DataError`` with a sentence about the row (the caller adds the
file and line); the order and content of the turns are checked afterwards, the
same way for every format (``tuneforge.data.convert.validate_conversation``).

The messages and sharegpt formats also read the layout LLaMA-Factory and ms-swift
use for pictures: ``<image>`` placeholders in the text and an ``images`` list beside
it (``<video>`` and ``videos`` likewise). Each placeholder becomes an ``image_url``
(``video_url``) part in its place, taking the list's entries in order; the pictures
themselves are found and checked later, for every format (``tuneforge.data.media``).
"""

from __future__ import annotations

import base64
import json
import re
from typing import Any, Mapping

from tuneforge import hookimpl
from tuneforge.data.text import brief, brief_keys, loads_row
from tuneforge.errors import DataError
from tuneforge.records import DatasetFormat


def _blank(value: Any) -> bool:
    return value is None or (isinstance(value, str) and not value.strip())


def _structured(row: Mapping, key: str, expected: type, description: str):
    """``row[key]`` as a list/dict; JSON text (a csv or parquet column) is parsed."""
    value = row.get(key)
    if _blank(value):
        return None
    if isinstance(value, str):
        try:
            value = loads_row(value, f"the '{key}' value")
        except json.JSONDecodeError:
            raise DataError(f"the '{key}' value is text that is not valid JSON; it must be {description}") from None
    if hasattr(value, "tolist") and not isinstance(value, (list, dict)):  # numpy arrays from parquet
        value = value.tolist()
    if isinstance(value, tuple):
        value = list(value)
    if not isinstance(value, expected):
        raise DataError(f"the '{key}' value is a {type(value).__name__}; it must be {description}")
    return value


def _tools(row: Mapping) -> list | None:
    return _structured(row, "tools", list, "a list of function descriptions")


def _text(row: Mapping, key: str) -> str:
    value = row.get(key)
    if value is None:
        return ""
    if not isinstance(value, (str, int, float)) or isinstance(value, bool):
        raise DataError(f"the '{key}' value is a {type(value).__name__}; it must be text")
    return str(value)


def _system_and_history(row: Mapping) -> list[dict]:
    messages = []
    if not _blank(row.get("system")):
        messages.append({"role": "system", "content": _text(row, "system")})
    history = _structured(row, "history", list, "a list of [user, assistant] pairs")
    for n, pair in enumerate(history or [], start=1):
        if not (isinstance(pair, (list, tuple)) and len(pair) == 2):
            raise DataError(f"history entry {n} is {brief(pair)}; each entry must be a [user, assistant] pair")
        messages.append({"role": "user", "content": pair[0]})
        messages.append({"role": "assistant", "content": pair[1]})
    return messages


def _with_tools(messages: list, row: Mapping) -> dict:
    conversation: dict = {"messages": messages}
    tools = _tools(row)
    if tools:
        conversation["tools"] = tools
    return conversation


# --- <image> placeholders and an images list (LLaMA-Factory, ms-swift) ----------------------

# list key -> (placeholder, part type, what one entry is)
_MEDIA_LISTS = {"images": ("<image>", "image_url", "picture"), "videos": ("<video>", "video_url", "video")}

_MAGIC = ((b"\x89PNG", "image/png"), (b"\xff\xd8", "image/jpeg"), (b"GIF8", "image/gif"), (b"RIFF", "image/webp"))


def _bytes_url(raw: bytes) -> str:
    kind = next((mime for magic, mime in _MAGIC if raw.startswith(magic)), "application/octet-stream")
    return f"data:{kind};base64," + base64.b64encode(raw).decode()


def _media_entry(item: Any, key: str, n: int) -> str:
    """One entry of an ``images`` list: a path or URL, or the ``{"bytes", "path"}`` of a datasets Image column."""
    if isinstance(item, str) and item.strip():
        return item.strip()
    if key == "videos" and isinstance(item, (list, tuple)) and item and all(isinstance(f, str) and f.strip() for f in item):
        return json.dumps([f.strip() for f in item])  # a video given as its frames
    if isinstance(item, Mapping):
        if isinstance(item.get("bytes"), (bytes, bytearray)) and item["bytes"]:
            return _bytes_url(bytes(item["bytes"]))
        for field in ("path", "url"):
            if isinstance(item.get(field), str) and item[field].strip():
                return item[field].strip()
    raise DataError(
        f"'{key}' entry {n} is {brief(item)}; give a file path, a file://, data: or http(s) URL "
        f"(or an object with 'path' or 'bytes')"
    )


def _media_lists(row: Mapping) -> dict[str, list[str]]:
    """The row's ``images`` / ``videos`` lists (a csv or parquet column may hold JSON text, or one path)."""
    lists = {}
    for key in _MEDIA_LISTS:
        value = row.get(key)
        if _blank(value):
            continue
        if isinstance(value, str):
            value = _structured(row, key, list, "a list of paths or URLs") if value.lstrip().startswith("[") else [value]
        if hasattr(value, "tolist") and not isinstance(value, list):  # numpy arrays from parquet
            value = value.tolist()
        if isinstance(value, tuple):
            value = list(value)
        if not isinstance(value, list):
            raise DataError(f"the '{key}' value is {brief(value)}; it must be a list of paths or URLs, one per {_MEDIA_LISTS[key][0]} in the text")
        lists[key] = [_media_entry(item, key, n) for n, item in enumerate(value, start=1)]
    return lists


def _texts(content: Any) -> list[str]:
    if isinstance(content, str):
        return [content]
    if isinstance(content, list):
        return [p["text"] for p in content if isinstance(p, Mapping) and p.get("type") == "text" and isinstance(p.get("text"), str)]
    return []


def _split_placeholders(text: str, pattern: re.Pattern, queues: dict[str, list[str]]) -> list[dict]:
    parts: list[dict] = []
    for piece in pattern.split(text):
        key = next((k for k, (placeholder, _, _) in _MEDIA_LISTS.items() if piece == placeholder and k in queues), None)
        if key is not None:
            kind = _MEDIA_LISTS[key][1]
            parts.append({"type": kind, kind: {"url": queues[key].pop(0)}})
        elif piece:
            parts.append({"type": "text", "text": piece})
    return parts


def _place_media(messages: list[dict], row: Mapping) -> list[dict]:
    """Each ``<image>`` (``<video>``) in the text becomes a part holding the next ``images`` (``videos``) entry.

    Rows without the lists are left as they are, so a text row may mention ``<image>``.
    """
    lists = _media_lists(row)
    if not lists:
        return messages
    placeholders = [_MEDIA_LISTS[key][0] for key in lists]
    pattern = re.compile("(" + "|".join(re.escape(p) for p in placeholders) + ")")
    texts = [text for message in messages for text in _texts(message.get("content"))]
    for key, entries in lists.items():
        placeholder, _, noun = _MEDIA_LISTS[key]
        found = sum(text.count(placeholder) for text in texts)
        if found != len(entries):
            raise DataError(
                f"the row has {found} {placeholder} placeholder{'' if found == 1 else 's'} in its text but "
                f"{len(entries)} entr{'y' if len(entries) == 1 else 'ies'} in '{key}'; put one {placeholder} in the "
                f"text where each {noun} goes, with one '{key}' entry per {placeholder}"
            )
    queues = {key: list(entries) for key, entries in lists.items()}
    out = []
    for message in messages:
        content = message.get("content")
        if isinstance(content, str) and pattern.search(content):
            content = _split_placeholders(content, pattern, queues)
        elif isinstance(content, list) and any(pattern.search(text) for text in _texts(content)):
            content = [
                split
                for part in content
                for split in (
                    _split_placeholders(part["text"], pattern, queues)
                    if isinstance(part, Mapping) and part.get("type") == "text" and isinstance(part.get("text"), str)
                    else [part]
                )
            ]
        out.append({**message, "content": content} if content is not message.get("content") else message)
    return out


# --- messages (OpenAI) ----------------------------------------------------------------------

_MESSAGE_EXTRAS = ("tool_calls", "tool_call_id", "name", "reasoning_content")


def _convert_messages(row: Mapping) -> dict:
    messages = _structured(row, "messages", list, "a list of {role, content} objects")
    if messages is None:
        raise DataError("the 'messages' value is empty; give at least a user and an assistant message")
    out = []
    for n, message in enumerate(messages, start=1):
        if not isinstance(message, Mapping) or "role" not in message:
            raise DataError(f"message {n} is {brief(message)}; each message must be an object with 'role' and 'content'")
        role = message["role"]
        if role == "function":  # the older OpenAI name of tool results
            role = "tool"
        converted = {"role": role, "content": message.get("content")}  # text or parts, checked by validate_conversation
        for key in _MESSAGE_EXTRAS:
            if message.get(key) is not None:
                converted[key] = message[key]
        out.append(converted)
    return _with_tools(_place_media(out, row), row)


# --- sharegpt -------------------------------------------------------------------------------

_SHAREGPT_ROLES = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "system": "system",
    "function_call": "assistant",
    "observation": "tool",
    "tool": "tool",
}


def _tool_call_message(value: Any, n: int) -> dict:
    call = value
    if isinstance(call, str):
        try:
            call = loads_row(call, f"turn {n} (function_call)")
        except json.JSONDecodeError:
            call = None
    calls = call if isinstance(call, list) else [call]
    if not calls or not all(isinstance(c, Mapping) and "name" in c for c in calls):
        raise DataError(
            f"turn {n} (function_call) is {brief(value)}; it must be a JSON object with 'name' and 'arguments'"
        )
    tool_calls = [
        {"type": "function", "function": {"name": c["name"], "arguments": c.get("arguments", c.get("parameters", {}))}}
        for c in calls
    ]
    return {"role": "assistant", "content": "", "tool_calls": tool_calls}


def _convert_sharegpt(row: Mapping) -> dict:
    turns = _structured(row, "conversations", list, "a list of {from, value} objects")
    if turns is None:
        raise DataError("the 'conversations' value is empty; give at least a human and a gpt turn")
    messages = []
    if not _blank(row.get("system")):
        messages.append({"role": "system", "content": _text(row, "system")})
    for n, turn in enumerate(turns, start=1):
        if not isinstance(turn, Mapping):
            raise DataError(f"turn {n} is {brief(turn)}; each turn must be an object with 'from' and 'value'")
        speaker = turn.get("from", turn.get("role"))
        value = turn.get("value", turn.get("content"))
        if speaker not in _SHAREGPT_ROLES:
            raise DataError(
                f"turn {n} has from={brief(speaker)}; use one of {', '.join(_SHAREGPT_ROLES)}"
            )
        if speaker == "function_call":
            messages.append(_tool_call_message(value, n))
        else:
            messages.append({"role": _SHAREGPT_ROLES[speaker], "content": value})
    return _with_tools(_place_media(messages, row), row)


# --- alpaca ---------------------------------------------------------------------------------


def _convert_alpaca(row: Mapping) -> dict:
    instruction = _text(row, "instruction")
    extra = _text(row, "input")
    if not instruction.strip() and not extra.strip():
        raise DataError("the 'instruction' is empty; give the instruction text")
    prompt = f"{instruction}\n\n{extra}" if instruction.strip() and extra.strip() else (instruction or extra)
    messages = _system_and_history(row)
    messages.append({"role": "user", "content": prompt})
    messages.append({"role": "assistant", "content": _text(row, "output")})
    return _with_tools(messages, row)


# --- query-response -------------------------------------------------------------------------

_QUERY_KEYS = (("query", "response"), ("prompt", "response"), ("question", "answer"))


def _query_keys(row: Mapping) -> tuple[str, str] | None:
    return next(((q, a) for q, a in _QUERY_KEYS if q in row and a in row), None)


def _convert_query_response(row: Mapping) -> dict:
    keys = _query_keys(row)
    if keys is None:
        raise DataError(
            f"the row has keys {brief_keys(row)}, but the query-response format needs query/response, "
            f"prompt/response or question/answer; rename the keys or pass another --dataset-format"
        )
    question, answer = keys
    messages = _system_and_history(row)
    messages.append({"role": "user", "content": _text(row, question)})
    messages.append({"role": "assistant", "content": _text(row, answer)})
    return _with_tools(messages, row)


def _needs(format_name: str, *keys: str):
    def convert_guard(convert):
        def guarded(row: Mapping) -> dict:
            missing = [k for k in keys if k not in row]
            if missing:
                raise DataError(
                    f"the row has keys {brief_keys(row)} and lacks {', '.join(repr(k) for k in missing)}, which the "
                    f"{format_name} format needs; rename the keys or pass another --dataset-format"
                )
            return convert(row)

        return guarded

    return convert_guard


@hookimpl
def tuneforge_dataset_formats():
    yield DatasetFormat(
        name="messages",
        description="OpenAI style: {'messages': [{'role', 'content'}, ...], 'tools': [...], 'images': [...]}",
        detect=lambda row: "messages" in row,
        convert=_needs("messages", "messages")(_convert_messages),
        priority=40,
    )
    yield DatasetFormat(
        name="sharegpt",
        description="{'conversations': [{'from': 'human'|'gpt'|..., 'value'}], 'system', 'tools', 'images'}",
        detect=lambda row: "conversations" in row,
        convert=_needs("sharegpt", "conversations")(_convert_sharegpt),
        priority=30,
    )
    yield DatasetFormat(
        name="alpaca",
        description="{'instruction', 'input', 'output', 'system', 'history': [[user, assistant], ...]}",
        detect=lambda row: "instruction" in row and "output" in row,
        convert=_needs("alpaca", "instruction", "output")(_convert_alpaca),
        priority=20,
    )
    yield DatasetFormat(
        name="query-response",
        description="{'query', 'response'} (or prompt/response, question/answer), 'system', 'history'",
        detect=lambda row: _query_keys(row) is not None,
        convert=_convert_query_response,
        priority=10,
    )
