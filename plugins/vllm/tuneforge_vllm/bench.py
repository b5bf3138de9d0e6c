"""The vllm engine's overhead: the same requests through tuneforge and through vLLM's AsyncLLM directly.

One vLLM instance serves both: the engine's ``generate`` (templates, protocol
records, the loop thread) and plain ``AsyncLLM.generate`` calls on the same
prompt token ids and the same vLLM sampling parameters, alternately, so the
only difference is tuneforge's layer::

    python -m tuneforge_vllm.bench --model smollm2-135m-instruct --requests 32 --max-tokens 64

Prints the generated tokens per second of each and the overhead, and writes
them to ``--output`` (JSON).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
import uuid

from tuneforge.api import ChatRequest, SamplingParams, create_engine

TOPICS = ("the weather", "a train timetable", "a recipe for bread", "the history of Vienna", "planning a meeting", "a bicycle repair")


def requests_for(count: int, max_tokens: int) -> list[ChatRequest]:
    return [
        ChatRequest([{"role": "user", "content": f"Write a few sentences about {TOPICS[i % len(TOPICS)]} (request {i})."}],
                    sampling=SamplingParams(max_tokens=max_tokens))
        for i in range(count)
    ]


def run_engine(engine, requests) -> tuple[float, int]:
    start = time.perf_counter()
    answers = engine.generate(requests)
    return time.perf_counter() - start, sum(a.completion_tokens for [a] in answers)


def run_direct(engine, requests) -> tuple[float, int]:
    """The same prompts and sampling parameters, straight into vLLM (prepared before the clock starts)."""
    prepared = [engine._prepare(None, request, final_only=True) for request in requests]

    async def one(p):
        last = None
        async for output in engine._llm.generate({"prompt_token_ids": p.prompt_ids}, p.params, uuid.uuid4().hex, lora_request=p.lora):
            last = output
        return len(last.outputs[0].token_ids)

    async def every():
        return await asyncio.gather(*(one(p) for p in prepared))

    start = time.perf_counter()
    tokens = engine._loop.submit(every()).result()
    return time.perf_counter() - start, sum(tokens)


def benchmark(model: str, *, requests: int, max_tokens: int, repeats: int, engine_options: dict, log=print) -> dict:
    log(f"starting vLLM for {model} ...")
    engine = create_engine("vllm", model, **engine_options)
    try:
        work = requests_for(requests, max_tokens)
        run_engine(engine, work[:4])  # warm-up
        run_direct(engine, work[:4])
        runs: dict[str, list[tuple[float, int]]] = {"tuneforge": [], "vllm": []}
        for _ in range(repeats):
            runs["tuneforge"].append(run_engine(engine, work))
            runs["vllm"].append(run_direct(engine, work))
    finally:
        engine.close()
    report = {"model": model, "requests": requests, "max_tokens": max_tokens, "repeats": repeats, "engine_options": engine_options}
    for name, measured in runs.items():
        rates = [tokens / seconds for seconds, tokens in measured]
        report[name] = {"tokens": measured[-1][1], "seconds": [s for s, _ in measured], "tokens_per_s": statistics.median(rates)}
    report["overhead"] = 1 - report["tuneforge"]["tokens_per_s"] / report["vllm"]["tokens_per_s"]
    return report


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m tuneforge_vllm.bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--requests", type=int, default=32)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--engine-option", action="append", default=[], help="NAME=VALUE (value read as YAML), as for tuneforge deploy")
    parser.add_argument("--output", default="bench-vllm.json")
    args = parser.parse_args(argv)
    if args.requests < 1 or args.max_tokens < 1 or args.repeats < 1:
        parser.error("--requests, --max-tokens and --repeats must be at least 1.")
    import yaml

    options = {}
    for entry in args.engine_option:
        name, sep, value = entry.partition("=")
        if not sep:
            parser.error(f"--engine-option {entry!r} is not NAME=VALUE.")
        options[name.replace("-", "_")] = yaml.safe_load(value)
    report = benchmark(args.model, requests=args.requests, max_tokens=args.max_tokens, repeats=args.repeats,
                       engine_options=options, log=lambda m: print(m, file=sys.stderr, flush=True))
    with open(args.output, "w", encoding="utf-8") as handle:
        json.dump(report, handle, indent=2)
    print(f"{'path':<10} {'tokens':>7} {'tokens/s':>10}")
    for name in ("vllm", "tuneforge"):
        print(f"{name:<10} {report[name]['tokens']:>7} {report[name]['tokens_per_s']:>10.1f}")
    print(f"overhead of the tuneforge engine: {100 * report['overhead']:.1f}% of vLLM's throughput")
    return report


if __name__ == "__main__":
    main()
