"""``tuneforge eval``: answer a dataset's held-out split and score the answers.

The prompt for each row is its conversation without the final assistant message
(that message is the reference), with the row's ``tools``. The dataset's
``evaluate(rows, answers)`` scores the answers and returns a dict. An answer is the
completion's text; where the model called tools (the engine parsed calls), it is the
assistant message ``{"role": "assistant", "content", "tool_calls"}``. How the report
reads the dict:

- a number is a metric (``"rouge_l": 0.41``);
- ``{"passed": 31, "total": 40}`` (or ``"correct"`` for ``"passed"``) reads
  "31/40 (78%)";
- ``"per_row"``, a list with one dict per row, is merged into the ``--output`` rows;
- ``"report"``, a string or a list of strings, is printed as the dataset wrote it
  instead of the lines above.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path
from typing import Any, Mapping, Sequence

from .errors import TuneforgeError
from .inference import SamplingParams, create_engine
from .inference.run import answered_row, check_output_file, chunks, engine_options_from, load_requests, parses_reasoning, progress
from .templates import tools_dropped_warning


def run_eval(config) -> dict:
    """Answer ``config.split`` of ``config.dataset``, score it, print a report; return the summary."""
    from .registry import get_registry

    registry = get_registry()
    dataset = registry.get("datasets", config.dataset)
    if dataset.evaluate is None:
        scorable = [r.name for r in registry.all("datasets") if r.evaluate is not None]
        raise TuneforgeError(
            f"Dataset '{config.dataset}' cannot score answers (it has no evaluate function); "
            f"pick one that can: {', '.join(sorted(scorable)) or 'none installed'}."
        )
    if config.split not in dataset.splits:
        raise TuneforgeError(
            f"Dataset '{config.dataset}' has no split '{config.split}'; choose one of: {', '.join(dataset.splits)}."
        )
    if config.limit is not None and config.limit < 1:
        raise TuneforgeError(f"--limit is {config.limit}; give a positive number of rows, or leave it out for all.")
    if config.batch_size < 1:
        raise TuneforgeError(f"--batch-size is {config.batch_size}; it must be at least 1.")
    sampling = SamplingParams.from_options(config)
    options = engine_options_from(config)
    if config.output is not None:
        check_output_file(config.output)

    path = str(dataset.resolve(config.split))
    if not Path(path).is_file():
        raise TuneforgeError(
            f"Dataset '{config.dataset}' split '{config.split}' resolved to '{path}', which does not exist; "
            f"reinstall the plugin that provides the dataset."
        )
    rows, requests = load_requests(path, sampling, limit=config.limit)
    constrained = getattr(config, "constrained", False)
    tool_choice = getattr(config, "tool_choice", "auto")
    if tool_choice != "auto" and not constrained:
        raise TuneforgeError(
            f"--tool-choice {tool_choice} holds the answers to calls by constrained decoding; add --constrained, "
            f"or leave --tool-choice out."
        )
    parallel = getattr(config, "parallel_tool_calls", True)
    if not parallel and tool_choice != "required":
        raise TuneforgeError(
            "--no-parallel-tool-calls holds each answer to one call, which only --tool-choice required enforces; "
            "add --constrained --tool-choice required, or leave --no-parallel-tool-calls out."
        )
    if constrained:
        _check_constrainable(config.dataset, requests)

    engine = create_engine(config.engine, config.model, **options)
    template = getattr(engine, "template", None)
    warning = tools_dropped_warning(template, ((r.messages, r.tools, f"'{config.dataset}' (row {n} on)") for n, r in enumerate(requests, 1)))
    if warning:
        print(f"warning: {warning}", file=sys.stderr)
    reasoning = parses_reasoning(engine)  # a thinking model's answers are scored without their reasoning
    completions = []
    try:
        if constrained:
            requests = constrained_requests(engine, requests, tool_choice, parallel=parallel)
        with progress(len(requests), f"answering {config.dataset}:{config.split}") as bar:
            for chunk in chunks(requests, config.batch_size):
                completions += [answers[0] for answers in engine.generate(chunk)]
                bar.update(len(chunk))
    finally:
        engine.close()

    summary = {
        "model": config.model,
        "engine": config.engine,
        "dataset": config.dataset,
        "split": config.split,
        "rows": len(rows),
        "sampling": dataclasses.asdict(sampling),
        "constrained": constrained,
        "tool_choice": tool_choice,
        "parallel_tool_calls": parallel,
        "scores": None,
    }
    try:
        scores = evaluate_answers(dataset.evaluate, rows, [answer_of(c) for c in completions], template)
        if not isinstance(scores, Mapping):
            raise TypeError(f"evaluate returned a {type(scores).__name__}, not a dict")
    except Exception as exc:  # a scoring bug must not lose the answers
        kept = ""
        if config.output is not None:
            write_answers(config.output, rows, completions, None, summary, reasoning=reasoning)
            kept = f" The answers were written to {config.output}."
        raise TuneforgeError(
            f"Scoring with dataset '{config.dataset}' failed ({type(exc).__name__}: {exc}); this is a bug in the "
            f"plugin that provides the dataset.{kept}"
        ) from exc
    summary["scores"] = {k: v for k, v in scores.items() if k != "per_row"}
    held = ""
    if constrained:
        details = ([] if tool_choice == "auto" else [f"tool_choice {tool_choice}"]) + ([] if parallel else ["one call"])
        held = ", constrained decoding" + (f" ({', '.join(details)})" if details else "")
    print(f"{config.model} on {config.dataset}:{config.split} ({len(rows)} rows{held})")
    for line in report_lines(scores):
        print(f"  {line}")
    if config.output is not None:
        write_answers(config.output, rows, completions, scores.get("per_row"), summary, reasoning=reasoning)
        summary["output"] = config.output
        print(f"Wrote the answers and scores to {config.output} (summary: {summary_path(config.output)}).", file=sys.stderr)
    return summary


def _check_constrainable(dataset: str, requests: Sequence) -> None:
    """Refuse --constrained before the model loads: outlines-core missing, or a row without tools."""
    from .inference.structured import require

    require()
    for number, request in enumerate(requests, 1):
        if not request.tools:
            raise TuneforgeError(
                f"--constrained holds answers to each row's tools, but row {number} of '{dataset}' has no 'tools'; "
                f"use it with a tool-calling dataset (such as device-actions), or leave it out."
            )


def constrained_requests(engine, requests: Sequence, tool_choice: str = "auto", *, parallel: bool = True) -> list:
    """``requests``, each held to its tools (``--constrained``).

    ``tool_choice`` "auto": calls in the engine's template's markup, or a plain-text
    refusal; "required": calls always, as the server holds ``tool_choice: "required"``
    (``parallel`` False: exactly one, as ``parallel_tool_calls: false`` does).
    """
    from .inference.structured import check_features, for_tool_calls, from_tool_choice

    template = getattr(engine, "template", None)

    def constraint(request):
        if tool_choice == "required":
            return from_tool_choice(request.tools, "required", parallel)
        return for_tool_calls(request.tools, template)

    held = [dataclasses.replace(r, sampling=dataclasses.replace(r.sampling, structured=constraint(r))) for r in requests]
    try:
        check_features(engine, held[:1])
    except TuneforgeError:
        raise TuneforgeError(
            f"--constrained needs an engine that enforces structured output; the engine {type(engine).__name__} does not: "
            f"use --engine pt (or one that lists 'structured_output' in its features), or leave --constrained out."
        ) from None
    return held


def evaluate_answers(evaluate, rows: Sequence[Mapping], answers: list, template: Any) -> Any:
    """A dataset's ``evaluate`` of the answers; handed the engine's chat template where it takes one (to read calls in text)."""
    import inspect

    try:
        parameters = inspect.signature(evaluate).parameters
    except (TypeError, ValueError):
        parameters = {}
    if template is not None and "template" in parameters:
        return evaluate(rows, answers, template=template)
    return evaluate(rows, answers)


def answer_of(completion) -> str | dict:
    """What a dataset's ``evaluate`` is handed for one completion: its text, or the assistant message with its tool calls."""
    if not completion.tool_calls:
        return completion.text
    return {"role": "assistant", "content": completion.text, "tool_calls": list(completion.tool_calls)}


