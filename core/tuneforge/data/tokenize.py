"""Conversations to training samples: template, loss mask, length policy."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

from ..errors import DataError, TuneforgeError
from ..templates import IGNORE_INDEX, Encoded
from .convert import Converted

TRUNCATION_POLICIES = ("drop", "left", "right")


@dataclass
class TokenStats:
    """What tokenization did to one split."""

    conversations: int = 0
    samples: int = 0
    tokens: int = 0
    learned_tokens: int = 0
    truncated: int = 0
    dropped_too_long: int = 0
    dropped_no_learned: int = 0
    longest: int = 0  # tokens of the longest conversation, before truncation


def fit_length(encoded: Encoded, max_length: int, truncation: str) -> Encoded | None:
    """Apply the length policy: None (drop), or the ids cut from the left or the right.

    Cutting from the left keeps the end of the conversation, the final answer.
    """
    if len(encoded.input_ids) <= max_length:
        return encoded
    if truncation == "drop":
        return None
    if truncation == "left":
        return Encoded(encoded.input_ids[-max_length:], encoded.labels[-max_length:])
    if truncation == "right":
        return Encoded(encoded.input_ids[:max_length], encoded.labels[:max_length])
    raise DataError(f"Truncation policy '{truncation}' is unknown; choose one of {', '.join(TRUNCATION_POLICIES)}.")


def tokenize_conversations(
    conversations: Sequence[Converted],
    template: Any,
    *,
    max_length: int,
    truncation: str = "drop",
    train_on_prompt: bool = False,
) -> tuple[list[dict], TokenStats]:
    """Encode each conversation; over-long samples and samples with nothing to learn are dropped and counted."""
    if max_length < 1:
        raise DataError(f"--max-length is {max_length}; give a positive number of tokens.")
    if truncation not in TRUNCATION_POLICIES:
        raise DataError(f"--truncation is '{truncation}'; choose one of {', '.join(TRUNCATION_POLICIES)}.")
    stats = TokenStats(conversations=len(conversations))
    samples: list[dict] = []
    for conversation in _progress(conversations):
        try:
            encoded = template.encode(conversation.messages, tools=conversation.tools, train_on_prompt=train_on_prompt)
        except TuneforgeError as exc:
            raise DataError(f"{conversation.where}: {exc}") from None
        stats.longest = max(stats.longest, len(encoded.input_ids))
        fitted = fit_length(encoded, max_length, truncation)
        if fitted is None:
            stats.dropped_too_long += 1
            continue
        if fitted is not encoded:
            stats.truncated += 1
        # the first label of a sample is never predicted (nothing comes before it)
        learned = sum(1 for label in fitted.labels[1:] if label != IGNORE_INDEX)
        if learned == 0:
            stats.dropped_no_learned += 1
            continue
        stats.samples += 1
        stats.tokens += len(fitted.input_ids)
        stats.learned_tokens += learned
        samples.append({"input_ids": fitted.input_ids, "labels": fitted.labels})
    return samples, stats


def _progress(items: Sequence):
    if len(items) < 2000:
        return items
    from tqdm.auto import tqdm

    return tqdm(items, desc="tokenizing", unit="rows")
