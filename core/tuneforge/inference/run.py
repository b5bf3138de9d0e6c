"""``tuneforge infer``: answer a jsonl of requests, or chat on stdin/stdout."""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path
from typing import IO, Any, Iterator, Mapping

from ..errors import TuneforgeError
from . import BUNDLE_OPTIONS, COMMON_ENGINE_OPTIONS, ChatRequest, SamplingParams, create_engine
# What ``infer`` adds to each request row (``reasoning`` where the model's template parses reasoning;
# ``tool_calls`` where the model called tools).
ANSWER_KEYS = ("answer", "finish_reason", "usage", "tool_calls")
REASONING_KEY = "reasoning"


def run_infer(config) -> None:
    """Answer ``config.input`` into ``config.output`` (or stdout), or chat when there is no input."""
    sampling = SamplingParams.from_options(config)
    if config.batch_size < 1:
        raise TuneforgeError(f"--batch-size is {config.batch_size}; it must be at least 1.")
    options = engine_options_from(config)
    if config.input is None:
        if config.output is not None:
            raise TuneforgeError(
                f"--output '{config.output}' needs --input: the interactive chat prints to the terminal; "
                f"pass --input requests.jsonl to answer a file."
            )
        engine = create_engine(config.engine, config.model, **options)
        try:
            chat(engine, sampling, system=config.system, model_name=config.model)
        finally:
            engine.close()
        return
    rows, requests = load_requests(config.input, sampling, system=config.system)
    if config.output is not None:
        check_output_file(config.output, config.input)
    engine = create_engine(config.engine, config.model, **options)
    try:
        count = answer_rows(engine, rows, requests, config.output, batch_size=config.batch_size)
    finally:
        engine.close()
    where = config.output or "standard output"
    print(f"Wrote {count} answers to {where}.", file=sys.stderr)


def engine_options_from(config) -> dict:
    """The engine options of a command's config: the common ones the user changed
    (those left at their defaults are the engine's to choose) and every option of the
    selected engine record (``InferenceEngine.options``, composed into the config)."""
    from ..options import selected_options

    defaults = {f.name: f.default for f in dataclasses.fields(config)}
    options = {
        name: getattr(config, name)
        for name in (*COMMON_ENGINE_OPTIONS, *BUNDLE_OPTIONS)
        if hasattr(config, name) and getattr(config, name) != defaults.get(name)
    }
    options.update(selected_options(config).get("inference_engines", {}).get("options", {}))
    family = selected_options(config).get("model_families", {}).get("options")
    if family:  # the model family's own options (--max-pixels): they resolve the bundle
        options["family_options"] = family
    return options


# -- rows in, rows out ------------------------------------------------------


def load_requests(path: str, sampling: SamplingParams, *, system: str | None = None, limit: int | None = None) -> tuple[list[dict], list[ChatRequest]]:
    """The rows of a data file and a request per row (its conversation without a final answer).

    Rows may be in any registered conversation format; ``system`` is added to
    conversations that have no system prompt. A bad row stops here, with its line.
    """
    from ..data import convert_rows, read_rows

    rows = read_rows(path)
    if limit is not None:
        rows = rows[:limit]
    if not rows:
        raise TuneforgeError(f"'{path}' holds no rows; write one request (a JSON object) per line.")
    converted = convert_rows(rows, system=system, training=False)
    requests = []
    for item in converted:
        messages = prompt_messages(item.data)
        try:
            requests.append(ChatRequest(messages=messages, tools=item.tools, sampling=sampling))
        except TuneforgeError as exc:
            raise TuneforgeError(f"{item.where}: {exc}") from None
    return [row.data for row in rows], requests


def prompt_messages(conversation: Mapping[str, Any]) -> list[dict]:
    """The conversation the model continues: without a final assistant message (the reference)."""
    messages = [dict(m) for m in conversation.get("messages") or []]
    if messages and messages[-1].get("role") == "assistant":
        messages.pop()
    return messages


def check_output_file(output: str, input_path: str | None = None) -> None:
    path = Path(output)
    if path.is_dir():
        raise TuneforgeError(f"--output '{output}' is a directory; pass a file path such as answers.jsonl.")
    if input_path is not None and path.exists() and path.resolve() == Path(input_path).resolve():
        raise TuneforgeError(f"--output '{output}' is the --input file; write the answers to another path.")
    if not path.parent.exists():
        raise TuneforgeError(f"The folder of --output '{output}' does not exist; create it or choose another path.")


