"""Tool-call answers: read the calls out of an answer, check them against the row's tools, compare them with the reference.

One implementation serves ``tuneforge eval`` (``score``: the metrics of a tool-calling
dataset such as ``device-actions``) and the reward functions (``judge``: one sample).

An answer may be given as:

- text as the model wrote it: calls in the markup of the chat template the model
  answered with, read by that template's own ``parse_tool_calls`` (the one the
  engines and the server read calls with; ``template`` below), by default the
  Hermes/ChatML layout (``<tool_call>{json}</tool_call>``); or the whole answer one
  JSON call ``{"name", "arguments" | "parameters"}`` or a JSON list of them; any
  other text is a plain answer. Markup the template opens a call with
  (``tool_call_start``) but cannot read is an unreadable attempt, not a plain answer;
- an assistant message ``{"role": "assistant", "content", "tool_calls"}`` (what
  ``tuneforge eval`` hands a dataset when the engine parsed calls), or a list of
  messages whose last one is the answer;
- an object with ``text`` and ``tool_calls`` (an engine's ``Completion``).

``template`` (an argument of ``read_answer``, ``judge`` and ``score``) is a built chat
template (``ChatTemplate.build(tokenizer)``): InternLM's answers its calls as
``<|action_start|><|plugin|>{json}<|action_end|>``, and only its template knows.

The reference is the row's final assistant message: its ``tool_calls``, or none (the
command must be refused with a plain answer). The schema check covers the JSON Schema
keywords tool descriptions use: ``type``, ``properties``, ``required``,
``additionalProperties``, ``enum``, ``items``, ``minimum``/``maximum``,
``minItems``/``maxItems``, ``pattern``; a call's arguments are a closed object (an
argument the tool does not define is a problem, unless its schema says
``"additionalProperties": true``), as strict function calling reads a tool.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass
from typing import Any, Mapping, Sequence


class AnswerText(str):
    """An answer's text that knows the chat template it was written in.

    It is a ``str`` to any code that reads text (a user's reward function, the format and
    length rewards); ``read_answer`` and ``judge`` read its calls with that template's
    parser instead of the Hermes default, so a family that writes its calls in another
    markup is judged on its calls. GRPO hands each sampled answer to the rewards this way.
    """

    template: Any

    def __new__(cls, text: str, template: Any = None) -> "AnswerText":
        made = super().__new__(cls, text)
        made.template = template
        return made


@dataclass(frozen=True)
class ToolCall:
    name: str
    arguments: Any  # what the call's arguments parsed to (an object when well formed)


@dataclass(frozen=True)
class Answer:
    """What was read from an answer: its calls, the text beside them, the call attempts that are not JSON."""

    content: str
    calls: tuple[ToolCall, ...]
    unreadable: tuple[str, ...]  # one sentence per call attempt that could not be read
    text: str  # the whole answer as text (format and length rewards read this)

    @property
    def refused(self) -> bool:
        """A plain answer: no call and no attempt at one."""
        return not self.calls and not self.unreadable


@dataclass(frozen=True)
class Judgement:
    """One answer against its row (see ``judge``)."""

    expects_refusal: bool
    refused: bool
    valid_json: bool  # every call reads and fits the tools' schema, and calls were made where the row expects them
    action_match: bool  # the called tools, as a multiset, are the reference's (none for a refusal)
    argument_f1: float
    problems: tuple[str, ...]  # why the calls are not valid, one sentence each

    @property
    def exact(self) -> bool:
        return self.action_match and self.argument_f1 == 1.0


def _parse_call(payload: Any) -> ToolCall | None:
    if not isinstance(payload, Mapping) or not isinstance(payload.get("name"), str):
        return None
    arguments = payload.get("arguments", payload.get("parameters", {}))
    return ToolCall(payload["name"], arguments)


def _parser_of(template: Any) -> tuple[Any, str]:
    """(parse_tool_calls, the marker that opens a call) of ``template``; Hermes where it reads no calls of its own."""
    parse = getattr(template, "parse_tool_calls", None)
    start = getattr(template, "tool_call_start", None)
    if parse is None or not start:
        from .templates import HERMES_TOOL_CALL_START, parse_hermes_tool_calls

        return parse_hermes_tool_calls, HERMES_TOOL_CALL_START
    return parse, start


def _read_text(text: str, template: Any = None) -> tuple[str, list[ToolCall], list[str]]:
    parse, start = _parser_of(template)
    content, parsed = parse(text)
    calls: list[ToolCall] = []
    for raw in parsed:
        name, arguments = _function_of(raw)
        calls.append(ToolCall(name, arguments))
    # The template leaves what it cannot read in the content: each call marker left there is a broken attempt.
    unreadable = [_why_unreadable(piece, start) for piece in content.split(start)[1:]]
    content = content.strip()
    if not calls and not unreadable and content[:1] in ("{", "["):
        try:
            payload = json.loads(content)
        except json.JSONDecodeError as exc:
            return content, [], [f"the answer looks like JSON but is not ({exc.msg} at character {exc.pos})"]
        items = payload if isinstance(payload, list) else [payload]
        whole = [_parse_call(item) for item in items]
        if whole and all(whole):
            return "", list(whole), []
        return content, [], ["the answer is JSON but not a call (an object with a 'name') or a list of calls"]
    return content, calls, unreadable


def _function_of(raw: Mapping[str, Any]) -> tuple[str, Any]:
    """(name, arguments) of a call in the OpenAI shape, its arguments parsed where they are a JSON string."""
    function = raw.get("function", raw)
    arguments = function.get("arguments", function.get("parameters", {}))
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments) if arguments.strip() else {}
        except json.JSONDecodeError:
            pass
    return function["name"], arguments


def _why_unreadable(after: str, start: str) -> str:
    """Why the call opened by ``start`` (``after``: the text that follows it) could not be read, in one sentence."""
    brace = after.find("{")
    if brace < 0:
        return f"a {start} call holds no JSON object"
    try:
        json.JSONDecoder().raw_decode(after[brace:])
    except json.JSONDecodeError as exc:
        return f"a {start} call is not JSON ({exc.msg} at character {exc.pos})"
    return f"a {start} call is not an object with a 'name' (or has text inside its markup after the JSON)"


def _hermes_text(content: str, calls: Sequence[ToolCall]) -> str:
    blocks = [
        "<tool_call>\n" + json.dumps({"name": c.name, "arguments": c.arguments}, ensure_ascii=False) + "\n</tool_call>"
        for c in calls
    ]
    return "\n".join(([content] if content else []) + blocks)


def read_answer(answer: Any, template: Any = None) -> Answer:
    """Read an answer in any of the module's shapes (None reads as an empty answer); text through ``template``'s parser."""
    if isinstance(answer, (list, tuple)):
        answer = answer[-1] if answer else None
    if answer is None:
        return Answer("", (), (), "")
    if isinstance(answer, str):
        if template is None:
            template = getattr(answer, "template", None)  # an AnswerText's own
        content, calls, unreadable = _read_text(answer, template)
        return Answer(content, tuple(calls), tuple(unreadable), answer)
    if isinstance(answer, Mapping):
        content, raw_calls = answer.get("content"), answer.get("tool_calls")
    else:
        content, raw_calls = getattr(answer, "text", None), getattr(answer, "tool_calls", None)
    content = content if isinstance(content, str) else ""
    content, calls, unreadable = _read_text(content, template)  # markup the engine could not parse stays in the content
    for k, raw in enumerate(raw_calls or (), 1):
        function = raw.get("function", raw) if isinstance(raw, Mapping) else None
        if not isinstance(function, Mapping) or not isinstance(function.get("name"), str):
            unreadable.append(f"tool call {k} has no function name")
            continue
        arguments = function.get("arguments", function.get("parameters", {}))
        if isinstance(arguments, str):
            try:
                arguments = json.loads(arguments) if arguments.strip() else {}
            except json.JSONDecodeError as exc:
                unreadable.append(f"the arguments of call {k} ({function['name']}) are not JSON ({exc.msg})")
                continue
        calls.append(ToolCall(function["name"], arguments))
    return Answer(content, tuple(calls), tuple(unreadable), _hermes_text(content, calls))


def reference_of(row: Mapping[str, Any]) -> tuple[ToolCall, ...]:
    """The calls of the row's final assistant message (empty: the row must be refused)."""
    messages = row.get("messages") or []
    final = messages[-1] if messages else {}
    if not isinstance(final, Mapping) or final.get("role") != "assistant":
        raise ValueError("the row has no final assistant message to compare the answer with")
    return read_answer(dict(final)).calls


