"""The InternLM2 / InternLM2.5 / InternLM3 chat layout, with InternLM's tool calling.

ChatML turns after a ``<s>``; no default system prompt. Tools are described in a
second system turn, ``<|im_start|>system name=<|plugin|>``, as a JSON list of
functions; the assistant calls one with
``<|action_start|><|plugin|>\\n{"name": ..., "parameters": {...}}<|action_end|>`` at the
end of its turn; the result comes back as ``<|im_start|>environment name=<|plugin|>``.

``jinja()`` gives the layout as our own Jinja ``chat_template`` (written into the
tokenizers tuneforge saves and exports): it renders what ``text()`` renders, the
tokenizer's ``<s>`` written in, and fails where ``text()`` raises on missing content.
"""

from __future__ import annotations

import json
import re
from typing import Any, Mapping, Sequence

from tuneforge.api import SegmentTemplate, TemplateError, jinja_string, parse_json_tool_calls

IM_START, IM_END = "<|im_start|>", "<|im_end|>"
ACTION_START, ACTION_END, PLUGIN = "<|action_start|>", "<|action_end|>", "<|plugin|>"

# (open, close, between, arguments key): how calls are written (``internlm_tool_calls_text``), and what
# ``eval --constrained`` holds an answer's calls to, the special tokens where the markup puts them.
TOOL_CALL_MARKUP = (f"{ACTION_START}{PLUGIN}\n", ACTION_END, "", "parameters")
_ACTION = re.compile(r"<\|action_start\|><\|plugin\|>\s*(.*?)\s*(?:<\|action_end\|>|$)", re.DOTALL)


def _content(message: Mapping, number: int) -> str:
    """A message's text; anything else is refused, as the official template fails on it (an answer that only calls tools may have none)."""
    content = message.get("content")
    if isinstance(content, str):
        return content
    if content is None and message.get("role") == "assistant" and message.get("tool_calls"):
        return ""
    raise TemplateError(
        f"Message {number} ({message.get('role')}) has content {content!r}, which the InternLM template cannot render "
        f"(the official template fails on it too); give it text, an empty string for none."
    )


def _functions(tools: Sequence[Mapping]) -> list:
    """OpenAI tool entries unwrapped to their function descriptions."""
    return [tool.get("function", tool) if tool.get("type", "function") == "function" else tool for tool in tools]


def _arguments(arguments: Any) -> Any:
    if isinstance(arguments, str):
        try:
            return json.loads(arguments)
        except json.JSONDecodeError:
            raise TemplateError(
                f"A tool call has arguments {arguments!r}, which is not JSON; give the arguments as a JSON object "
                f"or a JSON string."
            ) from None
    return arguments if arguments is not None else {}


def internlm_tool_calls_text(tool_calls: Sequence[Mapping]) -> str:
    opening, closing, between, key = TOOL_CALL_MARKUP
    actions = []
    for call in tool_calls:
        function = call.get("function", call)
        name = function.get("name")
        if not name:
            raise TemplateError(f"A tool call has no function name ({dict(call)!r}); give each call a 'function.name'.")
        payload = json.dumps({"name": name, key: _arguments(function.get("arguments", {}))}, ensure_ascii=False)
        actions.append(f"{opening}{payload}{closing}")
    return between.join(actions)


