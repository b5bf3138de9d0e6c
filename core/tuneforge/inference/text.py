"""Text helpers every engine needs to answer the same way: stop strings, tool calls, safe streaming.

- ``first_stop(text, stops)``: where the first stop string starts;
- ``held_back(text, markers)``: how many trailing characters could still become a
  marker (a streamed answer keeps them until it knows);
- ``prompt_ids(template, tokenizer, request)``: the token ids a request's answer
  continues (the chat template's prompt, or a raw prompt tokenized as it is); parts the
  model or the engine cannot take are refused there;
- ``prompt_extras(template, request)``: what the model takes beside those ids (the
  pixel values of image parts), for an engine that passes them on;
- ``tool_call_markers(template, tools)``: where a streamed answer stops showing text
  (the template's ``tool_call_start``, when the request offers tools);
- ``with_tool_calls(completion, template, tools)``: the completion with the calls the
  template parses out of its text, ``finish_reason`` ``"tool_calls"``;
- ``kept_special_tokens(template)`` and ``strip_special_tokens(text, tokenizer, keep)``:
  an answer's text is its decoding without special tokens, except those the
  template marks as part of the text (``text_special_tokens``: InternLM's tool-call
  markers, say), which its ``parse_tool_calls`` needs to see.
"""

from __future__ import annotations

import dataclasses
import inspect
from typing import Any, Sequence

from ..errors import TuneforgeError
from ..messages import has_parts, modalities_of, refuse_parts, template_label, template_modalities
from . import ChatRequest, Completion


def first_stop(text: str, stops: Sequence[str]) -> int | None:
    """Where the first stop string starts in ``text`` (None: none occurs)."""
    found = [i for i in (text.find(s) for s in stops) if i >= 0]
    return min(found) if found else None


def held_back(text: str, markers: Sequence[str]) -> int:
    """How many trailing characters could still become one of ``markers``."""
    longest = 0
    for marker in markers:
        for k in range(min(len(marker) - 1, len(text)), longest, -1):
            if text.endswith(marker[:k]):
                longest = k
                break
    return longest


def tool_call_markers(template: Any, tools: Sequence | None) -> tuple[str, ...]:
    """The text that opens a tool call, when the request offers tools and the template reads calls back."""
    start = getattr(template, "tool_call_start", None)
    return (start,) if tools and start and getattr(template, "parse_tool_calls", None) else ()


def with_tool_calls(completion: Completion, template: Any, tools: Sequence | None) -> Completion:
    """``completion`` with the tool calls its text holds, parsed by the template (unchanged when there are none)."""
    parse = getattr(template, "parse_tool_calls", None)
    if not tools or parse is None or completion.finish_reason != "stop":
        return completion
    content, calls = parse(completion.text)
    if not calls:
        return completion
    return dataclasses.replace(completion, text=content, finish_reason="tool_calls", tool_calls=list(calls))


def kept_special_tokens(template: Any) -> tuple[str, ...]:
    """The special tokens that stay in an answer's text for this template (most templates: none)."""
    return tuple(getattr(template, "text_special_tokens", None) or ())


def strip_special_tokens(text: str, tokenizer: Any, keep: Sequence[str]) -> str:
    """``text`` (decoded with its special tokens) without those not in ``keep``."""
    for token in getattr(tokenizer, "all_special_tokens", None) or ():
        if token not in keep:
            text = text.replace(token, "")
    return text


def prompt_ids(template: Any, tokenizer: Any, request: ChatRequest, *, takes_extras: bool = False) -> list[int]:
    """The ids the answer to ``request`` continues: its raw prompt, or its conversation through the template.

    Parts the template does not encode are refused naming the model; an engine that passes
    the template's ``prompt_extras`` to its model (pixel values, ...) says ``takes_extras``,
    and any other engine refuses non-text parts, since their content would never reach the model.
    """
    if request.prompt is not None:
        return list(tokenizer.encode(request.prompt))
    options = dict(request.template_options or {})
    if options:
        parameters = inspect.signature(template.prompt).parameters
        if not any(p.kind is p.VAR_KEYWORD for p in parameters.values()):
            taken = [name for name, p in parameters.items() if p.kind is p.KEYWORD_ONLY or p.default is not p.empty and name != "tools"]
            for name in options:
                if name not in taken:
                    raise TuneforgeError(
                        f"The chat template {getattr(template, 'name', type(template).__name__)!r} takes no option '{name}' "
                        f"(it takes: {', '.join(taken) or 'none'}); leave it out."
                    )
    refuse_parts(request.messages, template_modalities(template), template_label(template))
    if not takes_extras:
        for n, kind, _ in modalities_of(request.messages):
            raise TuneforgeError(
                f"Message {n} has a '{kind}' part, but this inference engine passes only token ids to its model; "
                f"send text, or serve the model with an engine that takes prompt extras (see docs/plugins.md)."
            )
    return list(template.prompt(list(request.messages), tools=request.tools, **options))


def prompt_extras(template: Any, request: ChatRequest) -> dict[str, Any]:
    """What the model takes beside the prompt's ids (pixel values, ...): the template's, for a request with parts."""
    if request.prompt is not None or not has_parts(request.messages):
        return {}
    return dict(template.prompt_extras(list(request.messages), tools=request.tools))