def tools_by_name(tools: Sequence[Mapping[str, Any]] | None) -> dict[str, Mapping[str, Any]]:
    """Tool name -> its parameters schema."""
    found = {}
    for tool in tools or ():
        function = tool.get("function", tool)
        found[function["name"]] = function.get("parameters") or {"type": "object", "properties": {}}
    return found


_TYPES = {
    "object": lambda v: isinstance(v, Mapping),
    "array": lambda v: isinstance(v, list),
    "string": lambda v: isinstance(v, str),
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    "boolean": lambda v: isinstance(v, bool),
    "null": lambda v: v is None,
}


def schema_problems(schema: Mapping[str, Any], value: Any, where: str = "arguments") -> list[str]:
    """Where ``value`` breaks ``schema`` (the keywords of the module docstring), one sentence each."""
    problems: list[str] = []
    kind = schema.get("type")
    if kind is not None:
        kinds = kind if isinstance(kind, list) else [kind]
        if not any(_TYPES.get(k, lambda v: True)(value) for k in kinds):
            return [f"{where} is {json.dumps(value, ensure_ascii=False)}, not of type {'/'.join(kinds)}"]
    if "enum" in schema and value not in schema["enum"]:
        problems.append(f"{where} is {json.dumps(value, ensure_ascii=False)}, not one of {schema['enum']}")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if "minimum" in schema and value < schema["minimum"]:
            problems.append(f"{where} is {value}, below the minimum {schema['minimum']}")
        if "maximum" in schema and value > schema["maximum"]:
            problems.append(f"{where} is {value}, above the maximum {schema['maximum']}")
    if isinstance(value, str) and "pattern" in schema and not re.search(schema["pattern"], value):
        problems.append(f"{where} is {value!r}, which does not match {schema['pattern']!r}")
    if isinstance(value, list):
        if "minItems" in schema and len(value) < schema["minItems"]:
            problems.append(f"{where} has {len(value)} items, fewer than {schema['minItems']}")
        if "maxItems" in schema and len(value) > schema["maxItems"]:
            problems.append(f"{where} has {len(value)} items, more than {schema['maxItems']}")
        if isinstance(schema.get("items"), Mapping):
            for i, item in enumerate(value):
                problems += schema_problems(schema["items"], item, f"{where}[{i}]")
    if isinstance(value, Mapping):
        properties = schema.get("properties") or {}
        for name in schema.get("required") or ():
            if name not in value:
                problems.append(f"{where} lacks the required '{name}'")
        for name, item in value.items():
            if name in properties:
                problems += schema_problems(properties[name], item, f"{where}.{name}")
            elif schema.get("additionalProperties") is False:
                problems.append(f"{where} has '{name}', which the schema does not define")
    return problems


