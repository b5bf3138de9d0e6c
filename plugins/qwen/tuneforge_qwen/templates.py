"""The Qwen chat layouts (Qwen2, Qwen2.5, Qwen3) with tool calling and Qwen3 reasoning.

All of them are ChatML (``<|im_start|>role\\n ... <|im_end|>\\n``); they differ in:

- the default system prompt: Qwen2 and Qwen2.5 add one when a conversation has
  none, Qwen3 does not;
- tools: described in the system turn inside ``<tools></tools>``; the assistant calls
  them with ``<tool_call>{"name": ..., "arguments": ...}</tool_call>``; results come
  back in a ``user`` turn, each inside ``<tool_response></tool_response>``, several
  consecutive results sharing one turn;
- Qwen3 reasoning: the answer to the latest user query opens with
  ``<think>\\n...\\n</think>\\n\\n``; reasoning of earlier turns is dropped from the
  history; with ``enable_thinking=False`` the generation prompt ends with an empty
  block (``<think>\\n\\n</think>\\n\\n``) so the model answers directly.
"""

from __future__ import annotations

import json
from typing import Any, Mapping, Sequence

from tuneforge.api import SegmentTemplate, TemplateError, hermes_tools_prompt, parse_hermes_tool_calls

QWEN2_SYSTEM = "You are a helpful assistant."
QWEN2_5_SYSTEM = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."

IM_START, IM_END = "<|im_start|>", "<|im_end|>"
THINK_START, THINK_END = "<think>", "</think>"
TOOL_CALL_START, TOOL_CALL_END = "<tool_call>", "</tool_call>"
EMPTY_THINK = f"{THINK_START}\n\n{THINK_END}\n\n"



def _content(message: Mapping) -> str:
    content = message.get("content")
    return content if isinstance(content, str) else ""


def _arguments_text(arguments: Any) -> str:
    """Arguments as the model writes them: a JSON object (a JSON string is kept as it is)."""
    if isinstance(arguments, str):
        try:
            json.loads(arguments)
        except json.JSONDecodeError:
            raise TemplateError(
                f"A tool call has arguments {arguments!r}, which is not JSON; give the arguments as a JSON object "
                f"or a JSON string."
            ) from None
        return arguments
    return json.dumps(arguments if arguments is not None else {}, ensure_ascii=False)


def qwen_tool_calls_text(tool_calls: Sequence[Mapping]) -> str:
    """``<tool_call>`` blocks for OpenAI-shaped calls, one per line."""
    blocks = []
    for call in tool_calls:
        function = call.get("function", call)
        name = function.get("name")
        if not name:
            raise TemplateError(f"A tool call has no function name ({dict(call)!r}); give each call a 'function.name'.")
        arguments = _arguments_text(function.get("arguments", {}))
        blocks.append(f'{TOOL_CALL_START}\n{{"name": "{name}", "arguments": {arguments}}}\n{TOOL_CALL_END}')
    return "\n".join(blocks)


def split_reasoning(message: Mapping) -> tuple[str, str]:
    """(reasoning, answer) of an assistant message: ``reasoning_content``, or a ``<think>`` block in the content."""
    content = _content(message)
    reasoning = message.get("reasoning_content")
    if isinstance(reasoning, str):
        return reasoning, content
    if THINK_END in content:
        reasoning = content.split(THINK_END)[0].rstrip("\n").split(THINK_START)[-1].lstrip("\n")
        return reasoning, content.split(THINK_END)[-1].lstrip("\n")
    return "", content


def _is_tool_response_text(content: str) -> bool:
    return content.startswith("<tool_response>") and content.endswith("</tool_response>")


