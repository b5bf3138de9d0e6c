"""Template parity: does the template tuneforge uses render what the checkpoint's own chat template renders?

A model trained with one prompt layout and served with another (a missing newline,
a dropped ``<think>`` block, a tool block laid out differently) answers worse, and
nothing says why. When a checkpoint carries a ``chat_template`` and a named
tuneforge template is in use, every command that loads the model (``sft``,
``rlhf``, ``infer``, ``deploy``, ``eval``, ``export``) renders a built-in set of
probe conversations through both and stops, before any weights load, at the first
difference, with a small diff and the flag that allows it (``--allow-template-drift``,
then recorded in the output directory). ``tuneforge template check`` runs the same
comparison on demand, on the probes and the first rows of a dataset.

What is compared, for each conversation: the whole rendering (no generation prompt),
and the prompt a server renders for its last answer (the conversation before it,
with the generation prompt), as text. The checkpoint's template gets the template's
``chat_template_kwargs`` (``enable_thinking=False`` for a template that answers
without reasoning). Tool-call arguments are given as objects, as transformers and
vLLM hand them to templates; a dataset row's JSON-string arguments are tried as
given and as objects. A template that says ``chat_template_parts = True`` (a
vision-language model's, whose own template reads contents as lists of parts, as its
processor is given them) has the checkpoint's template given each text as one text
part and each ``image_url`` part as an ``image`` part. Where the checkpoint's template fails on a conversation
the tuneforge template must refuse it too. Probes with tools are left out when the
checkpoint's template ignores tools (it renders a tool list as nothing), and a probe
the checkpoint's template cannot render is left out (both are said in the report);
a dataset row is never left out.
"""

from __future__ import annotations

import difflib
import json
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from .errors import TuneforgeError

ALLOW_FLAG = "--allow-template-drift"

_TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "The weather forecast of a city.",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string", "description": "City name"}, "days": {"type": "integer"}},
                "required": ["city"],
            },
        },
    },
    {
        "type": "function",
        "function": {
            "name": "search_notes",
            "description": "Search the meeting notes.",
            "parameters": {"type": "object", "properties": {"query": {"type": "string"}}, "required": ["query"]},
        },
    },
]


def _call(name: str, arguments: dict, number: int) -> dict:
    return {"id": f"call_{number}", "type": "function", "function": {"name": name, "arguments": arguments}}


@dataclass
class Conversation:
    """One conversation to render: its messages, tools (or None) and a label for the report."""

    label: str
    messages: list[dict]
    tools: list[dict] | None = None
    probe: bool = True  # a built-in probe (left out where the checkpoint's template cannot render it)


def probes() -> list[Conversation]:
    """The built-in probe set: the shapes a chat, tool-calling or reasoning dataset holds."""
    return [
        Conversation("one question", [
            {"role": "user", "content": "What is the capital of France?"},
            {"role": "assistant", "content": "Paris."},
        ]),
        Conversation("system prompt, two turns", [
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": "Two plus two?"},
            {"role": "assistant", "content": "Four."},
            {"role": "user", "content": "And three plus three?"},
            {"role": "assistant", "content": "Six."},
        ]),
        Conversation("unicode and whitespace", [
            {"role": "user", "content": "Grüße aus 東京 🙂\n\n  indented\ttab "},
            {"role": "assistant", "content": "¡Hola!\n\n- one\n- two"},
            {"role": "user", "content": "Is <|im_start|> or [INST] a token here?"},
            {"role": "assistant", "content": "It is written as <tool_call> text."},
        ]),
        Conversation("tools, a call and its result", [
            {"role": "user", "content": "Weather in Paris for 2 days?"},
            {"role": "assistant", "content": "", "tool_calls": [_call("get_weather", {"city": "Paris", "days": 2}, 1)]},
            {"role": "tool", "tool_call_id": "call_1", "content": "{\"forecast\": \"sunny\"}"},
            {"role": "assistant", "content": "Sunny, both days."},
        ], _TOOLS),
        Conversation("empty system, tools, two calls in a turn", [
            {"role": "system", "content": ""},
            {"role": "user", "content": "Weather in Oslo, and my notes on budgets?"},
            {"role": "assistant", "content": "Checking both.", "tool_calls": [
                _call("get_weather", {"city": "Oslo"}, 2), _call("search_notes", {"query": "budget"}, 3)]},
            {"role": "tool", "tool_call_id": "call_2", "content": "rain"},
            {"role": "tool", "tool_call_id": "call_3", "content": "Budget review on Friday."},
            {"role": "assistant", "content": "Rain in Oslo; the budget review is on Friday."},
        ], _TOOLS),
        Conversation("system prompt with tools, a question", [
            {"role": "system", "content": "You plan trips."},
            {"role": "user", "content": "Should I pack an umbrella for Rome?"},
            {"role": "assistant", "content": "Let me look.", "tool_calls": [_call("get_weather", {"city": "Rome", "days": 3}, 4)]},
        ], _TOOLS),
        Conversation("reasoning in the history", [
            {"role": "user", "content": "Is 91 prime?"},
            {"role": "assistant", "reasoning_content": "91 = 7 * 13.", "content": "No: 91 = 7 x 13."},
            {"role": "user", "content": "And 97?"},
            {"role": "assistant", "reasoning_content": "No divisor up to 9 divides 97.", "content": "Yes, 97 is prime."},
        ]),
    ]


