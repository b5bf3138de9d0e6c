"""Compare a tuneforge chat template with a model's official Jinja template, conversation by conversation.

The official templates (each model's ``chat_template`` string, with where it came
from in ``SOURCE.md``) live outside the repository, in the ``shared/reference/chat-templates``
folder next to it, or where ``TUNEFORGE_REFERENCE_DIR`` points. A plugin's tests use
this module so every template is held to the same three checks::

    from tuneforge.testing.reference import check_against_official, conversations, official_template

    official = official_template("Qwen3-8B.jinja")      # skips (fails under CI=true) without the folder
    for conversation in conversations(seed=3, count=120, tools=True, reasoning=True):
        check_against_official(template, official, conversation)

- text: ``template.text`` equals ``tokenizer.apply_chat_template(..., tokenize=False)``
  with the official template, with and without the generation prompt, for the whole
  conversation and for each prompt the conversation holds (every prefix that ends
  before an assistant turn);
- token ids: ``encode`` and ``prompt`` give the ids of the official text;
- loss mask: ``encode`` learns exactly the assistant turns the official rendering
  emits. A turn's span is found from the official rendering alone: the rendering with
  that assistant message swapped for an empty system message differs from the full
  one by exactly that turn (a system message changes nothing around it in these
  templates: it is neither a query nor a tool result). What is learned is what a model
  generates after the official generation prompt, up to and including the end-of-turn
  marker (not the newline after it); a token overlapping a learned character is
  learned.

Where the official template raises on a conversation, the tuneforge template must
raise a ``TemplateError`` too.

The same comparison checks a template's own Jinja form
(``Official(tokenizer, template.jinja(), template.chat_template_kwargs)``), and
``check_saved_tokenizer(directory, template)`` checks that a saved tokenizer (a run's
output dir, an export), loaded with plain transformers, renders the ``PROBES``
conversations as the template does.
"""

from __future__ import annotations

import json
import os
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

REFERENCE_ENV = "TUNEFORGE_REFERENCE_DIR"
IGNORE_INDEX = -100


def reference_dir() -> Path:
    """Where the official templates are: ``$TUNEFORGE_REFERENCE_DIR``, else ``<repository>/../shared/reference/chat-templates``."""
    given = os.environ.get(REFERENCE_ENV)
    if given:
        return Path(given)
    repository = Path(__file__).resolve().parents[3]
    return repository.parent / "shared" / "reference" / "chat-templates"


def official_template(file_name: str) -> str:
    """The official template ``file_name`` of the reference folder; without it the test skips (fails under ``CI=true``)."""
    import pytest

    path = reference_dir() / file_name
    if not path.is_file():
        sentence = (
            f"The official chat template {path} is missing, so the template reference tests cannot run; "
            f"put the reference folder there or point {REFERENCE_ENV} at it."
        )
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(sentence)
        pytest.skip(sentence)
    return path.read_text(encoding="utf-8")


# --- conversations ----------------------------------------------------------------------------

WORDS = (
    "weather", "Paris", "the", "answer", "is", "42", "¿qué?", "naïve", "Straße", "数据", "東京", "Привет", "שלום", "مرحبا",
    "🙂", "👩‍💻", "e\u0301", "\u200b", "a\tb", "x = {\"k\": [1, 2]}", "C:\\path\\to", "'quoted'", "1.5e-3", "---", "**bold**",
)
# Text that looks like (or is) the markup of a chat format, inside ordinary content.
LOOKALIKES = (
    "<|im_start|>", "<|im_end|>", "<|im_start|>assistant\n", "<|endoftext|>", "<s>", "</s>", "<tool_call>", "</tool_call>",
    "<tool_response>", "</tool_response>", "<think>", "<|eot_id|>", "<|start_header_id|>", "[INST]", "<|im_start |>",
    "< |im_end|>", "<|plugin|>", "<|action_start|>", "{{ messages }}", "{% if %}",
)
SPACES = (" ", " ", " ", "\n", "\n\n", "  ", "\t", " \n")


