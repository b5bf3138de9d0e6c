"""Rows to canonical conversations: detect the format per row, convert, validate.

This runs over every row before any tokenization, so a bad row fails the run in
seconds, with its file and line.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from ..errors import DataError
from ..messages import ContentError, check_content
from ..records import DatasetFormat
from .media import MediaCheck
from .rows import BadRows, Row
from .text import brief, brief_keys

ROLES = ("system", "user", "assistant", "tool")

_NEXT_ROLES = {
    "user": ({"assistant"}, "a user message must be followed by an assistant answer"),
    "assistant": ({"user", "tool"}, "an assistant message must be followed by a user message or a tool result"),
    "tool": ({"tool", "assistant"}, "a tool result must be followed by another tool result or an assistant message"),
}


@dataclass
class Converted:
    """A row in canonical form: ``data`` is ``{"messages", "tools"?}`` (or a preference pair)."""

    data: dict
    where: str
    source: str
    format: str

    @property
    def messages(self) -> list[dict]:
        return self.data["messages"]

    @property
    def tools(self) -> list | None:
        return self.data.get("tools")


def dataset_formats(kind: str = "conversation") -> list[DatasetFormat]:
    """The registered formats of ``kind``, in the order detection tries them."""
    from ..registry import get_registry

    formats = [f for f in get_registry().all("dataset_formats") if f.kind == kind]
    return sorted(formats, key=lambda f: -f.priority)


def forced_format(name: str, kind: str = "conversation") -> DatasetFormat:
    """The format named by ``--dataset-format``, checked to produce ``kind`` data."""
    from ..registry import RegistryError, get_registry

    try:
        record = get_registry().get("dataset_formats", name)
    except RegistryError as exc:
        raise DataError(str(exc)) from None
    if record.kind != kind:
        raise DataError(
            f"Dataset format '{name}' produces {record.kind} data, but this training method needs {kind} data; "
            f"pass a {kind} format to --dataset-format or leave it out."
        )
    return record


def convert_row(data: Any, formats: Sequence[DatasetFormat], forced: DatasetFormat | None = None) -> tuple[dict, str]:
    """Convert one raw row; raises DataError with a sentence about the row."""
    if not isinstance(data, Mapping):
        raise DataError(
            f"the row is a {type(data).__name__}, not an object with named fields; write one JSON object per row"
        )
    chosen = forced or next((f for f in formats if f.detect(data)), None)
    if chosen is None:
        names = ", ".join(f.name for f in formats)
        raise DataError(
            f"the row has keys {brief_keys(data)}, which match no dataset format ({names}); "
            f"rename the keys or pass --dataset-format"
        )
    try:
        converted = chosen.convert(data)
    except DataError:
        raise
    except (KeyError, TypeError, ValueError, AttributeError, IndexError) as exc:
        raise DataError(
            f"the {chosen.name} format could not convert the row ({type(exc).__name__}: {exc}); "
            f"fix the row or pass another --dataset-format"
        ) from None
    return converted, chosen.name


def _message_content(message: Mapping, n: int, role: str) -> str | list[dict]:
    """A message's content through the one content check (``tuneforge.messages``): text, or parts."""
    content = message.get("content")
    if content is None and role == "assistant" and message.get("tool_calls"):
        return ""
    try:
        content = check_content(content, f"message {n} ({role})")
    except ContentError as exc:
        raise DataError(str(exc).rstrip(".")) from None
    if isinstance(content, list) and role != "user":
        kind = next(part["type"] for part in content if part["type"] != "text")
        raise DataError(f"message {n} ({role}) has a '{kind}' part; only user messages may carry images, audio or video")
    return content


def check_message_fields(message: Mapping, label: str) -> None:
    """Check the fields beside role and content (tool calls, ids, names) have the types templates expect.

    ``label`` names the message in the sentence ("message 3 (assistant)").
    """
    calls = message.get("tool_calls")
    if calls is not None:
        if not isinstance(calls, list):
            raise DataError(f"{label} has 'tool_calls' {brief(calls)}; it must be a list of calls")
        for k, call in enumerate(calls, start=1):
            function = call.get("function", call) if isinstance(call, Mapping) else None
            if not isinstance(function, Mapping) or not isinstance(function.get("name"), str):
                raise DataError(
                    f"{label} has tool call {k} {brief(call)}; a call must be {{'function': {{'name': text, 'arguments': ...}}}}"
                )
            arguments = function.get("arguments", function.get("parameters"))
            if arguments is not None and not isinstance(arguments, (str, Mapping)):
                raise DataError(f"{label} has tool call {k} with arguments {brief(arguments)}; give an object or JSON text")
    for key in ("tool_call_id", "name", "reasoning_content"):
        value = message.get(key)
        if value is not None and not isinstance(value, str):
            raise DataError(f"{label} has '{key}' {brief(value)}; it must be text")