@dataclass
class Difference:
    """A conversation the two templates render differently."""

    label: str
    messages: list[dict]
    tools: list[dict] | None
    generation_prompt: bool
    expected: str  # what the checkpoint's template renders, or why it fails
    got: str  # what the tuneforge template renders, or why it refuses
    expected_fails: bool = False
    got_fails: bool = False

    def describe(self, template_name: str, *, context: int = 60) -> str:
        """A small diff: where the renderings part, each side's text around it, and the conversation."""
        what = "the prompt for its last answer (with the generation prompt)" if self.generation_prompt else "the whole conversation"
        lines = [f"- {self.label}: {what}"]
        conversation = json.dumps(self.messages, ensure_ascii=False)
        lines.append(f"    conversation: {conversation[:400]}{' ...' if len(conversation) > 400 else ''}")
        if self.tools:
            lines.append(f"    tools: {', '.join(t.get('function', t).get('name', '?') for t in self.tools)}")
        expected_label, got_label = "expected (the checkpoint's chat template):", f"got (template '{template_name}'):"
        width = max(len(expected_label), len(got_label))
        if self.expected_fails or self.got_fails:
            lines.append(f"    {expected_label:<{width}} {'fails: ' if self.expected_fails else ''}{_shown(self.expected, 0, 200)}")
            lines.append(f"    {got_label:<{width}} {'refuses: ' if self.got_fails else ''}{_shown(self.got, 0, 200)}")
            return "\n".join(lines)
        at = first_difference(self.expected, self.got)
        line = self.expected.count("\n", 0, at) + 1
        lines.append(f"    first difference at character {at} (line {line}):")
        lines.append(f"    {expected_label:<{width}} {_shown(self.expected, at - context, at + context)}")
        lines.append(f"    {got_label:<{width}} {_shown(self.got, at - context, at + context)}")
        diff = difflib.unified_diff(
            self.expected.splitlines(keepends=True), self.got.splitlines(keepends=True),
            "checkpoint", template_name, n=1, lineterm="",
        )
        shown = [
            f"    {d.rstrip()}" if d.startswith(("---", "+++", "@@")) else f"    {d[0]}{d[1:]!r}"[:180]
            for d in diff
        ]
        lines += shown[:16] + (["    ..."] if len(shown) > 16 else [])
        return "\n".join(lines)

    def signature(self) -> tuple:
        """What the difference looks like where the renderings part: differences alike are shown once."""
        if self.expected_fails or self.got_fails:
            return (self.expected_fails, self.got_fails)
        at = first_difference(self.expected, self.got)
        return (self.expected[max(0, at - 20): at + 20], self.got[max(0, at - 20): at + 4])


def first_difference(a: str, b: str) -> int:
    for index, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return index
    return min(len(a), len(b))


