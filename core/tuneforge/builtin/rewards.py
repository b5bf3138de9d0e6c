"""Built-in reward functions (an internal plugin): tool-call checks shared with ``tuneforge eval``, format and length.

``json_valid``, ``action_match``, ``action_f1`` and ``argument_f1`` are per-sample judgements of
``tuneforge.toolcalls`` (the same code that scores tool-calling datasets in ``tuneforge eval``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

from tuneforge import hookimpl
from tuneforge.errors import TuneforgeError
from tuneforge.options import option
from tuneforge.records import RewardFunction

# Only tool-call blocks, or plain text with no markup.
DEFAULT_FORMAT = r"(?:\s*<tool_call>\s*\{.*?\}\s*</tool_call>)+\s*|[^<>{}]+"


@dataclass
class FormatRewardOptions:
    reward_format_pattern: str = option(
        DEFAULT_FORMAT,
        "The regular expression the whole answer must match for the format reward (Python syntax, '.' matches newlines).",
        group="reward",
    )

    def __post_init__(self):
        try:
            re.compile(self.reward_format_pattern, re.DOTALL)
        except re.error as exc:
            raise TuneforgeError(
                f"--reward-format-pattern {self.reward_format_pattern!r} is not a regular expression ({exc}); fix the pattern."
            ) from None


@dataclass
class LengthPenaltyOptions:
    reward_length_limit: int = option(
        300, "Characters an answer may have before the length penalty starts (it reaches -1 at twice as many).", group="reward"
    )

    def __post_init__(self):
        if self.reward_length_limit < 1:
            raise TuneforgeError(f"--reward-length-limit is {self.reward_length_limit}; give a positive number of characters.")


def _judge(row, completion):
    from tuneforge.toolcalls import judge

    return judge(row, completion)


def _json_valid(row, completion) -> float:
    return float(_judge(row, completion).valid_json)


def _action_match(row, completion) -> float:
    return float(_judge(row, completion).action_match)


def _argument_f1(row, completion) -> float:
    return _judge(row, completion).argument_f1


def _action_f1(row, completion) -> float:
    from tuneforge.toolcalls import action_f1, read_answer, reference_of

    read = read_answer(completion)
    if read.unreadable and not read.calls:
        return 0.0  # a call attempt that could not be read is not a refusal
    return action_f1(read.calls, reference_of(row))


@lru_cache(maxsize=16)
def _compiled(pattern: str) -> "re.Pattern[str]":
    return re.compile(pattern, re.DOTALL)


def _format(row, completion, options: FormatRewardOptions) -> float:
    from tuneforge.toolcalls import read_answer

    return float(_compiled(options.reward_format_pattern).fullmatch(read_answer(completion).text.strip()) is not None)


def _length_penalty(row, completion, options: LengthPenaltyOptions) -> float:
    from tuneforge.toolcalls import read_answer

    limit = options.reward_length_limit
    over = min(1.0, max(0, len(read_answer(completion).text) - limit) / limit)
    return -over if over else 0.0


@hookimpl
def tuneforge_reward_functions():
    yield RewardFunction(
        name="json_valid",
        description="1 when every call reads as JSON and fits the row's tool schema (and calls are made where the row expects them)",
        score=_json_valid,
    )
    yield RewardFunction(
        name="action_match",
        description="1 when the called tools are exactly the reference's (none, for a command to refuse)",
        score=_action_match,
    )
    yield RewardFunction(
        name="action_f1",
        description="F1 of the called tools against the reference's (one right tool of two scores 2/3; 1 for a refusal where one is expected)",
        score=_action_f1,
    )
    yield RewardFunction(
        name="argument_f1",
        description="F1 of (tool, argument, value) between the calls and the reference's",
        score=_argument_f1,
    )
    yield RewardFunction(
        name="format",
        description="1 when the whole answer matches --reward-format-pattern (default: only tool-call blocks, or plain text)",
        score=_format,
        options=FormatRewardOptions,
    )
    yield RewardFunction(
        name="length_penalty",
        description="0 up to --reward-length-limit characters, then down to -1 at twice the limit",
        score=_length_penalty,
        options=LengthPenaltyOptions,
    )
