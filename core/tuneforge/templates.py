"""Chat templates: a conversation (+ tools) to token ids with a loss mask.

A template object (what ``ChatTemplate.build(processor)`` returns; the processor is the
tokenizer unless the model family loads a processor) offers:

- ``encode(messages, tools=None, train_on_prompt=False) -> Encoded``: the ids of the
  whole conversation and their labels (-100 on the tokens the model does not learn);
  by default only the assistant turns are learned, each with its end-of-turn token;
- ``prompt(messages, tools=None) -> list[int]``: the ids a model continues from;
- ``stop_token_ids`` and ``stop_strings``: the end-of-turn markers;
- optionally, for models that call tools: ``tool_call_start`` (the text that opens a
  call, so a streaming server knows when to buffer) and ``parse_tool_calls(text) ->
  (content, calls)`` (the answer without the call markup, and the calls in the
  OpenAI shape of ``openai_tool_call``);
- ``jinja() -> str | None``: the template as a Jinja ``chat_template`` that renders, in
  transformers' ``apply_chat_template`` (and so in vLLM and other servers that use it),
  the text ``text()`` renders, so a saved or exported tokenizer renders what training
  saw; None when the template has no Jinja form (the tokenizer's own template is kept
  then). The Jinja fails (``raise_exception``) where the template raises a
  ``TemplateError`` on missing (None) content. Tool-call arguments given as a JSON
  string are written as they are (Jinja cannot read JSON): give them as objects, the
  shape transformers documents and vLLM passes, for the template's exact layout;
- ``chat_template_kwargs``: the keyword arguments the model's own (official) template
  must be rendered with to render as this template does (``{"enable_thinking": False}``
  for qwen3-nothink; empty for most). The template's own ``jinja()`` needs none: its
  defaults are this template's.

Three ways to write one, from the least to the most work:

- ``TurnLayout``: a role-header layout (ChatML, Llama 3, Qwen, InternLM ...) as data;
  ``dataclasses.replace(CHATML, name="qwen2_5", default_system="...")`` is a template;
- ``SegmentTemplate``: a function that renders a conversation as ``(text, learned)``
  pieces; the text is tokenized once and tokens are labelled by character span;
- ``HFChatTemplate``: the tokenizer's own jinja ``chat_template``.

A ``TurnLayout`` writes its Jinja from its fields; a ``SegmentTemplate`` has none unless
its class overrides ``jinja()`` (``jinja_string`` writes a Python string as a Jinja
literal); ``HFChatTemplate.jinja()`` is the tokenizer's own ``chat_template``.
``save_with_chat_template(tokenizer, template, directory)`` saves a tokenizer carrying
the template's Jinja, as a run's output dir and a merged export do.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping, Sequence

from .errors import TuneforgeError

IGNORE_INDEX = -100

Message = Mapping[str, Any]
Segment = tuple[str, bool]  # (text, learned)


class TemplateError(TuneforgeError):
    """A template that cannot be used with a tokenizer or a conversation."""


@dataclass
class Encoded:
    """Token ids and their labels (``IGNORE_INDEX`` where nothing is learned).

    ``extras`` holds what the model takes beside the ids, keyed by its forward
    argument (``pixel_values``, ``image_grid_thw``, ...): a template that encodes
    image parts puts them here, and its ``collate_extras`` batches them.
    """

    input_ids: list[int]
    labels: list[int]
    extras: dict[str, Any] = field(default_factory=dict)

    @property
    def num_learned(self) -> int:
        return sum(1 for label in self.labels if label != IGNORE_INDEX)

    def __len__(self) -> int:
        return len(self.input_ids)


def _tokenizer_label(tokenizer) -> str:
    return getattr(tokenizer, "name_or_path", None) or type(tokenizer).__name__


def _ids(tokenizer, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def tokenize_spans(tokenizer, text: str, learned_spans: Sequence[tuple[int, int]]) -> tuple[list[int], list[bool]]:
    """Tokenize ``text`` once and flag the tokens that overlap a learned character span.

    Tokenizing the whole text (rather than piece by piece) gives exactly the ids the
    model sees at inference. Tokenizers without offsets fall back to piece-wise
    tokenization, which may differ at the piece boundaries.
    """
    learned_chars = bytearray(len(text) + 1)
    for start, end in learned_spans:
        learned_chars[start:end] = b"\x01" * (end - start)
    try:
        out = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        offsets = out["offset_mapping"]
    except (NotImplementedError, ValueError, KeyError, TypeError):
        return _tokenize_pieces(tokenizer, text, learned_spans)
    ids = list(out["input_ids"])
    flags = []
    for start, end in offsets:
        end = max(end, start + 1)  # a zero-width token takes the flag of the character at its position
        flags.append(any(learned_chars[start:end]))
    return ids, flags


def _tokenize_pieces(tokenizer, text, learned_spans):
    cuts = sorted({0, len(text), *(p for span in learned_spans for p in span)})
    ids: list[int] = []
    flags: list[bool] = []
    for start, end in zip(cuts, cuts[1:]):
        piece_ids = _ids(tokenizer, text[start:end])
        learned = any(s <= start and end <= e for s, e in learned_spans)
        ids += piece_ids
        flags += [learned] * len(piece_ids)
    return ids, flags


def _encoded(ids: list[int], flags: list[bool], train_on_prompt: bool) -> Encoded:
    if train_on_prompt:
        return Encoded(list(ids), list(ids))
    return Encoded(list(ids), [i if f else IGNORE_INDEX for i, f in zip(ids, flags)])


def single_token_id(tokenizer, token: str) -> int | None:
    """The id of ``token`` when the tokenizer encodes it as exactly one token, else None."""
    ids = _ids(tokenizer, token)
    return ids[0] if len(ids) == 1 else None


def concat_extras(extras: Sequence[Mapping[str, Any]], pad: bool = False) -> dict[str, Any]:
    """Batch samples' extras: each key's tensors joined along their first (batch) dimension.

    ``pad``: first zero-pad every other dimension to the batch's largest (samples with
    fewer images than others, say, as ``(1, images, 3, H, W)`` pixel values with a
    pixel mask: a model such as Idefics3 skips the all-zero images).
    """
    import torch

    keys = set(extras[0]) if extras else set()
    if any(set(e) != keys for e in extras):
        raise TemplateError("Samples of one batch carry different extras (some have images, some not); use --per-device-batch-size 1 or give every row the same kinds of parts.")
    if not pad:
        return {key: torch.cat([e[key] for e in extras], dim=0) for key in sorted(keys)}
    batched = {}
    for key in sorted(keys):
        tensors = [e[key] for e in extras]
        shape = [max(t.shape[d] for t in tensors) for d in range(1, tensors[0].dim())]
        padded = []
        for t in tensors:
            if list(t.shape[1:]) != shape:
                grown = t.new_zeros((t.shape[0], *shape))
                grown[tuple(slice(0, n) for n in t.shape)] = t
                t = grown
            padded.append(t)
        batched[key] = torch.cat(padded, dim=0)
    return batched


class Template:
    """What every template offers; subclasses implement ``encode`` and ``prompt``.

    ``modalities`` are what it encodes: a template that encodes image parts says
    ``("text", "image")``, puts what the model takes beside the ids in
    ``Encoded.extras`` and batches them with ``collate_extras`` (joined along the
    batch dimension unless it says otherwise). ``prompt_extras(messages)`` gives
    the extras of a prompt for generation.

    ``packs_extras``: whether samples with extras may be packed (``--packing``) back to
    back in one row, their extras joined in order by ``collate_extras``, with
    ``position_ids`` restarting at 0 for each sample and no attention mask. A template
    says True only where its model finds each sample's parts in such a row (its
    image tokens in order, the positions it computes from its own tokens per
    sample); otherwise a batch holding a sample with extras is right-padded and the
    run says so.
    """

    name = "template"
    modalities: tuple[str, ...] = ("text",)
    packs_extras: bool = False
    tokenizer: Any
    stop_strings: list[str]
    stop_token_ids: list[int]
    # Keyword arguments the model's own template needs to render as this one does (read-only; a template
    # that needs some sets its own dict).
    chat_template_kwargs: dict = {}

    def jinja(self) -> str | None:
        """This template as a Jinja ``chat_template`` (None: it has no Jinja form); see the module docstring."""
        return None

    def encode(self, messages: Sequence[Message], tools: Sequence[Mapping] | None = None, train_on_prompt: bool = False) -> Encoded:
        raise NotImplementedError

    def prompt(self, messages: Sequence[Message], tools: Sequence[Mapping] | None = None) -> list[int]:
        raise NotImplementedError

    def prompt_extras(self, messages: Sequence[Message], tools: Sequence[Mapping] | None = None) -> dict[str, Any]:
        """What the model takes beside the prompt's ids (nothing for a text template)."""
        return {}

    def collate_extras(self, extras: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        return concat_extras(extras)

    def unexpanded_prompt(self, messages: Sequence[Message], tools: Sequence[Mapping] | None = None) -> list[int] | None:
        """The prompt's ids with each image as the placeholder its processor expands (``<image>`` once, say),
        for an engine that expands images itself (vLLM); None: this template does not give it."""
        return None

    def _set_stops(self, markers: Sequence[str | None]) -> None:
        strings: list[str] = []
        for marker in [*markers, getattr(self.tokenizer, "eos_token", None)]:
            if marker and marker not in strings:
                strings.append(marker)
        self.stop_strings = strings
        ids: list[int] = []
        for marker in strings:
            token_id = single_token_id(self.tokenizer, marker)
            if token_id is not None and token_id not in ids:
                ids.append(token_id)
        eos_id = getattr(self.tokenizer, "eos_token_id", None)
        if eos_id is not None and eos_id not in ids:
            ids.append(eos_id)
        self.stop_token_ids = ids

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r} for {_tokenizer_label(self.tokenizer)}>"