def _shown(text: str, start: int, end: int) -> str:
    start, end = max(0, start), min(len(text), end)
    return ("..." if start else "") + repr(text[start:end]) + ("..." if end < len(text) else "")


@dataclass
class ParityReport:
    """The outcome of a comparison: how many renderings, the differences, and what was left out and why."""

    template: str
    compared: int = 0  # renderings compared
    conversations: int = 0
    differences: list[Difference] = field(default_factory=list)
    left_out: list[str] = field(default_factory=list)
    allowed: bool = False

    @property
    def ok(self) -> bool:
        return not self.differences

    def describe(self, limit: int = 5) -> str:
        head = (
            f"template '{self.template}' and the checkpoint's own chat template render {len(self.differences)} of "
            f"{self.compared} renderings ({self.conversations} conversations) differently"
            if self.differences
            else f"template '{self.template}' renders all {self.compared} renderings ({self.conversations} conversations) "
            f"as the checkpoint's own chat template does"
        )
        parts = [head + ":" if self.differences else head + "."]
        shown: dict[tuple, list[Difference]] = {}
        for difference in self.differences:
            shown.setdefault(difference.signature(), []).append(difference)
        for number, alike in enumerate(shown.values()):
            if number == limit:
                parts.append(f"- ... and {sum(len(a) for a in list(shown.values())[limit:])} more, differing elsewhere")
                break
            parts.append(alike[0].describe(self.template))
            if len(alike) > 1:
                others = sorted({f"{d.label}{' (prompt)' if d.generation_prompt else ''}" for d in alike[1:]})
                parts.append(f"    the same difference in {len(alike) - 1} more: {'; '.join(others)}")
        parts += [f"(left out: {note})" for note in self.left_out]
        return "\n".join(parts)

    def record(self) -> dict[str, Any]:
        """What an output directory records of the check."""
        return {
            "template": self.template,
            "compared": self.compared,
            "differences": len(self.differences),
            "allowed": self.allowed,
            "first_difference": self.differences[0].label if self.differences else None,
            "left_out": list(self.left_out),
        }


class TemplateDriftError(TuneforgeError):
    """The template in use renders conversations differently from the checkpoint's own chat template."""


# --- rendering ---------------------------------------------------------------------------


def _as_parts(content: Any) -> Any:
    """Content as a processor's template reads it: text as one text part, ``image_url`` parts as ``image`` parts."""
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    if isinstance(content, list):
        return [{"type": "image"} if isinstance(p, Mapping) and p.get("type") == "image_url" else p for p in content]
    return content


def _official_input(messages: Sequence[Mapping], objects: bool, parts: bool = False) -> list[dict]:
    out = []
    for message in messages:
        message = {k: v for k, v in message.items() if v is not None or k == "content"}
        if parts and "content" in message:
            message["content"] = _as_parts(message["content"])
        if objects and message.get("tool_calls"):
            calls = []
            for call in message["tool_calls"]:
                function = dict(call.get("function", call))
                if isinstance(function.get("arguments"), str):
                    try:
                        function["arguments"] = json.loads(function["arguments"])
                    except json.JSONDecodeError:
                        pass
                calls.append({**call, "function": function})
            message["tool_calls"] = calls
        out.append(message)
    return out


def _has_string_arguments(messages: Sequence[Mapping]) -> bool:
    return any(
        isinstance(call.get("function", call).get("arguments"), str)
        for m in messages
        for call in (m.get("tool_calls") or ())
    )


def _render_checkpoint(tokenizer, messages, tools, generation_prompt: bool, kwargs: Mapping, objects: bool, parts: bool = False) -> str:
    return tokenizer.apply_chat_template(
        _official_input(messages, objects, parts), tools=tools or None, tokenize=False,
        add_generation_prompt=generation_prompt, **kwargs,
    )


def _render_ours(template, messages, tools, generation_prompt: bool) -> str:
    text = getattr(template, "text", None)
    if text is not None:
        return text(list(messages), tools, add_generation_prompt=generation_prompt)
    ids = template.prompt(list(messages), tools) if generation_prompt else template.encode(list(messages), tools=tools).input_ids
    return template.tokenizer.decode(ids, skip_special_tokens=False)