def call_problems(answer: Answer, tools: Sequence[Mapping[str, Any]] | None) -> list[str]:
    """Why the answer's calls are not valid for ``tools``: unreadable attempts, unknown tools, arguments off the schema."""
    known = tools_by_name(tools)
    problems = list(answer.unreadable)
    for call in answer.calls:
        if call.name not in known:
            problems.append(f"'{call.name}' is not one of the tools ({', '.join(sorted(known)) or 'none'})")
            continue
        # Arguments are a closed object, as strict function calling reads a tool: one the tool does not define is a problem.
        schema = {"additionalProperties": False, **known[call.name]}
        problems += schema_problems(schema, call.arguments, f"{call.name} arguments")
    return problems


def _norm(value: Any) -> Any:
    """A value as argument comparison sees it: text case- and space-insensitive, numbers by value, lists as multisets."""
    if isinstance(value, str):
        return " ".join(value.casefold().split()).strip(" .!?,;:\"'")
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, list):
        return ("list", tuple(sorted((repr(_norm(v)) for v in value))))
    if isinstance(value, Mapping):
        return ("object", tuple(sorted((str(k), repr(_norm(v))) for k, v in value.items())))
    return repr(value)


def _argument_items(calls: Sequence[ToolCall]) -> Counter:
    items: Counter = Counter()
    for call in calls:
        if isinstance(call.arguments, Mapping):
            for key, value in call.arguments.items():
                items[(call.name, str(key), repr(_norm(value)))] += 1
    return items


def argument_f1(calls: Sequence[ToolCall], reference: Sequence[ToolCall]) -> float:
    """F1 of (tool, argument, value) between the calls and the reference's.

    Where neither side has an argument, 1.0 when the called tools are the reference's, else 0.0.
    """
    said, truth = _argument_items(calls), _argument_items(reference)
    if not said and not truth:
        return 1.0 if _names(calls) == _names(reference) else 0.0
    return _f1(said, truth)