@dataclass
class Conversation:
    """A generated conversation: messages, tools (or None) and the number it was generated as."""

    messages: list[dict]
    tools: list[dict] | None = None
    number: int = 0
    notes: list[str] = field(default_factory=list)

    def __repr__(self) -> str:
        return f"Conversation #{self.number} ({', '.join(self.notes) or 'plain'}): {json.dumps(self.messages, ensure_ascii=False)[:2000]}"


class _Writer:
    def __init__(self, rng: random.Random, lookalikes: bool, reasoning_lookalikes: bool = False):
        self.rng = rng
        self.lookalikes = lookalikes

    def text(self, most: int = 12, empty: float = 0.08, lookalikes: bool = True) -> str:
        rng = self.rng
        if rng.random() < empty:
            return ""
        pieces = []
        for _ in range(rng.randint(1, most)):
            roll = rng.random()
            if self.lookalikes and lookalikes and roll < 0.08:
                pieces.append(rng.choice(LOOKALIKES))
            else:
                pieces.append(rng.choice(WORDS))
            pieces.append(rng.choice(SPACES))
        text = "".join(pieces)
        roll = rng.random()
        if roll < 0.15:
            text = text.strip()
        elif roll < 0.2:
            text = "\n" + text
        return text


def _tool(rng: random.Random, writer: _Writer, name: str) -> dict:
    properties = {
        "city": {"type": "string", "description": writer.text(4, empty=0, lookalikes=False)},
        "days": {"type": "integer", "minimum": 1},
    }
    return {
        "type": "function",
        "function": {
            "name": name,
            "description": writer.text(6, empty=0, lookalikes=False),
            "parameters": {"type": "object", "properties": properties, "required": ["city"]},
        },
    }


def _arguments(rng: random.Random, writer: _Writer) -> Any:
    value: dict = {"city": writer.text(3, empty=0.1)}
    if rng.random() < 0.5:
        value["days"] = rng.randint(1, 9)
    if rng.random() < 0.3:
        value["options"] = {"units": rng.choice(["metric", "imperial"]), "tags": [writer.text(2), None, True, 1.5]}
    roll = rng.random()
    if roll < 0.3:
        return json.dumps(value, ensure_ascii=False)
    if roll < 0.4:
        return json.dumps(value, ensure_ascii=True, separators=(",", ":"))
    return value


def conversations(seed: int, count: int, *, tools: bool = True, reasoning: bool = False, lookalikes: bool = True) -> list[Conversation]:
    """``count`` varied conversations from ``seed``: the same seed gives the same conversations.

    System prompt or not (sometimes empty), one to four user turns (sometimes empty,
    sometimes a ``<tool_response>`` block written as a user turn), answers; with ``tools``: tool lists, one to three calls in a turn (content empty,
    None or text), consecutive tool results, multi-step calls; with ``reasoning``:
    ``reasoning_content`` (sometimes empty or with newlines) or an inline ``<think>``
    block on answers. Some end with an answer (training rows), some with a user or a
    tool turn (prompts). Text mixes unicode and markup look-alikes (``lookalikes``).
    """
    rng = random.Random(seed)
    out = []
    for number in range(count):
        writer = _Writer(rng, lookalikes)
        notes: list[str] = []
        messages: list[dict] = []
        tool_list = None
        if tools and rng.random() < 0.5:
            tool_list = [_tool(rng, writer, name) for name in rng.sample(["get_weather", "search", "wetter_für_städte"], rng.randint(1, 2))]
            notes.append("tools")
        if rng.random() < 0.45:
            messages.append({"role": "system", "content": writer.text(8, empty=0.25)})
            notes.append("system" if messages[0]["content"] else "empty system")
        for turn in range(rng.randint(1, 4)):
            if turn and rng.random() < 0.05:
                messages.append({"role": "system", "content": writer.text(4)})
                notes.append("later system")
            if turn and rng.random() < 0.08:  # a tool result written as a user turn, as some datasets hold them
                messages.append({"role": "user", "content": f"<tool_response>\n{writer.text(4)}\n</tool_response>"})
                notes.append("tool response as user")
            else:
                messages.append({"role": "user", "content": writer.text()})
            steps = rng.randint(1, 2) if tool_list and rng.random() < 0.6 else 0
            for _ in range(steps):
                calls = [
                    {"id": f"call_{number}_{k}", "type": "function",
                     "function": {"name": rng.choice(tool_list)["function"]["name"], "arguments": _arguments(rng, writer)}}
                    for k in range(rng.choices([1, 2, 3], [5, 3, 1])[0])
                ]
                content = rng.choice(["", None, "\n", writer.text(6)])
                messages.append(_with_reasoning(rng, writer, {"role": "assistant", "content": content, "tool_calls": calls}, reasoning, notes))
                notes.append(f"{len(calls)} calls")
                for call in calls:
                    messages.append({"role": "tool", "tool_call_id": call["id"], "content": writer.text(6)})
            messages.append(_with_reasoning(rng, writer, {"role": "assistant", "content": writer.text()}, reasoning, notes))
        if rng.random() < 0.3:
            messages.pop()  # a prompt: ends with a user turn or tool results
            notes.append("prompt")
        out.append(Conversation(messages, tool_list, number, notes))
    return out