class InternLMTemplate(SegmentTemplate):
    """InternLM2-style ChatML with the ``environment`` role for tool results."""

    tool_call_start = ACTION_START
    tool_call_markup = TOOL_CALL_MARKUP
    # Special tokens, yet part of the answer's text: its tool calls are read from them.
    text_special_tokens = (ACTION_START, ACTION_END, PLUGIN)

    def __init__(self, tokenizer, *, name: str) -> None:
        self.bos = getattr(tokenizer, "bos_token", None) or "<s>"
        super().__init__(
            tokenizer,
            name=name,
            stop_strings=[IM_END],
            special_tokens=[self.bos, IM_START, IM_END, ACTION_START, ACTION_END, PLUGIN],
        )

    def render(self, messages, tools=None, add_generation_prompt=False):
        pieces: list = [(self.bos, False)]
        messages = list(messages)
        offset = 0  # message numbers in sentences count the system prompt
        if messages and messages[0].get("role") == "system":
            pieces.append((f"{IM_START}system\n{_content(messages[0], 1)}{IM_END}\n", False))
            messages, offset = messages[1:], 1
        if tools:
            described = json.dumps(_functions(tools), ensure_ascii=False, indent=4)
            pieces.append((f"{IM_START}system name={PLUGIN}\n{described}\n{IM_END}\n", False))
        for number, message in enumerate(messages, start=1 + offset):
            role = message.get("role")
            if role == "assistant":
                answer = _content(message, number)
                if message.get("tool_calls"):
                    answer += internlm_tool_calls_text(message["tool_calls"])
                pieces += [(f"{IM_START}assistant\n", False), (answer + IM_END, True), ("\n", False)]
            elif role == "tool":
                pieces.append((f"{IM_START}environment name={PLUGIN}\n{_content(message, number)}{IM_END}\n", False))
            elif role in ("user", "system"):
                pieces.append((f"{IM_START}{role}\n{_content(message, number)}{IM_END}\n", False))
            else:
                raise TemplateError(
                    f"Template '{self.name}' cannot render a message with role {role!r}; use system, user, assistant "
                    f"or tool."
                )
        if add_generation_prompt:
            pieces.append((f"{IM_START}assistant\n", False))
        return pieces

    def parse_tool_calls(self, text: str) -> tuple[str, list[dict]]:
        """(content, calls): the text before the actions, and the ``<|plugin|>`` actions in OpenAI shape."""
        return parse_json_tool_calls(text, _ACTION)

    def jinja(self) -> str:
        """This layout as a Jinja ``chat_template`` rendering what ``text()`` renders (see the module docstring)."""
        return _JINJA.strip("\n").replace("@BOS@", jinja_string(self.bos)).replace("@NAME@", jinja_string(repr(self.name)))


# Mirrors InternLMTemplate.render rule for rule; each tag strips the whitespace before it, so the
# layout is for reading only. Tool-call arguments given as a JSON string are written as they are.
_JINJA = """
{{- @BOS@ }}
{%- set ns = namespace(first=0, functions=[], calls='') %}
{%- for message in messages %}
    {%- if message.content is not string and not (message.role == 'assistant' and message.tool_calls and (message.content is none or message.content is not defined)) and message.role in ['system', 'user', 'assistant', 'tool'] %}
        {{- raise_exception("Message " ~ loop.index ~ " (" ~ message.role ~ ") has no text content, which the InternLM template cannot render (the official template fails on it too); give it text, an empty string for none.") }}
    {%- endif %}
{%- endfor %}
{%- if messages and messages[0].role == 'system' %}
    {{- '<|im_start|>system\n' + messages[0].content + '<|im_end|>\n' }}
    {%- set ns.first = 1 %}
{%- endif %}
{%- if tools %}
    {%- for tool in tools %}
        {%- if (tool.type if tool.type is defined else 'function') == 'function' and tool.function is defined %}
            {%- set ns.functions = ns.functions + [tool.function] %}
        {%- else %}
            {%- set ns.functions = ns.functions + [tool] %}
        {%- endif %}
    {%- endfor %}
    {{- '<|im_start|>system name=<|plugin|>\n' + (ns.functions | tojson(indent=4)) + '\n<|im_end|>\n' }}
{%- endif %}
{%- for message in messages[ns.first:] %}
    {%- if message.role == 'assistant' %}
        {%- set ns.calls = '' %}
        {%- for call in message.tool_calls or [] %}
            {%- set function = call.function if call.function is defined else call %}
            {%- if not function.name %}
                {{- raise_exception("A tool call has no function name; give each call a 'function.name'.") }}
            {%- endif %}
            {%- set arguments = function.arguments if function.arguments is defined and function.arguments is not none else {} %}
            {%- set arguments = arguments if arguments is string else (arguments | tojson) %}
            {%- set ns.calls = ns.calls + '<|action_start|><|plugin|>\n{"name": ' + (function.name | tojson) + ', "parameters": ' + arguments + '}<|action_end|>' %}
        {%- endfor %}
        {{- '<|im_start|>assistant\n' + (message.content if message.content is string else '') + ns.calls + '<|im_end|>\n' }}
    {%- elif message.role == 'tool' %}
        {{- '<|im_start|>environment name=<|plugin|>\n' + message.content + '<|im_end|>\n' }}
    {%- elif message.role == 'user' or message.role == 'system' %}
        {{- '<|im_start|>' + message.role + '\n' + message.content + '<|im_end|>\n' }}
    {%- else %}
        {{- raise_exception("Template " ~ @NAME@ ~ " cannot render a message with role " ~ message.role ~ "; use system, user, assistant or tool.") }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\n' }}
{%- endif %}
"""


def build_internlm2(tokenizer) -> InternLMTemplate:
    return InternLMTemplate(tokenizer, name="internlm2")


def build_internlm3(tokenizer) -> InternLMTemplate:
    return InternLMTemplate(tokenizer, name="internlm3")
