"""Preference dataset formats: rows to canonical preference pairs or unpaired examples.

A pair is ``{"prompt": [messages], "chosen": [answer], "rejected": [answer]}``; an
unpaired example (KTO) is ``{"prompt": [messages], "completion": [answer], "label":
bool}``. ``prompt`` is a conversation that ends with the user's turn (a shared
history may come before it); an answer is one assistant message. Converters raise
``DataError`` with a sentence about the row; the core adds the file and line.
"""

from __future__ import annotations

import json
from typing import Any, Mapping

from tuneforge.api import DataError, brief, loads_row

PAIR_KEYS = ("prompt", "chosen", "rejected")
UNPAIRED_KEYS = ("prompt", "completion", "label")
_TRUE = {"true", "yes", "1", "desirable", "good", "chosen"}
_FALSE = {"false", "no", "0", "undesirable", "bad", "rejected"}


def _parsed(value: Any, key: str = "value") -> Any:
    """JSON text in a csv/parquet column becomes the list or object it encodes."""
    if isinstance(value, str) and value.lstrip().startswith(("[", "{")):
        try:
            return loads_row(value, f"the '{key}' value")
        except json.JSONDecodeError:
            return value
    if hasattr(value, "tolist") and not isinstance(value, (list, dict)):  # numpy arrays from parquet
        return value.tolist()
    return value


def _messages(value: Any, key: str, default_role: str) -> list[dict]:
    """A string, one message object or a list of messages, as a list of messages."""
    value = _parsed(value, key)
    if value is None or (isinstance(value, str) and not value.strip()):
        raise DataError(f"the '{key}' value is empty; give it text or a list of messages")
    if isinstance(value, (str, int, float)) and not isinstance(value, bool):
        return [{"role": default_role, "content": str(value)}]
    if isinstance(value, Mapping):
        value = [value]
    if not isinstance(value, (list, tuple)):
        raise DataError(f"the '{key}' value is a {type(value).__name__}; it must be text or a list of messages")
    out = []
    for n, message in enumerate(value, start=1):
        if not isinstance(message, Mapping) or "role" not in message:
            raise DataError(f"message {n} of '{key}' is {brief(message)}; each message must be an object with 'role' and 'content'")
        out.append(dict(message))
    return out


def _prefix(row: Mapping) -> list[dict]:
    """The optional ``system`` prompt and ``history`` ([user, assistant] pairs) that come before the prompt."""
    messages = []
    system = row.get("system")
    if isinstance(system, str) and system.strip():
        messages.append({"role": "system", "content": system})
    history = _parsed(row.get("history"), "history")
    if history is not None and not isinstance(history, (list, tuple)):
        raise DataError(f"the 'history' value is {brief(history)}; it must be a list of [user, assistant] pairs")
    for n, pair in enumerate(history or [], start=1):
        if not (isinstance(pair, (list, tuple)) and len(pair) == 2):
            raise DataError(f"history entry {n} is {brief(pair)}; each entry must be a [user, assistant] pair")
        messages += [{"role": "user", "content": pair[0]}, {"role": "assistant", "content": pair[1]}]
    return messages


def _split_shared_history(chosen: list[dict], rejected: list[dict]) -> tuple[list[dict], list[dict], list[dict]]:
    """Whole conversations that differ only at the end: (shared history, chosen end, rejected end)."""
    shared = 0
    while shared < min(len(chosen), len(rejected)) - 1 and chosen[shared] == rejected[shared]:
        shared += 1
    return chosen[:shared], chosen[shared:], rejected[shared:]


def convert_pair(row: Mapping) -> dict:
    """prompt/chosen/rejected, each text or messages; without a prompt, chosen and rejected are whole conversations."""
    chosen = _messages(row.get("chosen"), "chosen", "assistant")
    rejected = _messages(row.get("rejected"), "rejected", "assistant")
    if row.get("prompt") is None or (isinstance(row.get("prompt"), str) and not row["prompt"].strip()):
        if "prompt" in row:
            raise DataError("the 'prompt' value is empty; give the question the answers reply to")
        prompt, chosen, rejected = _split_shared_history(chosen, rejected)
        if not prompt:
            raise DataError(
                "the row has no 'prompt' and its chosen and rejected conversations share no opening turns; "
                "add a 'prompt' or give both as whole conversations that differ only in the last answer"
            )
    else:
        prompt = _messages(row["prompt"], "prompt", "user")
    pair = {"prompt": _prefix(row) + prompt, "chosen": chosen, "rejected": rejected}
    tools = _parsed(row.get("tools"), "tools")
    if tools:
        pair["tools"] = tools
    return pair


def convert_messages_rejected(row: Mapping) -> dict:
    """OpenAI ``messages`` whose last assistant message is the chosen answer, plus ``rejected_response``."""
    messages = _messages(row.get("messages"), "messages", "user")
    if messages[-1].get("role") != "assistant":
        raise DataError(
            f"the last of the 'messages' is a {messages[-1].get('role')} message; it must be the chosen assistant answer"
        )
    rejected = _messages(row.get("rejected_response"), "rejected_response", "assistant")
    pair = {"prompt": messages[:-1], "chosen": messages[-1:], "rejected": rejected}
    tools = _parsed(row.get("tools"), "tools")
    if tools:
        pair["tools"] = tools
    return pair


def _label(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    raise DataError(f"the 'label' value is {brief(value)}; use true (desirable) or false (undesirable)")


def convert_unpaired(row: Mapping) -> dict:
    """prompt/completion/label: one answer marked desirable (true) or undesirable (false)."""
    return {
        "prompt": _prefix(row) + _messages(row.get("prompt"), "prompt", "user"),
        "completion": _messages(row.get("completion"), "completion", "assistant"),
        "label": _label(row.get("label")),
    }


def is_pair(example: Mapping) -> bool:
    return "chosen" in example and "rejected" in example