def _with_reasoning(rng: random.Random, writer: _Writer, message: dict, reasoning: bool, notes: list[str]) -> dict:
    if not reasoning:
        return message
    roll = rng.random()
    thought = writer.text(8, empty=0.15)
    if roll < 0.35:
        message["reasoning_content"] = rng.choice([thought, "\n" + thought + "\n", ""])
        notes.append("reasoning_content")
    elif roll < 0.5 and isinstance(message.get("content"), str):
        message["content"] = f"<think>\n{thought}\n</think>\n\n{message['content']}"
        notes.append("inline think")
    return message


# --- the official rendering ------------------------------------------------------------------


@dataclass
class Official:
    """An official Jinja template rendered by transformers with ``tokenizer``.

    ``kwargs`` are passed to the template (``enable_thinking``, a ``bos_token``);
    ``prepare`` turns tuneforge's input into the official template's (Qwen2.5's
    template wants tool-call arguments as objects: a JSON string would be written
    twice encoded, so it is read first, as transformers documents and vLLM does).
    """

    tokenizer: Any
    template: str
    kwargs: dict = field(default_factory=dict)
    prepare: Callable[[list[dict]], list[dict]] | None = None

    def render(self, messages: Sequence[Mapping], tools=None, add_generation_prompt: bool = False, **kwargs) -> str:
        messages = [dict(m) for m in messages]
        if self.prepare is not None:
            messages = self.prepare(messages)
        return self.tokenizer.apply_chat_template(
            messages, tools=tools or None, chat_template=self.template, tokenize=False,
            add_generation_prompt=add_generation_prompt, **{**self.kwargs, **kwargs},
        )

    def with_kwargs(self, **kwargs) -> "Official":
        return Official(self.tokenizer, self.template, {**self.kwargs, **kwargs}, self.prepare)


def arguments_as_objects(messages: list[dict]) -> list[dict]:
    """Tool-call arguments given as JSON strings, read into objects (the input shape of templates that ``| tojson`` them)."""
    out = []
    for message in messages:
        if message.get("tool_calls"):
            calls = []
            for call in message["tool_calls"]:
                function = dict(call.get("function", call))
                if isinstance(function.get("arguments"), str):
                    function["arguments"] = json.loads(function["arguments"])
                calls.append({**call, "function": function})
            message = {**message, "tool_calls": calls}
        out.append(message)
    return out


def _generation_prompt(official: Official, messages, tools) -> str:
    plain = official.render(messages, tools)
    prompted = official.render(messages, tools, add_generation_prompt=True)
    assert prompted.startswith(plain), "the official generation prompt does not extend the rendering"
    return prompted[len(plain):]


