"""Preference data: load, convert, validate, split and tokenize with the model's chat template.

The core reads the files and detects the format of each row (``kind="preference"``);
here each example is checked, then encoded with the run's chat template exactly as
SFT encodes a conversation. The prompt is everything before the final answer; the
answer is the template's learned span of that last assistant turn (its text and
end-of-turn marker), so the loss falls on the responses only and chosen and rejected
share one prompt, token for token.
"""

from __future__ import annotations

import hashlib
from array import array
from typing import Any, Sequence

from tuneforge.api import (
    IGNORE_INDEX,
    TRUNCATION_POLICIES,
    Converted,
    DataError,
    DataSummary,
    LengthBound,
    TokenStats,
    TuneforgeError,
    add_system_prompt,
    brief,
    check_message_fields,
    check_tools,
    load_examples,
    validate_conversation,
)

from .formats import is_pair


def _check_answer(messages: Any, key: str) -> None:
    if not isinstance(messages, list) or len(messages) != 1:
        count = len(messages) if isinstance(messages, list) else 0
        raise DataError(f"'{key}' holds {count} messages; it must be exactly one assistant answer")
    message = messages[0]
    if message.get("role") != "assistant":
        raise DataError(f"'{key}' is a {brief(message.get('role'))} message; it must be an assistant answer")
    content = message.get("content")
    if content is not None and not isinstance(content, str):
        raise DataError(f"'{key}' has content of type {type(content).__name__}; it must be text")
    check_message_fields(message, f"'{key}'")
    if not (isinstance(content, str) and content.strip()) and not message.get("tool_calls"):
        raise DataError(f"'{key}' is empty; give the answer text or remove the row")


def validate_example(example: dict, *, paired: bool, method: str, system: str | None = None) -> list[dict]:
    """Check one converted example; returns the examples to train on (a pair unpaired for KTO)."""
    if not isinstance(example.get("prompt"), list):
        raise DataError("the dataset format produced no 'prompt' message list; fix the format plugin")
    prompt = validate_conversation(add_system_prompt({"messages": example["prompt"]}, system), training=False)["messages"]
    if prompt[-1]["role"] not in ("user", "tool"):
        raise DataError(
            f"the prompt ends with a {prompt[-1]['role']} message; it must end with the user's turn that the answers reply to"
        )
    if is_pair(example):
        _check_answer(example["chosen"], "chosen")
        _check_answer(example["rejected"], "rejected")
        if example["chosen"][0].get("content") == example["rejected"][0].get("content"):
            raise DataError("the chosen and rejected answers are the same text; a pair must differ to teach a preference")
        tools = check_tools(example.get("tools"))
        common = {"prompt": prompt, **({"tools": tools} if tools else {})}
        if paired:
            return [{**common, "chosen": example["chosen"], "rejected": example["rejected"]}]
        return [
            {**common, "completion": example["chosen"], "label": True},
            {**common, "completion": example["rejected"], "label": False},
        ]
    if "completion" not in example or "label" not in example:
        raise DataError("the example has neither chosen/rejected answers nor a completion with a label; fix the format plugin")
    if paired:
        raise DataError(
            f"the row is an unpaired example (prompt, completion, label), but --method {method} needs a chosen and a "
            f"rejected answer per prompt; use --method kto for unpaired data"
        )
    _check_answer(example["completion"], "completion")
    return [{"prompt": prompt, "completion": example["completion"], "label": bool(example["label"])}]


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def encode_answer(template, prompt: list[dict], answer: list[dict], tools=None) -> tuple[list[int], int, int]:
    """Ids of prompt + answer and the [start, end) of the answer's learned tokens (the final assistant turn)."""
    encoded = template.encode(prompt + answer, tools=tools)
    labels = encoded.labels
    end = len(labels)
    while end > 0 and labels[end - 1] == IGNORE_INDEX:
        end -= 1
    start = end
    while start > 0 and labels[start - 1] != IGNORE_INDEX:
        start -= 1
    return list(encoded.input_ids), start, end


def _fit(prompt: list[int], answers: list[list[int]], max_length: int, truncation: str):
    """Apply the length policy to a prompt and its answer(s); None drops the example."""
    longest = max(len(a) for a in answers)
    if len(prompt) + longest <= max_length:
        return prompt, answers
    if truncation == "left" and longest < max_length:  # keep the end of the prompt, the turn being answered
        return prompt[len(prompt) + longest - max_length:], answers
    if truncation == "right" and len(prompt) < max_length:
        room = max_length - len(prompt)
        return prompt, [a[:room] for a in answers]
    return None