class SegmentTemplate(Template):
    """A template rendered as ``(text, learned)`` pieces, tokenized once.

    ``render(messages, tools, add_generation_prompt) -> list[Segment]`` marks the
    pieces a model learns (an assistant answer and its end-of-turn marker) with
    ``True``. ``special_tokens`` are checked to be single tokens of the tokenizer, so
    a template never silently splits ``<|im_end|>`` into ordinary text. Example::

        def render_mistral(messages, tools, add_generation_prompt):
            pieces = [("<s>", False)]
            for m in messages:
                if m["role"] == "user":
                    pieces.append((f"[INST] {m['content']} [/INST]", False))
                elif m["role"] == "assistant":
                    pieces.append((f" {m['content']}</s>", True))
            return pieces

        SegmentTemplate(tokenizer, render_mistral, name="mistral",
                        stop_strings=["</s>"], special_tokens=["<s>", "</s>"])
    """

    def __init__(
        self,
        tokenizer,
        render: Callable[[Sequence[Message], Sequence[Mapping] | None, bool], list[Segment]] | None = None,
        *,
        name: str = "custom",
        stop_strings: Sequence[str] = (),
        special_tokens: Sequence[str] = (),
    ) -> None:
        self.tokenizer = tokenizer
        self.name = name
        if render is not None:
            self.render = render  # type: ignore[method-assign]
        self._check_special_tokens(special_tokens)
        self._set_stops(stop_strings)

    def _check_special_tokens(self, tokens: Sequence[str]) -> None:
        for token in tokens:
            if single_token_id(self.tokenizer, token) is None:
                count = len(_ids(self.tokenizer, token))
                raise TemplateError(
                    f"Template '{self.name}' needs '{token}' as one token, but the tokenizer of "
                    f"{_tokenizer_label(self.tokenizer)} splits it into {count} tokens; pass --template default "
                    f"(the tokenizer's own) or a template made for this model."
                )

    def render(self, messages: Sequence[Message], tools: Sequence[Mapping] | None, add_generation_prompt: bool) -> list[Segment]:
        raise NotImplementedError

    def text(self, messages: Sequence[Message], tools: Sequence[Mapping] | None = None, add_generation_prompt: bool = False) -> str:
        """The rendered conversation as one string (for reading, not for training)."""
        return "".join(piece for piece, _ in self.render(messages, tools, add_generation_prompt))

    def encode(self, messages, tools=None, train_on_prompt=False) -> Encoded:
        text, spans = "", []
        for piece, learned in self.render(messages, tools, False):
            if learned and piece:
                spans.append((len(text), len(text) + len(piece)))
            text += piece
        ids, flags = tokenize_spans(self.tokenizer, text, spans)
        return _encoded(ids, flags, train_on_prompt)

    def prompt(self, messages, tools=None) -> list[int]:
        return _ids(self.tokenizer, self.text(messages, tools, add_generation_prompt=True))