def official_learned_spans(official: Official, messages: Sequence[Mapping], tools=None, *, header: Official | None = None) -> list[tuple[int, int]]:
    """The character spans of the official rendering a model learns: each assistant turn after the generation prompt.

    ``header`` renders the plain generation prompt (the role header) when ``official``'s
    own ends with more (Qwen3 with thinking off ends it with an empty ``<think>`` block,
    which a turn that keeps its reasoning does not start with).
    """
    messages = [dict(m) for m in messages]
    full = official.render(messages, tools)
    system = {"role": "system", "content": ""}
    probe = [{"role": "user", "content": "x"}]
    system_turn = official.render(probe + [system]).removeprefix(official.render(probe))
    spans = []
    for i, message in enumerate(messages):
        if message.get("role") != "assistant":
            continue
        context = messages[:i] or probe
        prompts = [_generation_prompt(official, context, tools)]
        if header is not None:
            prompts.append(_generation_prompt(header, context, tools))
        role_header = min(prompts, key=len)
        swapped = official.render(messages[:i] + [system] + messages[i + 1:], tools)
        common = 0
        limit = min(len(full), len(swapped))
        while common < limit and full[common] == swapped[common]:
            common += 1
        for start in range(common, -1, -1):
            if not (full.startswith(role_header, start) and swapped.startswith(system_turn, start)):
                continue
            rest = swapped[start + len(system_turn):]
            if full.endswith(rest) and len(full) - len(rest) > start:
                turn = full[start: len(full) - len(rest)]
                break
        else:
            raise AssertionError(f"message {i + 1} (assistant) could not be located in the official rendering")
        prompt = max((p for p in prompts if turn.startswith(p)), key=len)
        spans.append((start + len(prompt), start + len(turn.rstrip("\n"))))
    return spans


def expected_labels(tokenizer, text: str, spans: Sequence[tuple[int, int]]) -> tuple[list[int], list[int]]:
    """The ids of ``text`` and their labels: a token is learned when it overlaps a learned character."""
    learned = [False] * (len(text) + 1)
    for start, end in spans:
        for position in range(start, end):
            learned[position] = True
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids = list(encoded["input_ids"])
    labels = []
    for token, (start, end) in zip(ids, encoded["offset_mapping"]):
        labels.append(token if any(learned[start:max(end, start + 1)]) else IGNORE_INDEX)
    return ids, labels


# --- the comparison --------------------------------------------------------------------------


def _prompts(messages: Sequence[Mapping]) -> list[list[dict]]:
    """Every prompt a conversation holds: the prefixes that end before an assistant turn, and the whole when it ends with none."""
    prefixes = [list(messages[:i]) for i, m in enumerate(messages) if m.get("role") == "assistant" and i]
    if messages and messages[-1].get("role") != "assistant":
        prefixes.append(list(messages))
    return prefixes