def _attempt(render) -> tuple[str | None, str | None]:
    try:
        return render(), None
    except Exception as exc:  # jinja raises its own errors; templates raise TemplateError
        return None, f"{type(exc).__name__}: {exc}"


def _ignores_tools(tokenizer, kwargs, parts: bool = False) -> bool:
    question = [{"role": "user", "content": "Hello?"}]
    with_tools, error = _attempt(lambda: _render_checkpoint(tokenizer, question, _TOOLS, False, kwargs, True, parts))
    without = _attempt(lambda: _render_checkpoint(tokenizer, question, None, False, kwargs, True, parts))[0]
    return error is None and with_tools == without


def _renderings(conversation: Conversation) -> list[tuple[list[dict], bool]]:
    """(messages, generation prompt) pairs: the whole conversation, and the prompt of its last answer."""
    messages = conversation.messages
    out = [(messages, False)]
    if messages and messages[-1].get("role") == "assistant" and len(messages) > 1:
        out.append((messages[:-1], True))
    elif messages and messages[-1].get("role") != "assistant":
        out.append((messages, True))
    return out


def compare(template, tokenizer, conversations: Sequence[Conversation], *, name: str | None = None) -> ParityReport:
    """Render ``conversations`` through ``tokenizer``'s own chat template and through ``template``; list the differences."""
    name = name or getattr(template, "name", type(template).__name__)
    kwargs = dict(getattr(template, "chat_template_kwargs", None) or {})
    parts = bool(getattr(template, "chat_template_parts", False))
    report = ParityReport(template=name)
    ignores_tools = _ignores_tools(tokenizer, kwargs, parts)
    skipped_tools = skipped_failing = 0
    for conversation in conversations:
        uses_tools = bool(conversation.tools) or any(m.get("tool_calls") or m.get("role") == "tool" for m in conversation.messages)
        if conversation.probe and uses_tools and ignores_tools:
            skipped_tools += 1
            continue
        pairs = []
        for messages, generation_prompt in _renderings(conversation):
            tools = conversation.tools
            expected, expected_error = _attempt(lambda: _render_checkpoint(tokenizer, messages, tools, generation_prompt, kwargs, True, parts))
            got, got_error = _attempt(lambda: _render_ours(template, messages, tools, generation_prompt))
            if expected != got and got is not None and _has_string_arguments(messages):
                as_given, error = _attempt(lambda: _render_checkpoint(tokenizer, messages, tools, generation_prompt, kwargs, False, parts))
                if error is None and as_given == got:
                    expected, expected_error = as_given, None
            pairs.append((messages, generation_prompt, expected, expected_error, got, got_error))
        if conversation.probe and any(p[3] is not None for p in pairs):
            skipped_failing += 1
            continue
        report.conversations += 1
        for messages, generation_prompt, expected, expected_error, got, got_error in pairs:
            report.compared += 1
            if expected_error is not None and got_error is not None:
                continue  # both refuse it
            if expected_error is None and got_error is None and expected == got:
                continue
            report.differences.append(Difference(
                conversation.label, list(messages), conversation.tools, generation_prompt,
                expected if expected_error is None else expected_error,
                got if got_error is None else got_error,
                expected_fails=expected_error is not None, got_fails=got_error is not None,
            ))
    if skipped_tools:
        report.left_out.append(f"{skipped_tools} probes with tools: the checkpoint's chat template renders no tools")
    if skipped_failing:
        report.left_out.append(f"{skipped_failing} probes the checkpoint's chat template cannot render")
    return report


# --- when a command runs ------------------------------------------------------------------


def applies(template_name: str, template, tokenizer) -> bool:
    """Whether a command checks parity: a named template (not the tokenizer's own) on a checkpoint that has a chat template."""
    from .templates import HFChatTemplate

    return (
        template_name != "default"
        and not isinstance(template, HFChatTemplate)
        and isinstance(getattr(tokenizer, "chat_template", None), str)
        and bool(tokenizer.chat_template.strip())
    )