# --- tools, written into the system prompt --------------------------------------------------


def _function_of(tool_call: Mapping) -> tuple[str, Any]:
    function = tool_call.get("function", tool_call)
    arguments = function.get("arguments", function.get("parameters", {}))
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments)
        except json.JSONDecodeError:
            pass
    return function.get("name", ""), arguments


def openai_tool_call(name: str, arguments: Any) -> dict:
    """One tool call in the OpenAI ``tool_calls`` shape, with a fresh ``call_<hex>`` id.

    Templates that parse a model's tool-call markup (``parse_tool_calls(text) ->
    (content, calls)``) return their calls in this shape; ``arguments`` becomes a
    JSON string when it is not one already.
    """
    import uuid

    if not isinstance(arguments, str):
        arguments = json.dumps(arguments, ensure_ascii=False)
    return {"id": f"call_{uuid.uuid4().hex[:24]}", "type": "function", "function": {"name": name, "arguments": arguments}}


HERMES_TOOLS_BEFORE = (
    "# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
    "You are provided with function signatures within <tools></tools> XML tags:\n<tools>\n"
)
HERMES_TOOLS_AFTER = (
    "\n</tools>\n\nFor each function call, return a json object with function name and arguments within "
    "<tool_call></tool_call> XML tags:\n<tool_call>\n"
    '{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call>'
)