def action_f1(calls: Sequence[ToolCall], reference: Sequence[ToolCall]) -> float:
    """F1 of the called tools (as a multiset) against the reference's: one right tool of two scores 2/3.

    1.0 where neither side calls a tool (a command to refuse, refused).
    """
    said, truth = _names(calls), _names(reference)
    return 1.0 if not said and not truth else _f1(said, truth)


def _f1(said: Counter, truth: Counter) -> float:
    common = sum((said & truth).values())
    if not common:
        return 0.0
    precision, recall = common / sum(said.values()), common / sum(truth.values())
    return 2 * precision * recall / (precision + recall)


def _names(calls: Sequence[ToolCall]) -> Counter:
    return Counter(call.name for call in calls)


def judge(row: Mapping[str, Any], answer: Any, template: Any = None) -> Judgement:
    """One answer against its row's tools (``row["tools"]``) and reference (its final assistant message).

    ``template``: the chat template the model answered with, whose parser reads calls out of text (default: Hermes).
    """
    read = answer if isinstance(answer, Answer) else read_answer(answer, template)
    reference = reference_of(row)
    expects_refusal = not reference
    problems = call_problems(read, row.get("tools"))
    if not expects_refusal and not read.calls and not problems:
        problems.append("the answer calls no tool")
    actions = not read.unreadable and _names(read.calls) == _names(reference)
    return Judgement(
        expects_refusal=expects_refusal,
        refused=read.refused,
        valid_json=not problems,
        action_match=actions,
        argument_f1=round(argument_f1(read.calls, reference), 6) if not read.unreadable or read.calls else 0.0,
        problems=tuple(problems),
    )


def score(rows: Sequence[Mapping[str, Any]], answers: Sequence[Any], template: Any = None) -> dict:
    """The metrics of tool-call answers, for ``tuneforge eval``.

    Over the rows that expect calls: ``valid_json`` (every call reads as JSON and fits
    the tools' schema; an answer without a call fails), ``action_accuracy`` (the called
    tools are the reference's), ``argument_f1`` (the mean of each answer's F1 of
    (tool, argument, value) against the reference), ``exact`` (both right) and
    ``false_refusals``. Over the rows that must be refused: ``refusal_accuracy`` (a
    plain answer, no call). ``per_row`` holds each answer's judgement. ``template``: the
    chat template the model answered with (its parser reads calls out of text; default: Hermes).
    """
    if len(rows) != len(answers):
        raise ValueError(f"{len(rows)} rows but {len(answers)} answers; answer every row once.")
    judged = [judge(row, answer, template) for row, answer in zip(rows, answers)]
    acting = [j for j in judged if not j.expects_refusal]
    refusing = [j for j in judged if j.expects_refusal]
    valid = sum(j.valid_json for j in acting)
    actions = sum(j.action_match for j in acting)
    exact = sum(j.exact for j in acting)
    refused = sum(j.refused for j in refusing)
    f1 = round(sum(j.argument_f1 for j in acting) / len(acting), 4) if acting else 0.0
    false_refusals = sum(j.refused for j in acting)
    n, m = len(acting), len(refusing)
    report = [
        f"valid JSON calls: {valid}/{n} ({_share(valid, n):.0%})",
        f"action accuracy: {actions}/{n} ({_share(actions, n):.0%}); exact (actions and arguments): {exact}/{n} ({_share(exact, n):.0%})",
        f"argument F1: {f1:.3f}",
        f"refusal accuracy: {refused}/{m} ({_share(refused, m):.0%}); commands wrongly refused: {false_refusals}/{n}",
    ]
    return {
        "report": report,
        "total": len(rows),
        "action_rows": n,
        "refusal_rows": m,
        "valid_json": {"passed": valid, "total": n},
        "valid_json_rate": _share(valid, n),
        "action_accuracy": _share(actions, n),
        "argument_f1": f1,
        "exact": _share(exact, n),
        "refusal_accuracy": _share(refused, m),
        "false_refusals": false_refusals,
        "per_row": [
            {
                "expects_refusal": j.expects_refusal,
                "refused": j.refused,
                "valid_json": j.valid_json,
                "action_match": j.action_match,
                "argument_f1": j.argument_f1,
                "problems": list(j.problems),
            }
            for j in judged
        ],
    }


def _share(part: int, whole: int) -> float:
    return round(part / whole, 4) if whole else 0.0
