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
- ``reasoning_markers(template, request)``: the markers of a thinking model's reasoning
  (the template's ``reasoning_markers``, such as ``("<think>", "</think>")``, when it
  also reads reasoning back with ``parse_reasoning`` and the request separates it);
- ``split_reasoning(text, template, markers)``: (reasoning, answer) of a generated text;
- ``finish_completion(completion, template, request)``: a completion as every engine answers it:
  its reasoning apart (where the request separates it), then the tool calls of its answer;
- ``AnswerStream(template, request, stops)``: the deltas of a streamed answer from its
  whole text so far (reasoning deltas, then text deltas; stop strings, unfinished
  characters and tool calls held back), and at the end what the completion adds;
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
from . import ChatRequest, Completion, Reasoning


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


def reasoning_markers(template: Any, request: ChatRequest) -> tuple[str, str] | None:
    """(start, end) of a thinking model's reasoning, when the request's answer separates it (None: it does not).

    A template declares them as ``reasoning_markers`` beside its ``parse_reasoning``;
    a raw prompt (no template) and a request with ``separate_reasoning`` False keep the text as generated.
    """
    markers = getattr(template, "reasoning_markers", None)
    if not markers or getattr(template, "parse_reasoning", None) is None or request.prompt is not None or not request.separate_reasoning:
        return None
    start, end = markers
    return start, end


def split_reasoning(text: str, template: Any, markers: tuple[str, str] | None) -> tuple[str | None, str]:
    """(reasoning, answer) of a generated text: reasoning only when the text opens with the start marker.

    The template's ``parse_reasoning`` splits it; a text cut before the end marker
    (``max_tokens``) is all reasoning, with an empty answer. A text that does not open
    with the marker (thinking off: the prompt ended with an empty block) is all answer.
    """
    if markers is None or not text.lstrip().startswith(markers[0]):
        return None, text
    if markers[1] not in text:
        return template.parse_reasoning(text + markers[1])[0], ""
    return template.parse_reasoning(text)


def finish_completion(completion: Completion, template: Any, request: ChatRequest) -> Completion:
    """``completion`` as every engine answers: its reasoning apart (when separated), then the tool calls of its answer.

    An answer constrained to tool calls (``tool_choice`` "required" or a named
    function) is JSON: its calls are read from it, and its text is empty.
    """
    structured = request.sampling.structured
    if structured is not None and structured.tool_call is not None:
        from .structured import tool_calls

        calls = tool_calls(completion.text, structured)
        if calls is None:  # cut short by max_tokens: the JSON stays, as the text
            return completion
        return dataclasses.replace(completion, text="", tool_calls=calls, finish_reason="tool_calls")
    reasoning, answer = split_reasoning(completion.text, template, reasoning_markers(template, request))
    if reasoning is not None:
        completion = dataclasses.replace(completion, text=answer, reasoning=reasoning)
    return with_tool_calls(completion, template, request.tools)


class AnswerStream:
    """The deltas of a streamed answer, from its whole text so far: what every engine's ``stream`` yields.

    ``push(text)`` takes the text generated so far (decoded without special tokens,
    not yet cut at stop strings) and returns the new deltas: ``Reasoning`` ones while
    the think block lasts (none of its markers shown), then plain ones of the answer.
    Held back until they are known: a tail that could still become a stop string, an
    unfinished UTF-8 character, a start or end marker still arriving, and, when the
    request offers tools, trailing whitespace and everything from the first tool-call
    marker of the answer on (the call is parsed when it is complete).
    ``stopped`` tells that a stop string ended the text. ``finish(completion)`` gives
    what the final completion holds beyond what was shown.
    """

    def __init__(self, template: Any, request: ChatRequest, stops: Sequence[str] = ()) -> None:
        self.template = template
        self.stops = tuple(stops)
        self.tool_markers = tool_call_markers(template, request.tools)
        self.markers = reasoning_markers(template, request)
        self.reasoning = ""  # shown so far
        self.content = ""
        self.stopped = False

    def push(self, text: str) -> list[str]:
        cut = first_stop(text, self.stops)
        if cut is not None:
            text, self.stopped = text[:cut], True
        else:
            safe = len(text) - held_back(text, self.stops)
            while safe > 0 and text[safe - 1] == "\ufffd":
                safe -= 1
            text = text[:safe]
        reasoning, answer = self._parts(text)
        return self._show(reasoning, answer, hold=True)

    def finish(self, completion: Completion) -> list[str]:
        """The rest of the reasoning and of the text of ``completion``, past what ``push`` showed."""
        return self._show(completion.reasoning, completion.text, hold=False)

    def _parts(self, text: str) -> tuple[str | None, str | None]:
        """(reasoning, answer) that can be shown of ``text``; None for a part not known yet."""
        if self.markers is None:
            return None, text
        start, end = self.markers
        head = text.lstrip()
        if len(head) < len(start) and start.startswith(head):
            return None, None  # it may still open the reasoning
        if not head.startswith(start):
            return None, text
        if end in text:
            return self.template.parse_reasoning(text)
        shown = text[: len(text) - held_back(text, (end,))]
        return self.template.parse_reasoning(shown + end)[0], None

    def _show(self, reasoning: str | None, answer: str | None, *, hold: bool) -> list[str]:
        deltas: list[str] = []
        if reasoning is not None and reasoning.startswith(self.reasoning) and len(reasoning) > len(self.reasoning):
            deltas.append(Reasoning(reasoning[len(self.reasoning) :]))
            self.reasoning = reasoning
        if answer is not None:
            if hold and self.tool_markers:
                call = first_stop(answer, self.tool_markers)
                answer = answer[: len(answer) - held_back(answer, self.tool_markers) if call is None else call]
                answer = answer.rstrip()  # whitespace may precede a call, and a parsed answer ends without it
            if answer.startswith(self.content) and len(answer) > len(self.content):
                deltas.append(answer[len(self.content) :])
                self.content = answer
        return deltas


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