def hermes_tools_prompt(tools: Sequence[Mapping]) -> str:
    """Tool descriptions in the Hermes/Qwen layout (``<tools>`` block): one JSON line per tool."""
    lines = "\n".join(json.dumps(tool, ensure_ascii=False) for tool in tools)
    return f"{HERMES_TOOLS_BEFORE}{lines}{HERMES_TOOLS_AFTER}"


HERMES_TOOL_CALL_START = "<tool_call>"
# (open, close, between): how the Hermes layout writes calls, one JSON object in each block
HERMES_TOOL_CALL_MARKUP = (HERMES_TOOL_CALL_START + "\n", "\n</tool_call>", "\n")


def hermes_tool_calls(tool_calls: Sequence[Mapping]) -> str:
    opening, closing, between = HERMES_TOOL_CALL_MARKUP
    parts = []
    for call in tool_calls:
        name, arguments = _function_of(call)
        payload = json.dumps({"name": name, "arguments": arguments}, ensure_ascii=False)
        parts.append(f"{opening}{payload}{closing}")
    return between.join(parts)


# A call the model left unclosed (it stopped right after the JSON) still counts.
_HERMES_TOOL_CALL = re.compile(r"<tool_call>\s*(.*?)\s*(?:</tool_call>|$)", re.DOTALL)


def parse_hermes_tool_calls(text: str) -> tuple[str, list[dict]]:
    """(content, calls) of a generated answer in the Hermes layout (``<tool_call>{json}</tool_call>``)."""
    return parse_json_tool_calls(text, _HERMES_TOOL_CALL)


def parse_json_tool_calls(text: str, block: "re.Pattern[str]") -> tuple[str, list[dict]]:
    """(content, calls) of an answer whose calls are ``{"name", "arguments" | "parameters"}`` JSON in ``block`` matches.

    ``block``'s first group is the JSON. The content is the answer without the call
    blocks; the calls are in the OpenAI shape of ``openai_tool_call``. A block whose
    JSON cannot be read, or that names no function, stays in the content as text, so
    nothing the model wrote is lost.
    """
    calls: list[dict] = []
    kept: list[str] = []
    position = 0
    for match in block.finditer(text):
        try:
            payload = json.loads(match.group(1))
        except json.JSONDecodeError:
            continue
        if not isinstance(payload, dict) or not isinstance(payload.get("name"), str):
            continue
        calls.append(openai_tool_call(payload["name"], payload.get("arguments", payload.get("parameters", {}))))
        kept.append(text[position : match.start()])
        position = match.end()
    kept.append(text[position:])
    return "".join(kept).strip(), calls


LLAMA3_TOOLS_BEFORE = (
    "You have access to the following functions. To call a function, please respond with JSON for a "
    'function call. Respond in the format {"name": function name, "parameters": dictionary of '
    "argument name and its value}. Do not use variables.\n\n"
)


def llama3_tools_prompt(tools: Sequence[Mapping]) -> str:
    described = "\n\n".join(json.dumps(tool, indent=4, ensure_ascii=False) for tool in tools)
    return LLAMA3_TOOLS_BEFORE + described


def llama3_tool_calls(tool_calls: Sequence[Mapping]) -> str:
    return "\n".join(
        json.dumps({"name": name, "parameters": arguments}, ensure_ascii=False)
        for name, arguments in map(_function_of, tool_calls)
    )


# --- Jinja forms -----------------------------------------------------------------------------
# A template's ``jinja()`` is rendered by transformers' sandboxed environment (trim_blocks and
# lstrip_blocks on, ``raise_exception`` and a ``tojson`` that is ``json.dumps(ensure_ascii=False)``).
# Every tag below strips the whitespace before it (``{%-``, ``{{-``), so the result does not depend
# on those settings and the Jinja can be laid out for reading.


def jinja_string(text: str) -> str:
    """``text`` as a Jinja string literal (double-quoted, escaped): fixed text in a template's ``jinja()``."""
    return json.dumps(text, ensure_ascii=False)


def _statement(code: str, depth: int = 0) -> str:
    return "    " * depth + "{%- " + code + " %}"


def _output(expression: str, depth: int = 0) -> str:
    return "    " * depth + "{{- " + expression + " }}"


def _jinja_tools(before: str, dump: str, separator: str, after: str = "") -> list[str]:
    """Statements setting ``ns.tools``: ``before``, each tool written with ``dump`` (a filter) joined by ``separator``, ``after``."""
    return [
        _statement(f"set ns.tools = {jinja_string(before)}"),
        _statement("for tool in tools"),
        _statement(f"set ns.tools = ns.tools + ({jinja_string(separator)} if not loop.first else '') + (tool | {dump})", 1),
        _statement("endfor"),
        *([_statement(f"set ns.tools = ns.tools + {jinja_string(after)}")] if after else []),
    ]


