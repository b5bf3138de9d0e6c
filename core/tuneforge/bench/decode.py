"""Decode speed of the ``pt`` engine against plain transformers ``generate()``.

Builds a random-weight model of a known shape from its transformers config (no
download), gives both runners the same random prompts, and measures, at each
batch size, the time to first token (a generation of one token: the prefill) and
the decode rate (tokens after the first, per second)::

    python -m tuneforge.bench.decode --shape qwen2.5-7b --dtype bfloat16 \\
        --batch-sizes 1,32,128 --new-tokens 128 --prompt-tokens 256

Prints a table and writes every number to ``--output`` (JSON). On CUDA the
engine runs with ``compile=True`` (static KV cache, compiled decoding step)
unless ``--no-compile``; ``--shape tiny`` runs in seconds on a CPU.

A plugin's inference engine runs beside them when ``--runners`` names it
(``--runners pt,lmdeploy``, its options as ``--engine-option NAME=VALUE``): the
random model is saved to ``--work-dir`` with a tokenizer that reads each id's word
(``id_words``) back as that id, and the engine, created on that checkpoint as a
user's would be, answers raw prompts of the same ids (``--checkpoint DIR``: they load
DIR instead, a model saved so and then quantized, say).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from dataclasses import dataclass
from typing import Any, Callable

# Qwen2Config fields of each shape.
SHAPES: dict[str, dict[str, Any]] = {
    "qwen2.5-7b": dict(
        vocab_size=152064,
        hidden_size=3584,
        intermediate_size=18944,
        num_hidden_layers=28,
        num_attention_heads=28,
        num_key_value_heads=4,
        max_position_embeddings=32768,
        rms_norm_eps=1e-6,
        tie_word_embeddings=False,
    ),
    "qwen2.5-14b": dict(
        vocab_size=152064,
        hidden_size=5120,
        intermediate_size=13824,
        num_hidden_layers=48,
        num_attention_heads=40,
        num_key_value_heads=8,
        max_position_embeddings=32768,
        rms_norm_eps=1e-5,
        tie_word_embeddings=False,
    ),
    "qwen2.5-32b": dict(
        vocab_size=152064,
        hidden_size=5120,
        intermediate_size=27648,
        num_hidden_layers=64,
        num_attention_heads=40,
        num_key_value_heads=8,
        max_position_embeddings=32768,
        rms_norm_eps=1e-5,
        tie_word_embeddings=False,
    ),
    "qwen2.5-72b": dict(
        vocab_size=152064,
        hidden_size=8192,
        intermediate_size=29568,
        num_hidden_layers=80,
        num_attention_heads=64,
        num_key_value_heads=8,
        max_position_embeddings=32768,
        rms_norm_eps=1e-6,
        tie_word_embeddings=False,
    ),
    "qwen2.5-0.5b": dict(
        vocab_size=151936,
        hidden_size=896,
        intermediate_size=4864,
        num_hidden_layers=24,
        num_attention_heads=14,
        num_key_value_heads=2,
        max_position_embeddings=32768,
        rms_norm_eps=1e-6,
        tie_word_embeddings=True,
    ),
    "tiny": dict(
        vocab_size=512,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        tie_word_embeddings=True,
    ),
}


def build_model(shape: str, dtype: str, device: str, seed: int = 0):
    """A random-weight Qwen2 causal LM of ``shape``, built on ``device`` (it never ends a sequence early)."""
    import torch
    from transformers import AutoModelForCausalLM, Qwen2Config

    config = Qwen2Config(**SHAPES[shape], bos_token_id=None, eos_token_id=None, pad_token_id=0)
    torch.manual_seed(seed)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(
            config, dtype=getattr(torch, dtype), attn_implementation="sdpa", trust_remote_code=False
        )
    model.generation_config.eos_token_id = None
    model.generation_config.pad_token_id = 0
    return model.eval()


class IdTokenizer:
    """Text is token ids written as words (``t17 t4``): prompts of exact lengths, no tokenizer files."""

    eos_token_id = None
    pad_token_id = 0
    all_special_tokens: list[str] = []

    def decode(self, ids, skip_special_tokens: bool = False) -> str:
        return " ".join(f"t{i}" for i in ids)


class IdTemplate:
    """The prompt is the last message's token ids, nothing added."""

    stop_token_ids: list[int] = []
    stop_strings: tuple[str, ...] = ()

    def prompt(self, messages, tools=None) -> list[int]:
        return [int(word[1:]) for word in messages[-1]["content"].split()]


@dataclass
class Run:
    seconds: float
    tokens: int
    token_ids: list[list[int]]


