"""Reward functions selected by name and combined: what an online-RL method scores its samples with.

A selection is ``NAME[:WEIGHT]`` (weight 1 when left out), several of them in a list
or comma-separated: ``json_valid,action_match:2,length_penalty:0.5``. The names are
the ``RewardFunction`` records of every plugin (``tuneforge list rewards``) and of
the user's Python files (``files``): a file is read like a plugin module, and its
``tuneforge_reward_functions()`` (decorated with ``tuneforge.api.hookimpl``, or not)
yields or returns its records.

``combine(...)`` checks the whole selection (unknown names, weights, options, files)
before anything is scored and returns a ``Rewards``: ``rewards(row, completion)`` is
one sample's ``SampleReward`` (the weighted sum and each function's value). A function
that raises, or returns something that is not a finite number, counts 0 for that
sample; the sample's ``failures`` say why and ``Rewards.failures`` counts them per
function, so a run logs them and goes on.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from . import options as option_tools
from .errors import TuneforgeError
from .records import RewardFunction, iter_records


@dataclass(frozen=True)
class RewardSpec:
    name: str
    weight: float = 1.0


@dataclass(frozen=True)
class SampleReward:
    """One sample's reward: ``total`` (the weighted sum), each function's unweighted ``values``, and why any failed."""

    total: float
    values: dict[str, float]
    failures: dict[str, str] = field(default_factory=dict)


def parse_specs(specs: str | Sequence[str]) -> list[RewardSpec]:
    """``NAME[:WEIGHT]`` items (a list, or one comma-separated string) as specs, each name once."""
    items = [specs] if isinstance(specs, str) else list(specs)
    parsed: list[RewardSpec] = []
    for item in (part.strip() for text in items for part in str(text).split(",")):
        if not item:
            continue
        name, _, weight_text = item.partition(":")
        name = name.strip()
        if not name:
            raise TuneforgeError(f"The reward '{item}' has no name; write NAME or NAME:WEIGHT (for example action_match:2).")
        weight = 1.0
        if weight_text.strip():
            try:
                weight = float(weight_text)
            except ValueError:
                raise TuneforgeError(
                    f"The weight of reward '{name}' is '{weight_text}', not a number; write {name}:2 or {name}:0.5."
                ) from None
            if not math.isfinite(weight):
                raise TuneforgeError(f"The weight of reward '{name}' is {weight_text}; give a finite number.")
        if any(spec.name == name for spec in parsed):
            raise TuneforgeError(f"The reward '{name}' is selected twice; give it once, with the weight you want.")
        parsed.append(RewardSpec(name, weight))
    if not parsed:
        raise TuneforgeError("No reward function is selected; name at least one (`tuneforge list rewards` lists them).")
    return parsed


def rewards_from_file(path: str | Path) -> list[RewardFunction]:
    """The ``RewardFunction`` records a user's Python file registers through ``tuneforge_reward_functions()``."""
    path = Path(path)
    if not path.is_file():
        raise TuneforgeError(f"The reward file '{path}' does not exist; give the path of a Python file.")
    module_name = f"tuneforge_user_rewards_{abs(hash(str(path.resolve())))}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise TuneforgeError(f"The reward file '{path}' cannot be imported; give a Python file ending in .py.")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
        hook = getattr(module, "tuneforge_reward_functions", None)
        if not callable(hook):
            raise TuneforgeError(
                f"The reward file '{path}' defines no tuneforge_reward_functions(); define it to yield RewardFunction records."
            )
        records = list(iter_records(hook()))
    except TuneforgeError:
        raise
    except Exception as exc:
        raise TuneforgeError(f"The reward file '{path}' failed ({type(exc).__name__}: {exc}); fix the file.") from exc
    finally:
        sys.modules.pop(module_name, None)
    for record in records:
        if not isinstance(record, RewardFunction):
            raise TuneforgeError(
                f"The reward file '{path}' registered a {type(record).__name__}; yield RewardFunction records."
            )
    return records


