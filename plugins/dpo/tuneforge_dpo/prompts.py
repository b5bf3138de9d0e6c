"""Prompt data for GRPO: the prompts a policy answers, each with the row its rewards read.

A row is either OpenAI ``messages`` (with ``tools`` where it has them), or a
``prompt`` (text or messages, with an optional ``system``). A ``messages`` row that
ends with assistant answers (a tool-calling dataset such as ``device-actions``) is
cut before them: the model is shown everything up to the last user or tool turn, and
the rewards see the whole row, reference answer included (``action_match`` compares
the calls with it). Every key of the row (``meta``, an expected ``answer`` ...) reaches
the reward functions unchanged.

The prompt is encoded by the run's chat template with its generation prompt (the
tools rendered as the template renders them), so the policy samples from exactly what
``tuneforge infer`` would send.
"""

from __future__ import annotations

import hashlib
import json
from array import array
from typing import Any, Mapping, Sequence

from tuneforge.api import (
    TRUNCATION_POLICIES,
    Converted,
    DataError,
    DataSummary,
    TokenStats,
    TuneforgeError,
    add_system_prompt,
    brief,
    check_tools,
    drops_tools,
    load_examples,
    validate_conversation,
)

from .formats import _messages, _parsed

PROMPT = "prompt"  # the kind of dataset format GRPO reads


def convert_messages(row: Mapping[str, Any]) -> dict:
    messages = _parsed(row["messages"], "messages")
    if not isinstance(messages, list) or not messages:
        raise DataError(f"the 'messages' value is {brief(messages)}; give a list of messages")
    return {"messages": messages, "tools": _parsed(row.get("tools"), "tools"), "row": dict(row)}


def convert_prompt(row: Mapping[str, Any]) -> dict:
    messages = _messages(row["prompt"], "prompt", "user")
    system = row.get("system")
    if isinstance(system, str) and system.strip() and messages[0].get("role") != "system":
        messages = [{"role": "system", "content": system}, *messages]
    return {"messages": messages, "tools": _parsed(row.get("tools"), "tools"), "row": dict(row)}


def split_prompt(data: dict, system: str | None = None) -> dict:
    """The conversation up to its last user or tool turn (checked), its tools, and the whole row for the rewards."""
    messages = list(data["messages"])
    end = len(messages)
    while end > 0 and messages[end - 1].get("role") == "assistant":
        end -= 1
    if end == 0:
        raise DataError("the row has no user turn to answer; give a conversation that has one")
    prompt = validate_conversation(add_system_prompt({"messages": messages[:end]}, system), training=False)["messages"]
    if any(isinstance(m.get("content"), list) and any(part.get("type") != "text" for part in m["content"]) for m in prompt):
        raise DataError("the prompt has image, audio or video parts; --method grpo samples from text prompts, so give text")
    if prompt[-1]["role"] not in ("user", "tool"):
        raise DataError(f"the prompt ends with a {prompt[-1]['role']} message; it must end with the turn to answer")
    tools = check_tools(data.get("tools"))
    return {"prompt": prompt, "tools": tools or None, "row": data["row"]}


def _json(value: Any, sort_keys: bool = False) -> str:
    return json.dumps(value, ensure_ascii=False, sort_keys=sort_keys, default=lambda v: v.tolist() if hasattr(v, "tolist") else str(v))


def _row_json(row: Mapping[str, Any]) -> str:
    """The row as JSON (a dataset column: Arrow cannot hold rows whose tools differ in shape)."""
    return _json(row, sort_keys=True)


def check_renders_tools(examples: Sequence[Converted], template) -> None:
    """Refuse a template that renders a tool list as nothing, when the rows have tools.

    A checkpoint's own chat template may ignore ``tools`` (SmolLM2's does): the policy would
    be asked to call tools it is never shown, and every tool-call reward would score noise.
    """
    example = next((e for e in examples if e.data["tools"]), None)
    if example is None:
        return
    data = example.data
    if drops_tools(template, data["prompt"], data["tools"]):
        name = getattr(template, "name", type(template).__name__)
        raise TuneforgeError(
            f"The chat template '{name}' renders no tools, but the prompts of {example.where} on have 'tools'; "
            f"pass --template with one that renders them (chatml, qwen2_5, llama3 ...: `tuneforge list templates`)."
        )


def encode_prompts(examples: Sequence[Converted], template, *, max_length: int, completion_length: int, truncation: str):
    """Each prompt's ids (with the generation prompt) and its row; prompts with no room to answer are dropped or cut."""
    if truncation not in TRUNCATION_POLICIES:
        raise DataError(f"--truncation is '{truncation}'; choose one of {', '.join(TRUNCATION_POLICIES)}.")
    room = max_length - completion_length
    if room < 1:
        raise TuneforgeError(
            f"--max-length {max_length} leaves no room for a prompt beside --max-completion-length {completion_length}; "
            f"raise --max-length above {completion_length}."
        )
    check_renders_tools(examples, template)
    stats = TokenStats(conversations=len(examples))
    samples = []
    for example in examples:
        data = example.data
        try:
            ids = list(template.prompt(data["prompt"], tools=data["tools"]))
        except TuneforgeError as exc:
            raise DataError(f"{example.where}: {exc}") from None
        full = ids
        stats.longest = max(stats.longest, len(ids) + completion_length)
        if len(ids) > room:
            if truncation != "left":  # cutting the end of a prompt would cut the turn being answered
                stats.dropped_too_long += 1
                continue
            ids = ids[len(ids) - room:]
            stats.truncated += 1
        stats.samples += 1
        stats.tokens += len(ids)
        # what renders the prompt again (a rollout engine's request); a prompt cut on the left has nothing that does
        # (in its own key order: a tool schema's keys, reordered, would render another prompt)
        conversation = None if len(ids) < len(full) else _json({"messages": data["prompt"], "tools": data["tools"]})
        samples.append({"prompt_ids": ids, "row": _row_json(data["row"]), "conversation": conversation})
    return samples, stats


def fingerprint(samples: Sequence[dict]) -> str:
    """sha256 over the prompts' ids and rows, independent of their order."""
    digests = []
    for sample in samples:
        h = hashlib.sha256(array("q", sample["prompt_ids"]).tobytes())
        h.update(sample["row"].encode())
        digests.append(h.digest())
    total = hashlib.sha256()
    for digest in sorted(digests):
        total.update(digest)
    return total.hexdigest()


def prepare_prompt_data(config, template) -> tuple[list[dict], None, DataSummary]:
    """Load, convert, check and encode the prompts of ``config`` (bad rows fail with file and line, or are skipped)."""
    train_rows, _, summary = load_examples(
        config, template, kind=PROMPT, check=lambda data: [split_prompt(data, config.system)], noun="prompt"
    )
    train, summary.train = encode_prompts(
        train_rows, template, max_length=config.max_length, completion_length=config.max_completion_length,
        truncation=config.truncation,
    )
    if not train:
        raise DataError(
            f"Every prompt was dropped ({summary.train.dropped_too_long} leave no room for --max-completion-length "
            f"{config.max_completion_length} within --max-length {config.max_length}); raise --max-length or pass --truncation left."
        )
    summary.fingerprint = fingerprint(train)
    return train, None, summary