def check_bundle(bundle, *, allow_drift: bool = False, warn=None) -> ParityReport | None:
    """Compare the bundle's template with its checkpoint's own chat template on the probes.

    None when the check does not apply. A difference raises ``TemplateDriftError``
    (with the diff and the flag that allows it) unless ``allow_drift``, or the run the
    bundle holds was trained with that template with drift allowed; then ``warn`` gets
    the report and it is returned, marked allowed.
    """
    if not applies(bundle.template_name, bundle.template, bundle.tokenizer):
        return None
    report = compare(bundle.template, bundle.tokenizer, probes(), name=bundle.template_name)
    if report.ok:
        return report
    run = bundle.run
    trained_so = bool(run and run.template == bundle.template_name and (run.template_parity or {}).get("allowed"))
    if not (allow_drift or trained_so):
        where = f"'{bundle.spec}'"
        raise TemplateDriftError(
            f"The chat template of {where} and tuneforge's template '{bundle.template_name}' lay out conversations "
            f"differently, so a model trained or served with one would see another layout elsewhere; pass "
            f"--template default to use the checkpoint's own, a --template that matches it, or {ALLOW_FLAG} to go on "
            f"anyway (recorded in the output directory).\n{report.describe()}"
        )
    report.allowed = True
    if warn is not None:
        reason = f"{ALLOW_FLAG} was given" if allow_drift else f"the run in '{bundle.run_dir}' was trained so ({ALLOW_FLAG})"
        warn(f"warning: going on with template drift ({reason}): {report.describe(limit=1)}")
    return report


__all__ = [
    "ALLOW_FLAG",
    "Conversation",
    "Difference",
    "ParityReport",
    "TemplateDriftError",
    "applies",
    "check_bundle",
    "compare",
    "probes",
]


# --- tuneforge template check ---------------------------------------------------------------


def dataset_conversations(specs: Sequence[str], rows: int, dataset_format: str | None = None) -> tuple[list[Conversation], int]:
    """The first ``rows`` usable rows of each dataset as conversations, and how many rows were unusable."""
    from .data.convert import convert_rows
    from .data.loading import load_source
    from .data.rows import BadRows

    out: list[Conversation] = []
    bad = BadRows(skip=True)
    for spec in specs:
        _, loaded = load_source(spec, bad)
        for row in convert_rows(loaded[: rows * 2], dataset_format=dataset_format, bad=bad)[:rows]:
            data = row.data
            out.append(Conversation(row.where, list(data["messages"]), data.get("tools") or None, probe=False))
    return out, bad.count


def run_template_check(config, echo=print) -> int:
    """Compare the template a command would use with the checkpoint's own chat template; 0 when they agree, 1 when not."""
    from .modeling import family_option_values, resolve_bundle

    if config.rows < 1:
        raise TuneforgeError(f"--rows is {config.rows}; give at least 1.")
    if config.dataset and config.dataset_format:
        from .registry import get_registry

        get_registry().get("dataset_formats", config.dataset_format)
    bundle = resolve_bundle(
        config.model, template=config.template, model_family=config.model_family,
        trust_remote_code=config.trust_remote_code, check_template=False, family_options=family_option_values(config),
    )
    tokenizer = bundle.tokenizer
    if not (isinstance(getattr(tokenizer, "chat_template", None), str) and tokenizer.chat_template.strip()):
        echo(f"'{config.model}' carries no chat template, so there is nothing to compare template '{bundle.template_name}' with; "
             f"export writes the training template into the exported tokenizer.")
        return 0
    if not applies(bundle.template_name, bundle.template, tokenizer):
        echo(f"'{config.model}' is used with its own chat template (template '{bundle.template_name}'): nothing can drift.")
        return 0
    conversations = probes()
    unusable = 0
    if config.dataset:
        rows, unusable = dataset_conversations(config.dataset, config.rows, config.dataset_format)
        conversations += rows
    report = compare(bundle.template, tokenizer, conversations, name=bundle.template_name)
    if unusable:
        report.left_out.append(f"{unusable} dataset rows no format reads")
    echo(report.describe(limit=config.show))
    return 0 if report.ok else 1