def _jinja_json_calls(key: str, separator: str, before: str = "", after: str = "") -> list[str]:
    """Statements setting ``ns.calls`` to ``message.tool_calls`` as ``{"name": ..., key: ...}`` JSON, each
    between ``before`` and ``after``, joined by ``separator`` (arguments given as a JSON string are kept)."""
    opening, middle, closing = before + '{"name": ', ', "' + key + '": ', "}" + after
    return [
        _statement("set ns.calls = ''"),
        _statement("for call in message.tool_calls"),
        _statement("set function = call.function if call.function is defined else call", 1),
        _statement(
            "set arguments = function.arguments if function.arguments is defined else "
            "(function.parameters if function.parameters is defined else {})", 1,
        ),
        _statement("set arguments = arguments if arguments is string else (arguments | tojson)", 1),
        _statement(
            f"set ns.calls = ns.calls + ({jinja_string(separator)} if not loop.first else '') + {jinja_string(opening)} + "
            f"((function.name if function.name is defined else '') | tojson) + {jinja_string(middle)} + arguments + "
            f"{jinja_string(closing)}", 1,
        ),
        _statement("endfor"),
    ]


def _jinja_header(header: str, role: str | None = None, *, role_text: str | None = None) -> str:
    """A ``TurnLayout.header`` as a Jinja expression: for the fixed role ``role_text``, or the role the expression ``role`` gives."""
    import string

    if role_text is not None:
        return jinja_string(header.format(role=role_text))
    parts = []
    for literal, field_name, _, _ in string.Formatter().parse(header):
        if literal:
            parts.append(jinja_string(literal))
        if field_name is not None:
            if field_name != "role":
                raise TemplateError(f"A TurnLayout header holds {{{field_name}}}; a header may hold only {{role}}.")
            parts.append(role)
    return " + ".join(parts) or "''"


def _layout_jinja(layout: "TurnLayout") -> str | None:
    tools = _TOOLS_PROMPT_JINJA.get(layout.tools_prompt)
    calls = _TOOL_CALLS_JINJA.get(layout.tool_calls_text)
    if tools is None or calls is None:
        return None
    s = jinja_string
    trim = " | trim" if layout.trim_content else ""
    end = s(layout.end + layout.separator)

    def role(name: str) -> str:
        return layout.role_names.get(name, name)

    def refuse_none(message: str, number: str, depth: int) -> list[str]:
        """Fail where ``TurnTemplate._content`` raises: no content (None) on a message without tool calls."""
        if layout.none_content_empty:
            return []
        rest = (
            f") has no content (None), which template '{layout.name}' cannot render; give it text, an empty string "
            f"for none."
        )
        sentence = f"{s('Message ')} ~ {number} ~ {s(' (')} ~ {message}.role ~ {s(rest)}"
        return [
            _statement(f"if ({message}.content is none or {message}.content is not defined) and not {message}.tool_calls", depth),
            _output(f"raise_exception({sentence})", depth + 1),
            _statement("endif", depth),
        ]

    default = s(layout.default_system) if layout.default_system is not None else "none"
    lines = [_statement(f"set ns = namespace(system={default}, first=0, tools='', calls='')")]
    if layout.role_names:
        names = ", ".join(f"{s(k)}: {s(v)}" for k, v in layout.role_names.items())
        lines.append(_statement(f"set role_names = {{{names}}}"))
    lines += [
        _statement("if messages and messages[0].role == 'system'"),
        *refuse_none("messages[0]", "1", 1),
        _statement(f"set ns.system = (messages[0].content or ''){trim}", 1),
        _statement("set ns.first = 1", 1),
        _statement("endif"),
        _statement("if tools"),
        *["    " + line for line in tools],
        _statement(f"set ns.system = (ns.system + {s(chr(10) * 2)} + ns.tools) if ns.system else ns.tools", 1),
        _statement("endif"),
    ]
    if layout.begin:
        lines.append(_output(s(layout.begin)))
    lines += [
        _statement("if ns.system is not none"),
        _output(f"{_jinja_header(layout.header, role_text=role('system'))} + (ns.system{trim}) + {end}", 1),
        _statement("endif"),
        _statement("for message in messages[ns.first:]"),
        *refuse_none("message", "(loop.index + ns.first)", 1),
        _statement("set content = message.content or ''", 1),
        _statement("if message.role == 'assistant' and message.tool_calls", 1),
        *["        " + line for line in calls],
        _statement(f"set content = (content + {s(chr(10))} + ns.calls) if content else ns.calls", 2),
        _statement("endif", 1),
    ]
    role_expression = "(role_names[message.role] if message.role in role_names else message.role)" if layout.role_names else "message.role"
    lines += [
        _output(f"{_jinja_header(layout.header, role_expression)} + (content{trim}) + {end}", 1),
        _statement("endfor"),
        _statement("if add_generation_prompt"),
        _output(_jinja_header(layout.header, role_text=role("assistant")), 1),
        _statement("endif"),
    ]
    return "\n".join(lines)