def validate_conversation(conversation: Mapping, training: bool = True) -> dict:
    """Check roles, contents and turn order; returns a clean copy.

    An empty system prompt is kept: templates render it as the official ones do (Qwen2.5
    writes an empty system turn instead of its default one), so a row trains on what a
    server renders for the same messages. A training conversation must end with an
    assistant answer.
    """
    messages = conversation.get("messages") if isinstance(conversation, Mapping) else None
    if not isinstance(messages, list):
        raise DataError("the dataset format produced no 'messages' list; fix the format plugin")
    clean: list[dict] = []
    numbers: list[int] = []
    for n, message in enumerate(messages, start=1):
        if not isinstance(message, Mapping):
            raise DataError(f"message {n} is {brief(message)}; each message must be an object with 'role' and 'content'")
        role = message.get("role")
        if role not in ROLES:
            raise DataError(f"message {n} has role {brief(role)}; use one of {', '.join(ROLES)}")
        content = _message_content(message, n, role)
        check_message_fields(message, f"message {n} ({role})")
        if role == "system":
            if n != 1:
                raise DataError(f"message {n} is a system message; only the first message may be a system prompt")
        elif role in ("user", "assistant") and not (isinstance(content, list) or content.strip() or message.get("tool_calls")):
            raise DataError(f"message {n} ({role}) is empty; give it text or remove the row")
        clean.append({**message, "role": role, "content": content})
        numbers.append(n)

    body = [(n, m) for n, m in zip(numbers, clean) if m["role"] != "system"]
    if not body:
        raise DataError("the conversation has no user or assistant message; give it at least a question and an answer")
    first_n, first = body[0]
    if first["role"] != "user":
        raise DataError(
            f"message {first_n} ({first['role']}) comes first; a conversation must start with a user message "
            f"(after an optional system prompt)"
        )
    for (_, previous), (n, message) in zip(body, body[1:]):
        allowed, rule = _NEXT_ROLES[previous["role"]]
        if message["role"] not in allowed:
            raise DataError(f"message {n} ({message['role']}) follows a {previous['role']} message; {rule}")
    if training and body[-1][1]["role"] != "assistant":
        raise DataError(
            f"the last message is a {body[-1][1]['role']} message; a training row must end with an assistant answer"
        )

    result: dict = {"messages": clean}
    tools = check_tools(conversation.get("tools"))
    if tools:
        result["tools"] = tools
    return result


def check_tools(tools: Any) -> list | None:
    """A conversation's ``tools``: None, or a list of function descriptions (objects)."""
    if not tools:
        return None
    if not isinstance(tools, list) or not all(isinstance(t, Mapping) for t in tools):
        raise DataError(f"the 'tools' value is {brief(tools)}; it must be a list of function descriptions")
    return list(tools)


def add_system_prompt(conversation: dict, system: str | None) -> dict:
    """Put ``system`` first in a conversation that has no system message (or an empty one, which it replaces)."""
    messages = conversation.get("messages")
    if not system or not isinstance(messages, list):
        return conversation
    if messages and isinstance(messages[0], Mapping) and messages[0].get("role") == "system":
        content = messages[0].get("content")
        if not (isinstance(content, str) and not content.strip()):
            return conversation
        messages = messages[1:]
    return {**conversation, "messages": [{"role": "system", "content": system}, *messages]}


def convert_rows(
    rows: Sequence[Row],
    *,
    dataset_format: str | None = None,
    system: str | None = None,
    bad: BadRows | None = None,
    kind: str = "conversation",
    training: bool = True,
) -> list[Converted]:
    """Convert and validate every row; bad rows raise or are skipped (``bad.skip``).

    The images and videos the rows name are found (relative paths from each row's
    dataset folder), fetched where remote, and checked here (``.media``), so a missing
    or broken picture fails with its row's file and line before any tokenization.
    """
    bad = bad if bad is not None else BadRows()
    formats = dataset_formats(kind)
    if not formats and dataset_format is None:
        raise DataError(f"No {kind} dataset format is registered; install a plugin that provides one.")
    forced = forced_format(dataset_format, kind) if dataset_format else None
    media = MediaCheck()
    out: list[Converted] = []
    for row in rows:
        try:
            data, format_name = convert_row(row.data, formats, forced)
            if kind == "conversation":
                data = validate_conversation(add_system_prompt(data, system), training=training)
            data = media.resolve(data, row.folder)
        except DataError as exc:
            bad.report(row.where, str(exc))
            continue
        out.append(Converted(data, row.where, row.source, format_name))
    return out