def _known(files: Sequence[str | Path], registry) -> dict[str, tuple[RewardFunction, str]]:
    """Every reward function by name, with where it came from."""
    if registry is None:
        from .registry import get_registry

        registry = get_registry()
    known = {r.name: (r, f"plugin '{registry.provider('reward_functions', r.name)}'") for r in registry.all("reward_functions")}
    for path in files:
        for record in rewards_from_file(path):
            if record.name in known:
                raise TuneforgeError(
                    f"The reward function '{record.name}' of '{path}' has the name of one from {known[record.name][1]}; "
                    f"rename it in the file."
                )
            known[record.name] = (record, f"file '{path}'")
    return known


def combine(
    specs: str | Sequence[str],
    *,
    files: Sequence[str | Path] = (),
    options: Mapping[str, Any] | None = None,
    registry=None,
) -> "Rewards":
    """The selected reward functions, checked and ready to score (see the module docstring).

    ``options`` holds the values of the selected functions' own options (their
    ``options`` dataclasses' fields); a key that none of them takes is refused.
    """
    selected = parse_specs(specs)
    known = _known(files, registry)
    missing = [spec.name for spec in selected if spec.name not in known]
    if missing:
        raise TuneforgeError(
            f"Unknown reward function '{missing[0]}'; choose from: {', '.join(sorted(known)) or 'none installed'}."
        )
    given = {option_tools.normalise_key(k): v for k, v in (options or {}).items()}
    taken: set[str] = set()
    chosen = []
    for spec in selected:
        record = known[spec.name][0]
        instance = None
        if record.options is not None:
            names = {f.name for f in dataclasses.fields(record.options)}
            instance = option_tools.build(record.options, {k: v for k, v in given.items() if k in names})
            taken |= names
        chosen.append((spec, record, instance))
    stray = sorted(set(given) - taken)
    if stray:
        raise TuneforgeError(
            f"The option '{stray[0]}' belongs to none of the selected reward functions "
            f"({', '.join(spec.name for spec in selected)}); select the function that takes it, or leave it out."
        )
    return Rewards(chosen)


class Rewards:
    """Selected reward functions with their weights and options; call it on one sample."""

    def __init__(self, chosen: Iterable[tuple[RewardSpec, RewardFunction, Any]]) -> None:
        self.chosen = list(chosen)
        self.failures: dict[str, int] = {spec.name: 0 for spec, _, _ in self.chosen}

    @property
    def names(self) -> list[str]:
        return [spec.name for spec, _, _ in self.chosen]

    @property
    def weights(self) -> dict[str, float]:
        return {spec.name: spec.weight for spec, _, _ in self.chosen}

    def __call__(self, row: Mapping[str, Any], completion: Any) -> SampleReward:
        values: dict[str, float] = {}
        failures: dict[str, str] = {}
        total = 0.0
        for spec, record, instance in self.chosen:
            try:
                value = record.score(row, completion) if instance is None else record.score(row, completion, options=instance)
                if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                    raise TypeError(f"returned {value!r}, not a finite number")
                value = float(value)
            except Exception as exc:  # one bad sample must not stop a run
                failures[spec.name] = f"{type(exc).__name__}: {' '.join(str(exc).split())}"
                self.failures[spec.name] += 1
                value = 0.0
            values[spec.name] = value
            total += spec.weight * value
        return SampleReward(total, values, failures)

    def score_batch(self, rows: Sequence[Mapping[str, Any]], completions: Sequence[Any]) -> list[SampleReward]:
        """One ``SampleReward`` per (row, completion) pair."""
        if len(rows) != len(completions):
            raise TuneforgeError(f"{len(rows)} rows but {len(completions)} completions; give one completion per row.")
        return [self(row, completion) for row, completion in zip(rows, completions)]

    def report(self) -> list[str]:
        """A sentence per function that failed on some sample so far."""
        return [
            f"reward function '{name}' failed on {count} sample{'s' if count != 1 else ''}; they counted 0 for it"
            for name, count in self.failures.items()
            if count
        ]