# The Jinja of the tool helpers a ``TurnLayout`` names (a layout with other helpers has no Jinja form).
_TOOLS_PROMPT_JINJA: dict[Callable, list[str]] = {
    hermes_tools_prompt: _jinja_tools(HERMES_TOOLS_BEFORE, "tojson", "\n", HERMES_TOOLS_AFTER),
    llama3_tools_prompt: _jinja_tools(LLAMA3_TOOLS_BEFORE, "tojson(indent=4)", "\n\n"),
}
_TOOL_CALLS_JINJA: dict[Callable, list[str]] = {
    hermes_tool_calls: _jinja_json_calls("arguments", "\n", "<tool_call>\n", "\n</tool_call>"),
    llama3_tool_calls: _jinja_json_calls("parameters", "\n"),
}


# --- role-header layouts --------------------------------------------------------------------


@dataclass(frozen=True)
class TurnLayout:
    """A layout where each message is ``header(role) + content + end + separator``.

    The assistant's ``content + end`` is learned; the header and the separator are
    not. ``header`` holds ``{role}``. ``begin`` opens the conversation once (a BOS).
    ``default_system`` is used when a conversation has no system message.
    ``role_names`` renames canonical roles (Llama 3 calls tool results ``ipython``).
    ``none_content_empty``: a message whose content is None renders as empty text (Llama
    3's template reads it so); otherwise it is refused with a sentence, as ChatML
    templates fail on it (an answer that only calls tools may always have none).
    """

    name: str
    header: str
    end: str
    separator: str = ""
    begin: str = ""
    default_system: str | None = None
    trim_content: bool = False
    none_content_empty: bool = False
    role_names: Mapping[str, str] = field(default_factory=dict)
    special_tokens: Sequence[str] = ()
    tools_prompt: Callable[[Sequence[Mapping]], str] = hermes_tools_prompt
    tool_calls_text: Callable[[Sequence[Mapping]], str] = hermes_tool_calls
    # How the model's own calls are read back (None: this layout's calls are not parsed).
    tool_call_start: str | None = HERMES_TOOL_CALL_START
    tool_calls_parser: Callable[[str], tuple[str, list[dict]]] | None = parse_hermes_tool_calls

    def build(self, tokenizer) -> "TurnTemplate":
        return TurnTemplate(tokenizer, self)

    def jinja(self) -> str | None:
        """This layout as a Jinja ``chat_template``; None when its tool helpers are not the core's (Hermes, Llama 3)."""
        return _layout_jinja(self)


class TurnTemplate(SegmentTemplate):
    """A ``SegmentTemplate`` rendering a ``TurnLayout``."""

    def __init__(self, tokenizer, layout: TurnLayout) -> None:
        self.layout = layout
        super().__init__(
            tokenizer,
            name=layout.name,
            stop_strings=[layout.end],
            special_tokens=layout.special_tokens or [layout.end],
        )

    @property
    def tool_call_start(self) -> str | None:
        return self.layout.tool_call_start if self.layout.tool_calls_parser else None

    def jinja(self) -> str | None:
        return self.layout.jinja()

    def parse_tool_calls(self, text: str) -> tuple[str, list[dict]]:
        if self.layout.tool_calls_parser is None:
            return text, []
        return self.layout.tool_calls_parser(text)

    def _content(self, message: Message, number: int) -> str:
        content = message.get("content")
        if content is None and not (self.layout.none_content_empty or message.get("tool_calls")):
            raise TemplateError(
                f"Message {number} ({message.get('role')}) has no content (None), which template '{self.name}' cannot "
                f"render (its official templates fail on it too); give it text, an empty string for none."
            )
        content = content or ""
        if message.get("role") == "assistant" and message.get("tool_calls"):
            calls = self.layout.tool_calls_text(message["tool_calls"])
            content = f"{content}\n{calls}" if content else calls
        return content.strip() if self.layout.trim_content else content

    def render(self, messages, tools=None, add_generation_prompt=False) -> list[Segment]:
        layout = self.layout
        messages = list(messages)
        numbers = list(range(1, len(messages) + 1))  # message numbers in sentences
        system = None
        if messages and messages[0].get("role") == "system":
            system = self._content(messages[0], 1)
            messages, numbers = messages[1:], numbers[1:]
        elif layout.default_system is not None:
            system = layout.default_system
        if tools:
            tools_text = layout.tools_prompt(tools)
            system = f"{system}\n\n{tools_text}" if system else tools_text
        if system is not None:
            messages.insert(0, {"role": "system", "content": system})
            numbers.insert(0, 1)

        pieces: list[Segment] = [(layout.begin, False)] if layout.begin else []
        for number, message in zip(numbers, messages):
            role = message["role"]
            learned = role == "assistant"
            header = layout.header.format(role=layout.role_names.get(role, role))
            pieces.append((header, False))
            pieces.append((self._content(message, number) + layout.end, learned))
            if layout.separator:
                pieces.append((layout.separator, False))
        if add_generation_prompt:
            pieces.append((layout.header.format(role=layout.role_names.get("assistant", "assistant")), False))
        return pieces


