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
  history; with ``enable_thinking=False`` only the generation prompt changes: it ends
  with an empty block (``<think>\\n\\n</think>\\n\\n``) so the model answers directly,
  while the turns after the latest query keep their reasoning (a multi-step tool turn).

Each rule follows the official Jinja template of the model, character for character
(tests/test_template_reference.py and this plugin's reference tests render both);
where the official template cannot render a conversation, these raise a sentence.
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


def _arguments_text(arguments: Any, verbatim: bool) -> str:
    """Arguments as the model writes them: a JSON object.

    A JSON string is kept as it is (``verbatim``, Qwen3's template) or read and written
    again the way ``| tojson`` writes an object (Qwen2.5's, which takes objects).
    """
    if isinstance(arguments, str):
        try:
            parsed = json.loads(arguments)
        except json.JSONDecodeError:
            raise TemplateError(
                f"A tool call has arguments {arguments!r}, which is not JSON; give the arguments as a JSON object "
                f"or a JSON string."
            ) from None
        if verbatim:
            return arguments
        arguments = parsed
    return json.dumps(arguments if arguments is not None else {}, ensure_ascii=False)


def qwen_tool_calls_text(tool_calls: Sequence[Mapping], verbatim_arguments: bool = True) -> str:
    """``<tool_call>`` blocks for OpenAI-shaped calls, one per line."""
    blocks = []
    for call in tool_calls:
        function = call.get("function", call)
        name = function.get("name")
        if not name:
            raise TemplateError(f"A tool call has no function name ({dict(call)!r}); give each call a 'function.name'.")
        arguments = _arguments_text(function.get("arguments", {}), verbatim_arguments)
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

    ``enable_thinking`` (Qwen3): with False, the model is prompted to answer without
    reasoning: the generation prompt ends with the empty ``<think>`` block (which is then
    prompt, not answer, in training); reasoning in the data is kept, as the official
    template keeps it. ``learn_thinking`` (Qwen3): whether the ``<think>`` block of a
    trained answer is learned (True) or only shown (False). ``reasoning_markers``
    (Qwen3): where a generated answer's reasoning starts and ends, for engines that
    return it apart from the answer (read with ``parse_reasoning``).
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
        self.reasoning_markers = (THINK_START, THINK_END) if reasoning else None
        tokens = [IM_START, IM_END]
        super().__init__(tokenizer, name=name, stop_strings=[IM_END], special_tokens=tokens)

    # -- rendering ------------------------------------------------------------------------

    def _text(self, message: Mapping, number: int) -> str:
        """A message's text; where the official template concatenates it, anything but text is refused.

        Qwen3's template reads non-text content as empty (except the first system
        message's); Qwen2's and Qwen2.5's fail on it, so these say why instead.
        """
        content = message.get("content")
        if isinstance(content, str):
            return content
        role = message.get("role")
        lenient = self.reasoning and not (number == 1 and role == "system")
        if lenient or (role == "assistant" and message.get("tool_calls") and content is None):
            return ""
        raise TemplateError(
            f"Message {number} ({role}) has content {content!r}, which template '{self.name}' cannot render (the "
            f"official template fails on it too); give it text, an empty string for none."
        )

    def _system_turn(self, messages: list, tools) -> tuple[str | None, list]:
        system = None
        if messages and messages[0].get("role") == "system":
            system, messages = self._text(messages[0], 1), messages[1:]
        elif not self.reasoning:
            system = self.default_system
        if tools:
            tools_text = hermes_tools_prompt(tools)
            # An empty system prompt still gets its blank line before the tools block, as in the official template.
            system = f"{system}\n\n{tools_text}" if system is not None else tools_text
        return system, messages

    def _last_query_index(self, messages: Sequence[Mapping]) -> int:
        for index in range(len(messages) - 1, -1, -1):
            message = messages[index]
            content = message.get("content")
            if message.get("role") == "user" and isinstance(content, str) and not _is_tool_response_text(content):
                return index
        return len(messages) - 1

    def _assistant(self, message: Mapping, number: int, after_query: bool, last: bool, enable_thinking: bool) -> list:
        """One assistant turn; ``after_query``: it answers the latest user query (Qwen3 keeps its reasoning)."""
        pieces = [(f"{IM_START}assistant\n", False)]
        content = self._text(message, number)
        answer = content
        if self.reasoning:
            reasoning, content = split_reasoning({**message, "content": content})
            answer = content
            if after_query and (last or reasoning):
                think = f"{THINK_START}\n{reasoning.strip(chr(10))}\n{THINK_END}\n\n"
                # With thinking off the generation prompt ends with the empty block, so it is prompt, not answer.
                learned = self.learn_thinking and not (think == EMPTY_THINK and not enable_thinking)
                pieces.append((think, learned))
                answer = content.lstrip("\n")
        if message.get("tool_calls"):
            calls = qwen_tool_calls_text(message["tool_calls"], verbatim_arguments=self.reasoning)
            answer = f"{answer}\n{calls}" if content else calls
        pieces.append((answer + IM_END, True))
        pieces.append(("\n", False))
        return pieces

    def render(self, messages, tools=None, add_generation_prompt=False, enable_thinking: bool | None = None):
        enable_thinking = self.enable_thinking if enable_thinking is None else enable_thinking
        messages = list(messages)
        system, body = self._system_turn(messages, tools)
        offset = len(messages) - len(body)  # message numbers in sentences count the system prompt
        pieces: list = []
        if system is not None:
            pieces.append((f"{IM_START}system\n{system}{IM_END}\n", False))
        last_query = self._last_query_index(body)
        for index, message in enumerate(body):
            role = message.get("role")
            number = index + 1 + offset
            if role == "assistant":
                after_query = index > last_query
                pieces += self._assistant(message, number, after_query, index == len(body) - 1, enable_thinking)
            elif role == "tool":
                opens = index == 0 or body[index - 1].get("role") != "tool"
                closes = index == len(body) - 1 or body[index + 1].get("role") != "tool"
                text = (f"{IM_START}user" if opens else "") + f"\n<tool_response>\n{self._text(message, number)}\n</tool_response>"
                pieces.append((text + (f"{IM_END}\n" if closes else ""), False))
            elif role in ("user", "system"):
                pieces.append((f"{IM_START}{role}\n{self._text(message, number)}{IM_END}\n", False))
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