class QwenTemplate(SegmentTemplate):
    """A Qwen ChatML template; ``reasoning=True`` gives the Qwen3 thinking rules.

    ``enable_thinking`` (Qwen3): with False, the model is prompted (and trained) to
    answer without reasoning: the empty ``<think>`` block is part of the prompt and any
    reasoning in the data is left out. ``learn_thinking`` (Qwen3): whether the
    ``<think>`` block of a trained answer is learned (True) or only shown (False).
    """

    tool_call_start = TOOL_CALL_START

    def __init__(
        self,
        tokenizer,
        *,
        name: str,
        default_system: str | None = None,
        reasoning: bool = False,
        enable_thinking: bool = True,
        learn_thinking: bool = True,
    ) -> None:
        self.default_system = default_system
        self.reasoning = reasoning
        self.enable_thinking = enable_thinking
        self.learn_thinking = learn_thinking
        tokens = [IM_START, IM_END]
        super().__init__(tokenizer, name=name, stop_strings=[IM_END], special_tokens=tokens)

    # -- rendering ------------------------------------------------------------------------

    def _system_turn(self, messages: list, tools) -> tuple[str | None, list]:
        system = None
        if messages and messages[0].get("role") == "system":
            system, messages = _content(messages[0]), messages[1:]
        elif not self.reasoning:
            system = self.default_system
        if tools:
            tools_text = hermes_tools_prompt(tools)
            system = f"{system}\n\n{tools_text}" if system else tools_text
        return system, messages

    def _last_query_index(self, messages: Sequence[Mapping]) -> int:
        for index in range(len(messages) - 1, -1, -1):
            message = messages[index]
            if message.get("role") == "user" and not _is_tool_response_text(_content(message)):
                return index
        return len(messages) - 1

    def _assistant(self, message: Mapping, index: int, last: bool, last_query: int, enable_thinking: bool) -> list:
        pieces = [(f"{IM_START}assistant\n", False)]
        if self.reasoning:
            reasoning, answer = split_reasoning(message)
            if index > last_query and (last or (reasoning and enable_thinking)):
                if not enable_thinking:
                    pieces.append((EMPTY_THINK, False))
                else:
                    think = f"{THINK_START}\n{reasoning.strip(chr(10))}\n{THINK_END}\n\n"
                    pieces.append((think, self.learn_thinking))
                answer = answer.lstrip("\n")
        else:
            answer = _content(message)
        if message.get("tool_calls"):
            calls = qwen_tool_calls_text(message["tool_calls"])
            answer = f"{answer}\n{calls}" if answer else calls
        pieces.append((answer + IM_END, True))
        pieces.append(("\n", False))
        return pieces

    def render(self, messages, tools=None, add_generation_prompt=False, enable_thinking: bool | None = None):
        enable_thinking = self.enable_thinking if enable_thinking is None else enable_thinking
        system, body = self._system_turn(list(messages), tools)
        pieces: list = []
        if system is not None:
            pieces.append((f"{IM_START}system\n{system}{IM_END}\n", False))
        last_query = self._last_query_index(body)
        for index, message in enumerate(body):
            role = message.get("role")
            if role == "assistant":
                pieces += self._assistant(message, index, index == len(body) - 1, last_query, enable_thinking)
            elif role == "tool":
                opens = index == 0 or body[index - 1].get("role") != "tool"
                closes = index == len(body) - 1 or body[index + 1].get("role") != "tool"
                text = (f"{IM_START}user" if opens else "") + f"\n<tool_response>\n{_content(message)}\n</tool_response>"
                pieces.append((text + (f"{IM_END}\n" if closes else ""), False))
            elif role in ("user", "system"):
                pieces.append((f"{IM_START}{role}\n{_content(message)}{IM_END}\n", False))
            else:
                raise TemplateError(
                    f"Template '{self.name}' cannot render a message with role {role!r}; use system, user, assistant "
                    f"or tool."
                )
        if add_generation_prompt:
            pieces.append((f"{IM_START}assistant\n", False))
            if self.reasoning and not enable_thinking:
                pieces.append((EMPTY_THINK, False))
        return pieces

    def text(self, messages, tools=None, add_generation_prompt=False, enable_thinking: bool | None = None) -> str:
        return "".join(piece for piece, _ in self.render(messages, tools, add_generation_prompt, enable_thinking))

    def prompt(self, messages, tools=None, enable_thinking: bool | None = None) -> list[int]:
        """The ids a model continues from; ``enable_thinking`` overrides the template's choice for this prompt."""
        text = self.text(messages, tools, add_generation_prompt=True, enable_thinking=enable_thinking)
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    # -- reading a model's output ---------------------------------------------------------

    def parse_tool_calls(self, text: str) -> tuple[str, list[dict]]:
        """(content, calls): the answer without ``<tool_call>`` blocks, and the calls in OpenAI shape (Hermes layout)."""
        return parse_hermes_tool_calls(text)

    def parse_reasoning(self, text: str) -> tuple[str | None, str]:
        """(reasoning, answer) of a generated text; reasoning is None when the text has no ``</think>``."""
        if not self.reasoning or THINK_END not in text:
            return None, text
        reasoning, answer = text.split(THINK_END, 1)
        return reasoning.split(THINK_START, 1)[-1].strip("\n"), answer.lstrip("\n")


def build_qwen2(tokenizer) -> QwenTemplate:
    return QwenTemplate(tokenizer, name="qwen2", default_system=QWEN2_SYSTEM)


def build_qwen2_5(tokenizer) -> QwenTemplate:
    return QwenTemplate(tokenizer, name="qwen2_5", default_system=QWEN2_5_SYSTEM)


def build_qwen3(tokenizer) -> QwenTemplate:
    return QwenTemplate(tokenizer, name="qwen3", reasoning=True)


def build_qwen3_nothink(tokenizer) -> QwenTemplate:
    return QwenTemplate(tokenizer, name="qwen3-nothink", reasoning=True, enable_thinking=False)


def build_qwen3_answer_only(tokenizer) -> QwenTemplate:
    return QwenTemplate(tokenizer, name="qwen3-answer-only", reasoning=True, learn_thinking=False)
