"""LMDeploy serving a checkpoint that ``tuneforge export --format awq|gptq`` wrote, beside the pt engine.

Run by ``gpu_check.sh exported DIR`` on a CUDA machine: both engines load the same
compressed-tensors folder (LMDeploy through its own W4A16 kernels, the pt engine through
transformers and compressed-tensors), answer the same 8 prompts greedily, and the script
prints how far their answers agree, with the load and generation times. On random weights
the answers are noise, so agreement measures that the two read the same 4-bit weights, not
quality (the export's own quality report does that against the merged model). The answers are
compared as token ids: a random model's tokens often lie outside its small tokenizer's
vocabulary and decode to nothing.
"""

from __future__ import annotations

import json
import sys
import time


def common_prefix_share(left: list, right: list) -> float:
    same = 0
    for x, y in zip(left, right):
        if x != y:
            break
        same += 1
    return same / max(len(left), len(right), 1)


def main(path: str) -> dict:
    from tuneforge.api import ChatRequest, SamplingParams, create_engine

    record = json.loads(open(f"{path}/tuneforge_export.json").read())
    prompts = [f"Summarise meeting {i}: we discussed the roadmap and agreed on next steps." for i in range(8)]
    requests = [ChatRequest([{"role": "user", "content": p}], sampling=SamplingParams(max_tokens=32, temperature=0.0)) for p in prompts]
    answers, timings = {}, {}
    for name, options in (("lmdeploy", {"cache_max_entry_count": 0.5}), ("pt", {})):
        start = time.monotonic()
        engine = create_engine(name, path, **options)
        loaded = time.monotonic() - start
        start = time.monotonic()
        answers[name] = [list(choices[0].token_ids) for choices in engine.generate(requests)]
        timings[name] = {"load_s": round(loaded, 1), "generate_s": round(time.monotonic() - start, 2)}
        engine.close()
        print(f"{name}: loaded in {loaded:.1f} s, 8 greedy answers of up to 32 tokens in {timings[name]['generate_s']} s", flush=True)
    pairs = list(zip(answers["lmdeploy"], answers["pt"]))
    summary = {
        "checkpoint": path,
        "quantization": record.get("quantization"),
        "timings": timings,
        "equal_answers": sum(a == b for a, b in pairs),
        "mean_common_prefix_share": round(sum(common_prefix_share(a, b) for a, b in pairs) / len(pairs), 3),
        "first_pair": {"lmdeploy": answers["lmdeploy"][0], "pt": answers["pt"][0]},
    }
    print(json.dumps(summary, indent=2))
    return summary


if __name__ == "__main__":  # LMDeploy starts worker processes by spawn
    main(sys.argv[1])
    print("EXPORTED OK")