def plain_generate(model, device: str) -> Callable[[list[list[int]], int], Run]:
    """transformers ``generate()`` as one would call it: greedy, dynamic cache, one padded batch."""
    import torch

    def run(prompts: list[list[int]], new_tokens: int) -> Run:
        input_ids = torch.tensor(prompts, device=device)
        start = _now(device)
        with torch.inference_mode():
            output = model.generate(
                input_ids=input_ids,
                attention_mask=torch.ones_like(input_ids),
                max_new_tokens=new_tokens,
                do_sample=False,
                eos_token_id=None,
                pad_token_id=0,
            )
        generated = output[:, input_ids.shape[1] :].tolist()
        seconds = _now(device) - start
        return Run(seconds, sum(len(t) for t in generated), generated)

    return run


def pt_engine(model, device: str, *, batch_size: int, compile: bool):
    """The ``pt`` engine on the same model, fed chat requests whose prompts are the same ids."""
    import torch

    from ..inference import ChatRequest, SamplingParams
    from ..inference.pt import PTEngine
    from ..modeling import Loaded

    loaded = Loaded(model, IdTokenizer(), IdTemplate(), "ids", None, None, torch.device(device), None)
    engine = PTEngine(loaded, batch_size=batch_size, compile=compile)

    def run(prompts: list[list[int]], new_tokens: int) -> Run:
        sampling = SamplingParams(max_tokens=new_tokens)
        requests = [ChatRequest([{"role": "user", "content": " ".join(f"t{i}" for i in p)}], sampling=sampling) for p in prompts]
        start = _now(device)
        answers = engine.generate(requests)
        seconds = _now(device) - start
        return Run(seconds, sum(a[0].completion_tokens for a in answers), [a[0].token_ids for a in answers])

    return engine, run


LETTERS = "abcdefghijklmnopqrstuvwxyz"
SYMBOLS = 1 + len(LETTERS)  # the last ids of the saved tokenizer: its byte-level space and the letters words are merged from


def id_words(vocab_size: int) -> list[str]:
    """The word of each token id below ``vocab_size - SYMBOLS``: a space and letters (``" a"``, ..., ``" zz"``, ``" aaa"``...),
    shortest first, so every word but the one-letter ones is a shorter word and one letter (a byte-level BPE builds it)."""
    words, length = [], 1
    while len(words) < vocab_size - SYMBOLS:
        for n in range(len(LETTERS) ** length):
            word = ""
            for _ in range(length):
                n, letter = divmod(n, len(LETTERS))
                word = LETTERS[letter] + word
            words.append(" " + word)
            if len(words) == vocab_size - SYMBOLS:
                break
        length += 1
    return words


def save_checkpoint(model, path) -> str:
    """``model`` saved to ``path`` with a byte-level BPE tokenizer whose word ``id_words(...)[i]`` is token ``i``
    (what a Qwen2 tokenizer, the one transformers loads for the model, reads back) and a chat template that is
    the messages' text: a checkpoint any engine loads."""
    import json
    from pathlib import Path

    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    space = "\u0120"  # the byte-level alphabet's space
    words = [space + w[1:] for w in id_words(model.config.vocab_size)]
    vocab = {w: i for i, w in enumerate(words)}
    first = len(words)
    vocab.update({symbol: first + k for k, symbol in enumerate(space + LETTERS)})
    merges = [(w[:-1], w[-1]) for w in words]
    bpe = Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False, byte_fallback=False))
    bpe.normalizer = normalizers.NFC()
    bpe.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""),
                             behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    bpe.decoder = decoders.ByteLevel()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, chat_template="{% for m in messages %}{{ m['content'] }}{% endfor %}")
    tokenizer.save_pretrained(path)
    model.save_pretrained(path)
    return str(path)


def engine_runner(name: str, checkpoint: str, device: str, vocab_size: int, *, batch_size: int, options: dict):
    """A plugin's engine ``name`` on ``checkpoint`` (``save_checkpoint``), fed raw prompts of the same ids."""
    from ..inference import ChatRequest, SamplingParams, create_engine

    engine = create_engine(name, checkpoint, template="default", batch_size=batch_size, **options)
    words = id_words(vocab_size)

    def run(prompts: list[list[int]], new_tokens: int) -> Run:
        sampling = SamplingParams(max_tokens=new_tokens)
        requests = [ChatRequest(prompt="".join(words[i] for i in p), sampling=sampling) for p in prompts]
        start = _now(device)
        answers = engine.generate(requests)
        seconds = _now(device) - start
        return Run(seconds, sum(a[0].completion_tokens for a in answers), [a[0].token_ids for a in answers])

    return engine, run


def _now(device: str) -> float:
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()
    return time.perf_counter()