CHATML = TurnLayout(
    name="chatml",
    header="<|im_start|>{role}\n",
    end="<|im_end|>",
    separator="\n",
    special_tokens=("<|im_start|>", "<|im_end|>"),
)

LLAMA3 = TurnLayout(
    name="llama3",
    begin="<|begin_of_text|>",
    header="<|start_header_id|>{role}<|end_header_id|>\n\n",
    end="<|eot_id|>",
    trim_content=True,
    none_content_empty=True,
    role_names={"tool": "ipython"},
    special_tokens=("<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"),
    tools_prompt=llama3_tools_prompt,
    tool_calls_text=llama3_tool_calls,
    tool_call_start=None,
    tool_calls_parser=None,
)


# --- the tokenizer's own template ----------------------------------------------------------

_PROBE_USER = "tuneforge probe question"
_PROBE_ANSWER = "tuneforge probe answer"


class HFChatTemplate(Template):
    """The tokenizer's own jinja ``chat_template``, with the assistant turns learned.

    The ids are exactly those of ``tokenizer.apply_chat_template(messages)``. The
    learned spans come from rendering each prefix of the conversation: the text a
    turn adds after the generation prompt, up to and including the end-of-turn
    marker. This needs a prefix-stable template (rendering the first turns gives the
    beginning of the full rendering), which the template is checked for.
    """

    def __init__(self, tokenizer, name: str = "default") -> None:
        self.tokenizer = tokenizer
        self.name = name
        if not getattr(tokenizer, "chat_template", None):
            raise TemplateError(
                f"The tokenizer of {_tokenizer_label(tokenizer)} has no chat template, so template '{name}' "
                f"cannot be used; pass --template chatml or --template llama3."
            )
        self._turn_end, self._has_generation_prompt = self._probe()
        self._set_stops([self._turn_end])

    def _apply(self, messages, tools, add_generation_prompt) -> str:
        messages = [{k: v for k, v in m.items() if v is not None} for m in messages]
        return self.tokenizer.apply_chat_template(
            messages, tools=tools or None, tokenize=False, add_generation_prompt=add_generation_prompt
        )

    def _render(self, messages, tools=None, add_generation_prompt=False) -> str:
        try:
            return self._apply(messages, tools, add_generation_prompt)
        except Exception as exc:  # jinja raises its own errors (raise_exception in templates)
            raise TemplateError(
                f"The chat template of {_tokenizer_label(self.tokenizer)} failed on this conversation "
                f"({type(exc).__name__}: {exc}); fix the conversation or pass another --template."
            ) from None

    def _probe(self) -> tuple[str | None, bool]:
        """Find the end-of-turn marker after an answer and whether a generation prompt exists."""
        user = [{"role": "user", "content": _PROBE_USER}]
        try:
            full = self._apply(user + [{"role": "assistant", "content": _PROBE_ANSWER}], None, False)
            prompted = self._apply(user, None, True)
            plain = self._apply(user, None, False)
        except Exception as exc:
            raise TemplateError(
                f"The chat template of {_tokenizer_label(self.tokenizer)} cannot render a plain user/assistant "
                f"exchange ({type(exc).__name__}: {exc}); pass another --template."
            ) from None
        at = full.rfind(_PROBE_ANSWER)
        tail = full[at + len(_PROBE_ANSWER):] if at >= 0 else ""
        candidates = set(getattr(self.tokenizer, "get_added_vocab", dict)())
        candidates.add(getattr(self.tokenizer, "eos_token", None) or "")
        stripped = tail.lstrip()
        marker = max((c for c in candidates if c and stripped.startswith(c)), key=len, default=None)
        return marker, prompted != plain

    def _learned_span(self, before: str, after: str, message: Message) -> tuple[int, int]:
        start = len(before)
        span = after[start:]
        if not self._has_generation_prompt:  # the header is part of the turn: skip to the content
            content = (message.get("content") or "").strip()
            found = span.find(content) if content else -1
            if found > 0:
                start, span = start + found, span[found:]
        marker_at = span.rfind(self._turn_end) if self._turn_end else -1
        if marker_at >= 0:
            return start, start + marker_at + len(self._turn_end)
        return start, start + len(span.rstrip())

    def encode(self, messages, tools=None, train_on_prompt=False) -> Encoded:
        messages = list(messages)
        full = self._render(messages, tools)
        spans = []
        if not train_on_prompt:
            for i, message in enumerate(messages):
                if message.get("role") != "assistant":
                    continue
                if i == 0:
                    raise TemplateError(
                        "The conversation starts with an assistant message; start it with a user message."
                    )
                before = self._render(messages[:i], tools, add_generation_prompt=True)
                after = self._render(messages[: i + 1], tools)
                if not (after.startswith(before) and full.startswith(after)):
                    raise TemplateError(
                        f"The chat template of {_tokenizer_label(self.tokenizer)} is not prefix-stable (rendering the "
                        f"conversation up to message {i + 1} does not give the beginning of the whole rendering), so "
                        f"its assistant turns cannot be located; pass a --template made for this model."
                    )
                spans.append(self._learned_span(before, after, message))
        ids, flags = tokenize_spans(self.tokenizer, full, spans)
        return _encoded(ids, flags, train_on_prompt)

    def prompt(self, messages, tools=None) -> list[int]:
        return _ids(self.tokenizer, self._render(list(messages), tools, add_generation_prompt=True))

    def text(self, messages, tools=None, add_generation_prompt: bool = False) -> str:
        return self._render(list(messages), tools, add_generation_prompt)

    def jinja(self) -> str | None:
        """The tokenizer's own ``chat_template`` (this template is it)."""
        template = getattr(self.tokenizer, "chat_template", None)
        return template if isinstance(template, str) else None


