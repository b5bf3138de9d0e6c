"""The selected reward functions as trl's reward callables: one per function, so each is logged on its own.

trl calls each reward callable with the batch's prompts, its completions and the
dataset's other columns repeated per completion; the ``row`` column holds each
prompt's whole row (as JSON), so a completion is scored against its own row (its
tools, its reference answer, its ``meta``). trl weighs and sums the callables
(``reward_weights``), normalises within each group of answers to one prompt, and logs
``rewards/NAME/mean`` and the weighted ``reward``.

A reward function that raises (or returns no finite number) counts 0 for that sample,
as ``Rewards`` does; the count goes into the log (``reward_failures/NAME``) and the
run record, and the first reason of each function is logged once. The run goes on.
"""

from __future__ import annotations

import json
from typing import Any, Callable

from tuneforge.api import AnswerText, Rewards, TuneforgeError, combine_rewards, first_stop


def parse_reward_options(items: list[str]) -> dict[str, str]:
    """``KEY=VALUE`` items as a mapping (the reward records' option dataclasses check and convert the values)."""
    options = {}
    for item in items:
        key, sep, value = str(item).partition("=")
        if not sep or not key.strip():
            raise TuneforgeError(
                f"--reward-option '{item}' is not KEY=VALUE; write it as, for example, reward_length_limit=200."
            )
        options[key.strip()] = value.strip()
    return options


def select(config) -> Rewards:
    """The run's rewards, checked (names, weights, files, options) before anything loads."""
    return combine_rewards(config.reward, files=config.reward_file, options=parse_reward_options(config.reward_option))


class RewardLog:
    """What the reward callables saw: failures per function, with the first reason of each."""

    def __init__(self, log: Callable[[str], None]) -> None:
        self.failures: dict[str, int] = {}
        self.first_reason: dict[str, str] = {}
        self._log = log

    def record(self, name: str, reasons: list[str]) -> None:
        self.failures[name] = self.failures.get(name, 0) + len(reasons)
        if reasons and name not in self.first_reason:
            self.first_reason[name] = reasons[0]
            self._log(f"reward function '{name}' failed on a sample ({reasons[0]}); it counts 0 there and the run goes on")


def answer_text(completion: str, stop_strings) -> str:
    """The answer without an end-of-turn marker that decoding kept (one the tokenizer does not call special)."""
    cut = first_stop(completion, stop_strings)
    return completion if cut is None else completion[:cut]


def trl_reward_functions(
    rewards: Rewards, log: RewardLog, stop_strings=(), template: Any = None
) -> tuple[list[Callable[..., list[float]]], list[float]]:
    """One callable per selected function (named after it, which trl logs), and their weights.

    Each answer reaches the functions as an ``AnswerText`` of ``template``: text to any
    function, whose tool calls the built-in ones read with the template's own parser.
    """
    stop_strings = [s for s in stop_strings if s]
    functions = []
    for entry in rewards.chosen:
        spec = entry[0]
        single = Rewards([entry])

        def score(prompts, completions, row, _single=single, _name=spec.name, log_metric=None, **_: Any) -> list[float]:
            rows = [json.loads(text) for text in row]
            answers = [AnswerText(answer_text(c, stop_strings), template) for c in completions]
            results = _single.score_batch(rows, answers)
            reasons = [result.failures[_name] for result in results if _name in result.failures]
            log.record(_name, reasons)
            if log_metric is not None:
                log_metric(f"reward_failures/{_name}", float(len(reasons)))
            return [result.values[_name] for result in results]

        score.__name__ = spec.name
        functions.append(score)
    return functions, [entry[0].weight for entry in rewards.chosen]