def measure(run, prompts: list[list[int]], new_tokens: int, *, warmup: int, repeats: int) -> dict:
    """Time to first token and decode rate of one runner at one batch size (medians of ``repeats``)."""
    for _ in range(warmup):
        run(prompts, new_tokens)
        run(prompts, 1)
    first = [run(prompts, 1).seconds for _ in range(repeats)]
    full_runs = [run(prompts, new_tokens) for _ in range(repeats)]
    ttft = statistics.median(first)
    full = statistics.median(r.seconds for r in full_runs)
    tokens = full_runs[-1].tokens
    decode_tokens = tokens - len(prompts)  # the first token of each row comes with the prefill
    return {
        "ttft_s": ttft,
        "total_s": full,
        "tokens": tokens,
        "tokens_per_s": tokens / full,
        "decode_tokens_per_s": decode_tokens / max(full - ttft, 1e-9),
        "step_ms": 1000 * (full - ttft) / max(new_tokens - 1, 1),
        "token_ids": full_runs[-1].token_ids,
    }


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def random_prompts(count: int, length: int, vocab_size: int, seed: int = 1) -> list[list[int]]:
    """Random ids below ``vocab_size - SYMBOLS`` (the ids of ``id_words``, which an engine's tokenizer reads back)."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    return torch.randint(1, vocab_size - SYMBOLS, (count, length), generator=generator).tolist()


def benchmark(
    *,
    shape: str,
    dtype: str,
    batch_sizes: list[int],
    new_tokens: int,
    prompt_tokens: int,
    device: str,
    compile: bool,
    warmup: int = 1,
    repeats: int = 2,
    runners: tuple[str, ...] = ("generate", "pt"),
    engine_options: dict | None = None,
    work_dir: str | None = None,
    checkpoint: str | None = None,
    log=print,
) -> dict:
    import tempfile

    import torch

    log(f"building a random {shape} model ({dtype}) on {device} ...")
    model = build_model(shape, dtype, device)
    prompts_all = random_prompts(max(batch_sizes), prompt_tokens, SHAPES[shape]["vocab_size"])
    engine, engine_run = pt_engine(model, device, batch_size=max(batch_sizes), compile=compile)
    run_of = {"generate": plain_generate(model, device), "pt": engine_run}
    engines = [engine]
    results = []
    scratch = None
    try:
        plugin_engines = [name for name in runners if name not in run_of]
        if plugin_engines and checkpoint is not None:
            log(f"{', '.join(plugin_engines)} load {checkpoint}")
        elif plugin_engines:
            if work_dir is None:
                scratch = tempfile.TemporaryDirectory(prefix="tuneforge-bench-decode-")
            checkpoint = save_checkpoint(model, work_dir or scratch.name)
            log(f"saved the model to {checkpoint} for {', '.join(plugin_engines)}")
        for name in plugin_engines:
            log(f"starting the {name} engine ...")
            plugin_engine, run_of[name] = engine_runner(name, checkpoint, device, SHAPES[shape]["vocab_size"], batch_size=max(batch_sizes), options=dict(engine_options or {}))
            engines.append(plugin_engine)
        for batch_size in batch_sizes:
            prompts = prompts_all[:batch_size]
            row: dict[str, Any] = {"batch_size": batch_size}
            for name in runners:
                log(f"batch {batch_size}: {name} ...")
                row[name] = measure(run_of[name], prompts, new_tokens, warmup=warmup + (1 if name == "pt" and compile else 0), repeats=repeats)
            if "generate" in row and "pt" in row:
                same = sum(a == b for a, b in zip(row["generate"]["token_ids"], row["pt"]["token_ids"]))
                row["same_greedy_answers"] = same / batch_size
                # Random bf16 weights give near-ties, so answers may part after a while: how long do they agree?
                row["mean_common_prefix"] = statistics.mean(
                    _common_prefix(a, b) for a, b in zip(row["generate"]["token_ids"], row["pt"]["token_ids"])
                )
                row["speedup"] = row["pt"]["decode_tokens_per_s"] / row["generate"]["decode_tokens_per_s"]
            for name in runners:
                if name not in ("generate", "pt") and "pt" in row:
                    row[name]["speedup_vs_pt"] = row[name]["decode_tokens_per_s"] / row["pt"]["decode_tokens_per_s"]
                    row[name]["same_greedy_answers_as_pt"] = sum(a == b for a, b in zip(row[name]["token_ids"], row["pt"]["token_ids"])) / batch_size
            for name in runners:
                row[name].pop("token_ids")
            log(f"batch {batch_size}: " + ", ".join(f"{name} {row[name]['decode_tokens_per_s']:.1f} decode tokens/s" for name in runners))
            results.append(row)
    finally:
        for running in engines:
            running.close()
        if scratch is not None:
            scratch.cleanup()
    return {
        "shape": shape,
        "config": SHAPES[shape],
        "dtype": dtype,
        "device": torch.cuda.get_device_name(device) if device.startswith("cuda") else platform.processor() or "cpu",
        "compile": compile,
        "runners": list(runners),
        "engine_options": dict(engine_options or {}),
        "engine_checkpoint": checkpoint,
        "new_tokens": new_tokens,
        "prompt_tokens": prompt_tokens,
        "torch": torch.__version__,
        "transformers": __import__("transformers").__version__,
        "results": results,
    }


def table(report: dict) -> str:
    lines = [
        f"{report['shape']} {report['dtype']} on {report['device']}, prompt {report['prompt_tokens']} + {report['new_tokens']} new tokens, pt compile={report['compile']}",
        f"{'batch':>5}  {'runner':<8} {'TTFT ms':>9} {'step ms':>8} {'decode tok/s':>13} {'speedup':>8} {'same':>5} {'prefix':>7}",
    ]
    for row in report["results"]:
        for name in report.get("runners") or ("generate", "pt"):
            if name not in row:
                continue
            r = row[name]
            speedup = f"{row['speedup']:.2f}x" if name == "pt" and "speedup" in row else ""
            if "speedup_vs_pt" in r:
                speedup = f"{r['speedup_vs_pt']:.2f}x pt"
            same = f"{row['same_greedy_answers']:.0%}" if name == "pt" and "same_greedy_answers" in row else ""
            prefix = f"{row['mean_common_prefix']:.1f}" if name == "pt" and "mean_common_prefix" in row else ""
            lines.append(
                f"{row['batch_size']:>5}  {name:<8} {1000 * r['ttft_s']:>9.1f} {r['step_ms']:>8.2f} {r['decode_tokens_per_s']:>13.1f} {speedup:>8} {same:>5} {prefix:>7}"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m tuneforge.bench.decode", description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", choices=sorted(SHAPES), default="tiny", help="model shape (random weights)")
    parser.add_argument("--dtype", choices=("bfloat16", "float16", "float32"), default="bfloat16")
    parser.add_argument("--batch-sizes", default="1,32,128", help="comma-separated batch sizes")
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--prompt-tokens", type=int, default=256)
    parser.add_argument("--device", default=None, help="cuda (when available) or cpu")
    parser.add_argument("--no-compile", action="store_true", help="run the pt engine without its static cache / compiled step")
    parser.add_argument("--runners", default="generate,pt", help="which to run: generate, pt, and any installed engine (lmdeploy, vllm ...)")
    parser.add_argument("--engine-option", action="append", default=[], help="NAME=VALUE (value read as YAML) for the engines --runners names")
    parser.add_argument("--work-dir", default=None, help="where the model is saved for those engines; default: a temporary folder")
    parser.add_argument("--checkpoint", default=None, help="what those engines load instead: a model save_checkpoint wrote, or one made from it (quantized)")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--output", default="bench-decode.json", help="where the JSON report goes")
    args = parser.parse_args(argv)

    import torch

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    batch_sizes = [int(b) for b in args.batch_sizes.split(",") if b.strip()]
    runners = tuple(r.strip() for r in args.runners.split(",") if r.strip())
    if not batch_sizes or min(batch_sizes) < 1:
        parser.error(f"--batch-sizes {args.batch_sizes!r}: give positive integers such as 1,32,128.")
    from ..registry import get_registry

    engines = set(get_registry().names("inference_engines"))
    if unknown := set(runners) - {"generate", "pt"} - engines:
        parser.error(f"--runners: unknown {sorted(unknown)}; choose from generate, pt or an installed engine ({', '.join(sorted(engines - {'pt'})) or 'none'}).")
    import yaml

    engine_options = {}
    for entry in args.engine_option:
        name, sep, value = entry.partition("=")
        if not sep:
            parser.error(f"--engine-option {entry!r} is not NAME=VALUE.")
        engine_options[name.replace("-", "_")] = yaml.safe_load(value)
    if args.new_tokens < 2 or args.prompt_tokens < 1:
        parser.error("--new-tokens must be at least 2 and --prompt-tokens at least 1.")
    report = benchmark(
        shape=args.shape,
        dtype=args.dtype,
        batch_sizes=batch_sizes,
        new_tokens=args.new_tokens,
        prompt_tokens=args.prompt_tokens,
        device=device,
        compile=device.startswith("cuda") and not args.no_compile,
        warmup=args.warmup,
        repeats=args.repeats,
        runners=runners,
        engine_options=engine_options,
        work_dir=args.work_dir,
        checkpoint=args.checkpoint,
        log=lambda message: print(message, file=sys.stderr, flush=True),
    )
    with open(args.output, "w", encoding="utf-8") as handle:
        json.dump(report, handle, indent=2)
    print(table(report))
    print(f"Wrote the full report to {args.output}.", file=sys.stderr)
    return report


if __name__ == "__main__":
    main()