def _ratio(value: Mapping[str, Any]) -> tuple[float, float] | None:
    passed = value.get("passed", value.get("correct"))
    total = value.get("total")
    if isinstance(passed, (int, float)) and isinstance(total, (int, float)) and not isinstance(passed, bool):
        return passed, total
    return None


def report_lines(scores: Mapping[str, Any]) -> list[str]:
    """Readable lines for a scores dict (see the module docstring)."""
    report = scores.get("report")
    if isinstance(report, str):
        return report.splitlines()
    if isinstance(report, (list, tuple)):
        return [str(line) for line in report]
    lines = []
    for key, value in scores.items():
        if key == "per_row":
            continue
        if isinstance(value, bool):
            lines.append(f"{key}: {'yes' if value else 'no'}")
        elif isinstance(value, int):
            lines.append(f"{key}: {value}")
        elif isinstance(value, float):
            lines.append(f"{key}: {value:.4g}")
        elif isinstance(value, Mapping) and (ratio := _ratio(value)) is not None:
            passed, total = ratio
            share = f" ({passed / total:.0%})" if total else ""
            lines.append(f"{key}: {passed:g}/{total:g}{share}")
    return lines


def summary_path(output: str) -> str:
    path = Path(output)
    return str(path.with_name(path.stem + ".summary.json"))


def write_answers(output: str, rows: Sequence[Mapping], completions, per_row, summary: dict, *, reasoning: bool = False) -> None:
    """One line per row (the row, the answer, its usage, its scores), and a summary file beside it."""
    per_row = per_row if isinstance(per_row, (list, tuple)) and len(per_row) == len(rows) else None
    with open(output, "w", encoding="utf-8") as handle:
        for i, (row, completion) in enumerate(zip(rows, completions)):
            out = answered_row(row, completion, reasoning=reasoning)
            if per_row is not None:
                out["scores"] = per_row[i]
            handle.write(json.dumps(out, ensure_ascii=False, default=str) + "\n")
    Path(summary_path(output)).write_text(json.dumps(summary, indent=2, default=str) + "\n", encoding="utf-8")