def answered_row(row: Mapping[str, Any], completion, *, reasoning: bool = False) -> dict:
    """The request row plus the answer; a field of the row with one of our names moves to ``input_<name>``.

    Where the model called tools, ``tool_calls`` holds the calls (OpenAI's shape) and ``answer``
    the text beside them, as in the server's assistant message.

    With ``reasoning`` (a thinking model's template), the row also has the answer's
    reasoning (null when the model wrote none) beside ``answer``, which then holds
    only what came after it.
    """
    keys = (*ANSWER_KEYS, REASONING_KEY) if reasoning else ANSWER_KEYS
    out = {(f"input_{k}" if k in keys else k): v for k, v in row.items()}
    out.update(answer=completion.text, finish_reason=completion.finish_reason, usage=completion.usage)
    if completion.tool_calls:
        out["tool_calls"] = list(completion.tool_calls)
    if reasoning:
        out[REASONING_KEY] = completion.reasoning
    return out


def parses_reasoning(engine) -> bool:
    """Whether the engine's chat template reads a thinking model's reasoning apart from its answer."""
    template = getattr(engine, "template", None)
    return bool(getattr(template, "reasoning_markers", None)) and getattr(template, "parse_reasoning", None) is not None


def progress(total: int, desc: str):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="req", file=sys.stderr, dynamic_ncols=True)


def chunks(items: list, size: int) -> Iterator[list]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def answer_rows(engine, rows: list[dict], requests: list[ChatRequest], output: str | None, *, batch_size: int) -> int:
    """Answer the requests in chunks of ``batch_size``, writing each row as its chunk finishes."""
    handle: IO[str] = open(output, "w", encoding="utf-8") if output else sys.stdout
    reasoning = parses_reasoning(engine)
    try:
        with progress(len(requests), "answering") as bar:
            for chunk in chunks(list(zip(rows, requests)), batch_size):
                results = engine.generate([request for _, request in chunk])
                for (row, _), completions in zip(chunk, results):
                    handle.write(json.dumps(answered_row(row, completions[0], reasoning=reasoning), ensure_ascii=False) + "\n")
                handle.flush()
                bar.update(len(chunk))
    finally:
        if handle is not sys.stdout:
            handle.close()
    return len(requests)


# -- interactive chat -------------------------------------------------------

HELP = "Type a message and press Enter; /clear starts a new conversation, /exit quits."


def chat(engine, sampling: SamplingParams, *, system: str | None = None, model_name: str = "", stdin: IO[str] | None = None, stdout: IO[str] | None = None, stderr: IO[str] | None = None) -> None:
    """A multi-turn chat: one line per user turn; answers stream to ``stdout``.

    Works the same when ``stdin`` is a pipe (no prompt is printed then).
    """
    stdin, stdout, stderr = stdin or sys.stdin, stdout or sys.stdout, stderr or sys.stderr
    interactive = stdin.isatty()
    fresh = [{"role": "system", "content": system}] if system else []
    history = list(fresh)
    print(f"Chatting with {model_name}. {HELP}", file=stderr, flush=True)
    while True:
        if interactive:
            stdout.write(">>> ")
            stdout.flush()
        try:
            line = stdin.readline()
        except KeyboardInterrupt:
            break
        if not line:
            break
        text = line.strip()
        if not text:
            continue
        if text == "/exit":
            break
        if text == "/clear":
            history = list(fresh)
            print("(new conversation)", file=stderr, flush=True)
            continue
        if text.startswith("/") and " " not in text:
            print(f"Unknown command '{text}'. {HELP}", file=stderr, flush=True)
            continue
        history.append({"role": "user", "content": text})
        answer = ""
        try:
            # The reasoning shows as the model writes it, and stays in the history for the template to handle.
            for delta in engine.stream(ChatRequest(messages=list(history), sampling=sampling, separate_reasoning=False)):
                answer += delta
                stdout.write(delta)
                stdout.flush()
        except KeyboardInterrupt:
            stdout.write("\n")
            print("(answer interrupted; it is not kept in the conversation)", file=stderr, flush=True)
            history.pop()
            continue
        except TuneforgeError as exc:
            print(f"error: {exc} (/clear starts a new conversation)", file=stderr, flush=True)
            history.pop()
            continue
        stdout.write("\n\n" if interactive else "\n")
        stdout.flush()
        history.append({"role": "assistant", "content": answer})
