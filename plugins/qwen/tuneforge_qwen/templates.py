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

``jinja()`` gives each variant as our own Jinja ``chat_template`` (written into the
tokenizers tuneforge saves and exports): it renders what ``text()`` renders, with the
variant's default system prompt and, for Qwen3, its ``enable_thinking`` default (on for
qwen3 and qwen3-answer-only, off for qwen3-nothink; a request may still pass it).
"""

from __future__ import annotations

import json
from typing import Any, Mapping, Sequence

from tuneforge.api import SegmentTemplate, TemplateError, hermes_tools_prompt, jinja_string, parse_hermes_tool_calls

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
        # The official Qwen3 template renders as this one with thinking off only when told so.
        self.chat_template_kwargs = {"enable_thinking": False} if reasoning and not enable_thinking else {}
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

    def jinja(self) -> str:
        """This variant as a Jinja ``chat_template`` rendering what ``text()`` renders (see the module docstring)."""
        return qwen_jinja(self.name, self.default_system if not self.reasoning else None, self.reasoning, self.enable_thinking)

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


# -- the Jinja form -------------------------------------------------------------------------
# One Jinja per variant, mirroring QwenTemplate.render rule for rule. Each tag strips the
# whitespace before it, so the layout below is for reading only. Tool-call arguments given as a
# JSON string are written as they are (Qwen3's rule; Qwen2.5's template takes objects).

_JINJA = """
{%- if messages and messages[0].role == 'system' %}
    {%- if messages[0].content is not string %}
        {{- raise_exception("Message 1 (system) has no text content, which template " ~ @NAME@ ~ " cannot render (the official template fails on it too); give it text, an empty string for none.") }}
    {%- endif %}
    {%- set ns = namespace(system=messages[0].content, first=1, last_query=messages|length - 1, tools='', calls='') %}
{%- else %}
    {%- set ns = namespace(system=@DEFAULT_SYSTEM@, first=0, last_query=messages|length - 1, tools='', calls='') %}
{%- endif %}
{%- if tools %}
    {%- set ns.tools = @TOOLS_BEFORE@ %}
    {%- for tool in tools %}
        {%- set ns.tools = ns.tools + ('\n' if not loop.first else '') + (tool | tojson) %}
    {%- endfor %}
    {%- set ns.tools = ns.tools + @TOOLS_AFTER@ %}
    {%- set ns.system = (ns.system + '\n\n' + ns.tools) if ns.system is not none else ns.tools %}
{%- endif %}
{%- if ns.system is not none %}
    {{- '<|im_start|>system\n' + ns.system + '<|im_end|>\n' }}
{%- endif %}
{%- for message in messages %}
    {%- if message.role == 'user' and message.content is string and not (message.content.startswith('<tool_response>') and message.content.endswith('</tool_response>')) %}
        {%- set ns.last_query = loop.index0 %}
    {%- endif %}
{%- endfor %}
{%- for message in messages[ns.first:] %}
    {%- set index = loop.index0 + ns.first %}
    {%- if message.content is string %}
        {%- set content = message.content %}
    {%- elif @LENIENT@ or (message.role == 'assistant' and message.tool_calls and (message.content is none or message.content is not defined)) %}
        {%- set content = '' %}
    {%- elif message.role in ['system', 'user', 'assistant', 'tool'] %}
        {{- raise_exception("Message " ~ (index + 1) ~ " (" ~ message.role ~ ") has no text content, which template " ~ @NAME@ ~ " cannot render (the official template fails on it too); give it text, an empty string for none.") }}
    {%- endif %}
    {%- if message.role == 'assistant' %}
        {%- set think = '' %}
        {%- set answer = content %}
@REASONING@
        {%- if message.tool_calls %}
            {%- set ns.calls = '' %}
            {%- for call in message.tool_calls %}
                {%- set function = call.function if call.function is defined else call %}
                {%- if not function.name %}
                    {{- raise_exception("A tool call has no function name; give each call a 'function.name'.") }}
                {%- endif %}
                {%- set arguments = function.arguments if function.arguments is defined and function.arguments is not none else {} %}
                {%- set arguments = arguments if arguments is string else (arguments | tojson) %}
                {%- set ns.calls = ns.calls + ('\n' if not loop.first else '') + '<tool_call>\n{"name": "' ~ function.name ~ '", "arguments": ' + arguments + '}\n</tool_call>' %}
            {%- endfor %}
            {%- set answer = (answer + '\n' + ns.calls) if content else ns.calls %}
        {%- endif %}
        {{- '<|im_start|>assistant\n' + think + answer + '<|im_end|>\n' }}
    {%- elif message.role == 'tool' %}
        {%- if loop.first or messages[index - 1].role != 'tool' %}
            {{- '<|im_start|>user' }}
        {%- endif %}
        {{- '\n<tool_response>\n' + content + '\n</tool_response>' }}
        {%- if loop.last or messages[index + 1].role != 'tool' %}
            {{- '<|im_end|>\n' }}
        {%- endif %}
    {%- elif message.role == 'user' or message.role == 'system' %}
        {{- '<|im_start|>' + message.role + '\n' + content + '<|im_end|>\n' }}
    {%- else %}
        {{- raise_exception("Template " ~ @NAME@ ~ " cannot render a message with role " ~ message.role ~ "; use system, user, assistant or tool.") }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\n' }}
@THINKING_OFF@
{%- endif %}
"""

# Qwen3: the answer to the latest query opens with its reasoning (``reasoning_content`` or an inline block).
_REASONING_JINJA = """
        {%- if message.reasoning_content is string %}
            {%- set reasoning = message.reasoning_content %}
        {%- elif '</think>' in content %}
            {%- set reasoning = content.split('</think>')[0].rstrip('\n').split('<think>')[-1].lstrip('\n') %}
            {%- set content = content.split('</think>')[-1].lstrip('\n') %}
        {%- else %}
            {%- set reasoning = '' %}
        {%- endif %}
        {%- set answer = content %}
        {%- if index > ns.last_query and (loop.last or reasoning) %}
            {%- set think = '<think>\n' + reasoning.strip('\n') + '\n</think>\n\n' %}
            {%- set answer = content.lstrip('\n') %}
        {%- endif %}
"""

_THINKING_OFF_JINJA = """
    {%- set thinking = enable_thinking if enable_thinking is defined and enable_thinking is not none else @THINKING@ %}
    {%- if not thinking %}
        {{- '<think>\n\n</think>\n\n' }}
    {%- endif %}
"""


def qwen_jinja(name: str, default_system: str | None, reasoning: bool, enable_thinking: bool = True) -> str:
    """The Jinja ``chat_template`` of a Qwen variant (``QwenTemplate.jinja``)."""
    text = _JINJA.strip("\n")
    text = text.replace("@REASONING@\n", _REASONING_JINJA.lstrip("\n") if reasoning else "")
    text = text.replace("@THINKING_OFF@\n", _THINKING_OFF_JINJA.lstrip("\n") if reasoning else "")
    before, after = hermes_tools_prompt([{}]).split("{}")
    replacements = {
        "@NAME@": jinja_string(repr(name)),
        "@DEFAULT_SYSTEM@": jinja_string(default_system) if default_system is not None else "none",
        "@TOOLS_BEFORE@": jinja_string(before),
        "@TOOLS_AFTER@": jinja_string(after),
        # Qwen3 reads any content but the first system prompt's that is not text as empty; Qwen2/2.5 fail on it.
        "@LENIENT@": "true" if reasoning else "false",
        "@THINKING@": "true" if enable_thinking else "false",
    }
    for key, value in replacements.items():
        text = text.replace(key, value)
    return text


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