def check_against_official(
    template,
    official: Official,
    conversation: Conversation,
    *,
    options: Mapping[str, Any] | None = None,
    encode: bool = True,
    header: Official | None = None,
    learned: Callable[[str, list[tuple[int, int]]], list[tuple[int, int]]] | None = None,
) -> str:
    """Assert ``template`` renders ``conversation`` as ``official`` does (text, ids, and with ``encode`` the loss mask).

    ``options`` are the template's keyword options for this comparison (``enable_thinking``);
    ``encode=False`` when the template's own default differs from them (``encode`` takes
    none). ``learned(text, spans)`` narrows the official spans for a template that learns
    less (Qwen3 answer-only). Returns "raises" or "renders", for counting.
    """
    from tuneforge.api import TemplateError

    import pytest

    options = dict(options or {})
    messages, tools = conversation.messages, conversation.tools
    try:
        expected = official.render(messages, tools)
    except Exception as exc:  # jinja and Python errors from inside the template
        with pytest.raises(TemplateError) as raised:
            template.text(messages, tools, **options)
        sentence = str(raised.value)
        assert sentence.endswith(".") and sentence.count(". ") == 0, f"not one sentence: {sentence!r}"
        return f"raises ({type(exc).__name__})"
    where = repr(conversation)
    assert template.text(messages, tools, **options) == expected, where
    assert template.text(messages, tools, add_generation_prompt=True, **options) == official.render(messages, tools, add_generation_prompt=True), where
    tokenizer = official.tokenizer
    for prefix in _prompts(messages):
        prompt = official.render(prefix, tools, add_generation_prompt=True)
        assert template.prompt(prefix, tools, **options) == tokenizer(prompt, add_special_tokens=False)["input_ids"], f"prompt of {len(prefix)} messages of {where}"
    if encode:
        spans = official_learned_spans(official, messages, tools, header=header)
        if learned is not None:
            spans = learned(expected, spans)
        ids, labels = expected_labels(tokenizer, expected, spans)
        encoded = template.encode(messages, tools=tools)
        assert encoded.input_ids == ids, where
        if encoded.labels != labels:
            differ = next(k for k, (a, b) in enumerate(zip(encoded.labels, labels)) if a != b)
            shown = tokenizer.decode(ids[max(0, differ - 8): differ + 8])
            raise AssertionError(f"loss mask differs at token {differ} ({shown!r}; tuneforge learns it: {encoded.labels[differ] != IGNORE_INDEX}) in {where}")
    return "renders"


def without_think_blocks(text: str, spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Official spans without the ``<think>\\n...\\n</think>\\n\\n`` block a turn opens with (a template that learns the answers only)."""
    out = []
    for start, end in spans:
        closing = text.find("\n</think>\n\n", start, end)
        if text.startswith("<think>\n", start) and closing >= 0:
            start = closing + len("\n</think>\n\n")
        out.append((start, end))
    return out


# --- saved tokenizers ------------------------------------------------------------------------

_WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather of a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
PROBES = [
    Conversation([{"role": "user", "content": "Hi"}], notes=["one question"]),
    Conversation([
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Two plus two?"},
        {"role": "assistant", "content": "Four."},
        {"role": "user", "content": "And three plus three?"},
    ], notes=["system", "multi-turn"]),
    Conversation([
        {"role": "user", "content": "Weather in Wien?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": {"city": "Wien"}}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "18 °C"},
        {"role": "assistant", "content": "18 °C in Wien."},
        {"role": "user", "content": "Danke!"},
    ], [_WEATHER], notes=["tools"]),
    Conversation([
        {"role": "user", "content": "2+2?"},
        {"role": "assistant", "reasoning_content": "Two and two.", "content": "4"},
        {"role": "user", "content": "3+3?"},
    ], notes=["reasoning"]),
]


def check_saved_tokenizer(directory, template, conversations: Sequence[Conversation] = PROBES, **kwargs) -> None:
    """Assert the tokenizer saved in ``directory``, loaded with plain transformers, renders as ``template`` does.

    For each conversation, ``apply_chat_template`` with the saved chat template gives
    ``template.text`` with and without the generation prompt, and the ids of
    ``template.prompt``. ``kwargs`` go to both (``enable_thinking``).
    """
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(directory), trust_remote_code=False)
    assert tokenizer.chat_template, f"the tokenizer saved in {directory} has no chat template"
    for conversation in conversations:
        messages, tools = conversation.messages, conversation.tools
        for prompted in (False, True):
            rendered = tokenizer.apply_chat_template(messages, tools=tools, tokenize=False, add_generation_prompt=prompted, **kwargs)
            assert rendered == template.text(messages, tools, add_generation_prompt=prompted, **kwargs), f"{conversation!r} (generation prompt: {prompted})"
        ids = tokenizer.apply_chat_template(messages, tools=tools, tokenize=True, add_generation_prompt=True, return_dict=False, **kwargs)
        assert list(ids) == list(template.prompt(messages, tools, **kwargs)), repr(conversation)
