"""Conversations to training samples: template, loss mask, length policy."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from ..errors import DataError, TuneforgeError
from ..templates import IGNORE_INDEX, Encoded
from ..messages import refuse_parts, template_label, template_modalities
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
    longest: int = 0  # tokens of the longest conversation tokenized, before truncation


# The probe a tokenizer's pre-tokenizer must give back whole for the length bound to apply.
_PROBE = "a  b\n\n\tc,  d!  \u00e9 \u3042 "


def _keeps_every_character(tokenizer) -> bool:
    """Whether no step before the vocabulary drops characters (byte-level BPE and SentencePiece keep all).

    A whitespace-splitting pre-tokenizer drops spaces and an added token that strips
    its neighbours swallows them; with either, a long text may be few tokens.
    """
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return False
    added = getattr(tokenizer, "added_tokens_decoder", {}) or {}
    if any(getattr(token, "lstrip", False) or getattr(token, "rstrip", False) for token in added.values()):
        return False
    text = backend.normalizer.normalize_str(_PROBE) if backend.normalizer is not None else _PROBE
    if backend.pre_tokenizer is None:
        return True
    pieces = backend.pre_tokenizer.pre_tokenize_str(text)
    covered = sorted(offsets for _, offsets in pieces)
    return bool(covered) and covered[0][0] == 0 and covered[-1][1] == len(text) and all(
        a[1] == b[0] for a, b in zip(covered, covered[1:])
    )


def _rough_chars(messages: Sequence[Mapping], tools: Any) -> int:
    """About how many characters a conversation renders to, without rendering it."""
    total = 0
    for message in messages:
        content = message.get("content")
        total += len(content) if isinstance(content, str) else 0
        if message.get("tool_calls"):
            total += len(json.dumps(message["tool_calls"], default=str))
    return total + (len(json.dumps(tools, default=str)) if tools else 0)


class LengthBound:
    """Tells, without tokenizing, that a conversation surely has more than ``max_length`` tokens.

    No token covers more characters than the longest entry of the vocabulary
    (special tokens included; byte-level entries count bytes, never fewer than
    characters). So when a conversation's rendered and normalized text is longer
    than that many characters times ``max_length + slack``, it has more than
    ``max_length + slack`` tokens, and a run that drops over-long samples can drop it
    unread: a 50 MB row costs its text, not gigabytes of token lists. Only
    tokenizers that keep every character (see ``_keeps_every_character``) and
    templates with a ``text`` rendering get the shortcut; the rest tokenize as before.
    ``slack`` covers tokens after the learned answer that a sample leaves out.
    """

    def __init__(self, template: Any, max_length: int, slack: int = 0) -> None:
        self.template = template
        self.max_length = max_length
        self.slack = slack
        self._limit: int | None | bool = False  # False: not computed yet; None: no shortcut

    @property
    def chars_limit(self) -> int | None:
        if self._limit is False:
            tokenizer = getattr(self.template, "tokenizer", None)
            limit = None
            if tokenizer is not None and callable(getattr(self.template, "text", None)) and _keeps_every_character(tokenizer):
                vocabulary = list(tokenizer.get_vocab())
                vocabulary += [getattr(t, "content", str(t)) for t in (getattr(tokenizer, "added_tokens_decoder", {}) or {}).values()]
                longest = max((len(token) for token in vocabulary), default=0)
                limit = longest * (self.max_length + self.slack) if longest else None
            self._limit = limit
        return self._limit

    def surely_over(self, messages: Sequence[Mapping], tools: Any = None) -> bool:
        rough = _rough_chars(messages, tools)
        if rough <= self.max_length:  # most rows: no need to know the limit
            return False
        limit = self.chars_limit
        if limit is None or rough <= limit:
            return False
        try:
            text = self.template.text(list(messages), tools)
        except TuneforgeError:
            return False  # encoding the conversation reports the problem
        normalizer = self.template.tokenizer.backend_tokenizer.normalizer
        return len(normalizer.normalize_str(text) if normalizer is not None else text) > limit


def fit_length(encoded: Encoded, max_length: int, truncation: str) -> Encoded | None:
    """Apply the length policy: None (drop), or the ids cut from the left or the right.

    Cutting from the left keeps the end of the conversation, the final answer.
    """
    if len(encoded.input_ids) <= max_length:
        return encoded
    if truncation == "drop":
        return None
    if truncation == "left":
        return Encoded(encoded.input_ids[-max_length:], encoded.labels[-max_length:], encoded.extras)
    if truncation == "right":
        return Encoded(encoded.input_ids[:max_length], encoded.labels[:max_length], encoded.extras)
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
    bound = LengthBound(template, max_length) if truncation == "drop" else None
    accepted = template_modalities(template)
    for conversation in _progress(conversations):
        if bound is not None and bound.surely_over(conversation.messages, conversation.tools):
            stats.dropped_too_long += 1
            continue
        try:
            refuse_parts(conversation.messages, accepted, template_label(template))
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
        sample = {"input_ids": fitted.input_ids, "labels": fitted.labels}
        if fitted.extras:
            sample["extras"] = fitted.extras
        samples.append(sample)
    return samples, stats


def _progress(items: Sequence):
    if len(items) < 2000:
        return items
    from tqdm.auto import tqdm

    # Every process of a run tokenizes its data; only the main one shows it.
    return tqdm(items, desc="tokenizing", unit="rows", disable=int(os.environ.get("RANK", "0")) != 0)