def drops_tools(template: Any, messages: Sequence[Mapping], tools: Sequence[Mapping] | None) -> bool:
    """True when ``template`` renders ``messages`` the same with ``tools`` as without them.

    A checkpoint's own chat template may have no place for tools (SmolLM2's has none): a
    model trained or measured through it never sees the tools its rows name.
    """
    if not tools or not hasattr(template, "text"):
        return False
    try:
        return template.text(list(messages), tools) == template.text(list(messages), None)
    except Exception:  # a row the template refuses is reported where it is encoded
        return False


def tools_dropped_warning(template: Any, rows: Iterable[tuple[Sequence[Mapping], Sequence[Mapping] | None, str]]) -> str:
    """The warning for ``rows`` (``(messages, tools, where)`` each) when ``template`` drops the tools of
    the first that has any (``drops_tools``), naming where and the way out; "" when it renders them."""
    first = next(((messages, tools, where) for messages, tools, where in rows if tools), None)
    if first is None or not drops_tools(template, first[0], first[1]):
        return ""
    name = getattr(template, "name", None) or type(template).__name__
    return (
        f"the chat template '{name}' renders no tools, but the rows of {first[2]} have 'tools': the model will not see "
        f"them; pass --template with one that renders them (chatml, llama3, or a model family's own: `tuneforge list "
        f"templates`), with --allow-template-drift where it differs from the checkpoint's own."
    )


def save_with_chat_template(saver, template, directory) -> str | None:
    """Save the tokenizer or processor ``saver`` into ``directory`` with ``template``'s Jinja as its chat template.

    What a run or an export writes, so that whatever loads the saved tokenizer renders
    prompts as the model was trained. Returns the Jinja written, or None when the
    template has no Jinja form (``saver`` is saved with its own chat template then).
    ``saver`` itself is left as it was: the Jinja is set only while it saves.
    """
    jinja = template.jinja() if template is not None else None
    if jinja is None:
        saver.save_pretrained(str(directory))
        return None
    inner = getattr(saver, "tokenizer", None)  # a processor saves its tokenizer with it
    targets = [saver] + ([inner] if inner is not None and inner is not saver else [])
    before = [getattr(target, "chat_template", None) for target in targets]
    try:
        for target in targets:
            target.chat_template = jinja
        saver.save_pretrained(str(directory))
    finally:
        for target, own in zip(targets, before):
            target.chat_template = own
    return jinja


def get_template(name: str, tokenizer) -> Template:
    """Build the registered chat template ``name`` for ``tokenizer``."""
    from .registry import get_registry

    return get_registry().get("chat_templates", name).build(tokenizer)


__all__ = [
    "CHATML",
    "Encoded",
    "HFChatTemplate",
    "IGNORE_INDEX",
    "LLAMA3",
    "Segment",
    "SegmentTemplate",
    "Template",
    "TemplateError",
    "TurnLayout",
    "TurnTemplate",
    "get_template",
    "hermes_tool_calls",
    "hermes_tools_prompt",
    "jinja_string",
    "parse_hermes_tool_calls",
    "parse_json_tool_calls",
    "llama3_tool_calls",
    "save_with_chat_template",
    "llama3_tools_prompt",
    "openai_tool_call",
    "single_token_id",
    "tokenize_spans",
]