def tokenize_examples(examples: Sequence[Converted], template, *, max_length: int, truncation: str = "drop") -> tuple[list[dict], TokenStats]:
    """Encode pairs as ``prompt_ids/chosen_ids/rejected_ids`` and unpaired examples as ``prompt_ids/completion_ids/label``."""
    if max_length < 1:
        raise DataError(f"--max-length is {max_length}; give a positive number of tokens.")
    if truncation not in TRUNCATION_POLICIES:
        raise DataError(f"--truncation is '{truncation}'; choose one of {', '.join(TRUNCATION_POLICIES)}.")
    stats = TokenStats(conversations=len(examples))
    samples: list[dict] = []
    # A sample ends at its answer's learned span; the slack covers the template's tokens after it.
    bound = LengthBound(template, max_length, slack=16) if truncation == "drop" else None
    for example in examples:
        data = example.data
        answer_keys = ("chosen", "rejected") if is_pair(data) else ("completion",)
        if bound is not None and any(bound.surely_over(data["prompt"] + data[key], data.get("tools")) for key in answer_keys):
            stats.dropped_too_long += 1
            continue
        try:
            encoded = [encode_answer(template, data["prompt"], data[key], data.get("tools")) for key in answer_keys]
        except TuneforgeError as exc:
            raise DataError(f"{example.where}: {exc}") from None
        if any(end == start for _, start, end in encoded):
            stats.dropped_no_learned += 1
            continue
        prompt_length = min(start for _, start, _ in encoded)
        if len(encoded) == 2:  # a token merged across the boundary: the prompt is what both share
            prompt_length = min(prompt_length, _common_prefix(encoded[0][0], encoded[1][0]))
        prompt = encoded[0][0][:prompt_length]
        answers = [ids[prompt_length:end] for ids, _, end in encoded]
        stats.longest = max(stats.longest, len(prompt) + max(len(a) for a in answers))
        fitted = _fit(prompt, answers, max_length, truncation)
        if fitted is None:
            stats.dropped_too_long += 1
            continue
        if fitted[0] is not prompt or fitted[1] is not answers:
            stats.truncated += 1
        prompt, answers = fitted
        stats.samples += 1
        stats.tokens += len(prompt) * len(answers) + sum(len(a) for a in answers)
        stats.learned_tokens += sum(len(a) for a in answers)
        if len(answers) == 2:
            samples.append({"prompt_ids": prompt, "chosen_ids": answers[0], "rejected_ids": answers[1]})
        else:
            samples.append({"prompt_ids": prompt, "completion_ids": answers[0], "label": bool(data["label"])})
    return samples, stats


def fingerprint(samples: Sequence[dict]) -> str:
    """sha256 over the tokenized examples, independent of their order."""
    digests = []
    for sample in samples:
        h = hashlib.sha256()
        for key in ("prompt_ids", "chosen_ids", "rejected_ids", "completion_ids"):
            if key in sample:
                h.update(key.encode() + b"|" + array("q", sample[key]).tobytes())
        if "label" in sample:
            h.update(b"label|" + str(sample["label"]).encode())
        digests.append(h.digest())
    total = hashlib.sha256()
    for digest in sorted(digests):
        total.update(digest)
    return total.hexdigest()


def prepare_preference_data(config, tokenizer, template, *, paired: bool, method: str) -> tuple[list[dict], list[dict] | None, DataSummary]:
    """Load, convert, validate, split (the core's ``load_examples``) and tokenize the preference data of ``config``.

    Every row is converted and checked before anything is tokenized, so a bad row
    fails the run in seconds with its file and line (or is skipped and counted with
    ``--skip-bad-rows``).
    """
    train_rows, eval_rows, summary = load_examples(
        config,
        template,
        kind="preference",
        check=lambda data: validate_example(data, paired=paired, method=method, system=config.system),
        noun="preference",
    )
    options = dict(max_length=config.max_length, truncation=config.truncation)
    train, summary.train = tokenize_examples(train_rows, template, **options)
    if not train:
        raise DataError(
            f"Every training example was dropped ({summary.train.dropped_too_long} over --max-length {config.max_length}, "
            f"{summary.train.dropped_no_learned} with no answer token to learn); raise --max-length or pass --truncation left."
        )
    evaluation = None
    if eval_rows is not None:
        evaluation, summary.eval = tokenize_examples(eval_rows, template, **options)
        if not evaluation:
            raise DataError(f"Every validation example was dropped (over --max-length {config.max_length}); raise --max-length.")
    if not paired and len({sample["label"] for sample in train}) < 2:
        raise DataError(
            "The KTO training data holds only "
            f"{'desirable' if train[0]['label'] else 'undesirable'} answers; KTO needs both kinds (label true and false)."
        )
    summary.fingerprint = fingerprint(train)
    return train, evaluation, summary
