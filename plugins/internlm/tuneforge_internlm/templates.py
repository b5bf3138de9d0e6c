"""The InternLM2 / InternLM2.5 / InternLM3 chat layout, with InternLM's tool calling.

ChatML turns after a ``<s>``; no default system prompt. Tools are described in a
second system turn, ``<|im_start|>system name=<|plugin|>``, as a JSON list of
functions; the assistant calls one with
``<|action_start|><|plugin|>\\n{"name": ..., "parameters": {...}}<|action_end|>`` at the
end of its turn; the result comes back as ``<|im_start|>environment name=<|plugin|>``.
"""

from __future__ import annotations

import json
import re
from typing import Any, Mapping, Sequence

from tuneforge.api import SegmentTemplate, TemplateError, parse_json_tool_calls

IM_START, IM_END = "<|im_start|>", "<|im_end|>"
ACTION_START, ACTION_END, PLUGIN = "<|action_start|>", "<|action_end|>", "<|plugin|>"

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
    actions = []
    for call in tool_calls:
        function = call.get("function", call)
        name = function.get("name")
        if not name:
            raise TemplateError(f"A tool call has no function name ({dict(call)!r}); give each call a 'function.name'.")
        payload = json.dumps({"name": name, "parameters": _arguments(function.get("arguments", {}))}, ensure_ascii=False)
        actions.append(f"{ACTION_START}{PLUGIN}\n{payload}{ACTION_END}")
    return "".join(actions)


class InternLMTemplate(SegmentTemplate):
    """InternLM2-style ChatML with the ``environment`` role for tool results."""

    tool_call_start = ACTION_START
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


def build_internlm2(tokenizer) -> InternLMTemplate:
    return InternLMTemplate(tokenizer, name="internlm2")


def build_internlm3(tokenizer) -> InternLMTemplate:
    return InternLMTemplate(tokenizer, name="internlm3")
