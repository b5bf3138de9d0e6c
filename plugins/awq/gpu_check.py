"""Time ``tuneforge export --format awq`` on the Qwen2.5-7B shape (or ``AWQ_SHAPE``; random weights) on one GPU.

Run by ``gpu_check.sh`` (which installs the wheels first), in stages that each fit in a
few minutes, on a work folder that stays between them (default /tmp/awq-check):

- ``prepare``: a random-weight Qwen2.5-7B (bf16, built on the GPU), a byte-level BPE
  tokenizer trained here on the generated rows (the machine has no network), 256 chat
  rows, and one LoRA step of ``tuneforge sft`` on them: the run to export;
- ``export``: ``tuneforge export --format awq`` (or ``gptq``) of that run, with the wall
  time of each step (merge, quantize, measure), the peak GPU memory and the peak
  resident memory of the process, written as JSON to ``$OUT`` (or the work folder).

Random weights say nothing about quality: the quality report's figures are not the
point here, its cost is.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time
from pathlib import Path

WORK = Path(os.environ.get("AWQ_CHECK_DIR", "/tmp/awq-check"))
QWEN25_7B = dict(
    vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
    num_key_value_heads=4, max_position_embeddings=32768, rope_theta=1000000.0, rms_norm_eps=1e-6, tie_word_embeddings=False,
)
# AWQ_SHAPE=qwen2.5-1.5b: the same steps on a smaller real shape, in a third of the time (a quick check that a
# server loads the export; LMDeploy's AWQ loader refuses tiny shapes).
QWEN25_1_5B = dict(
    QWEN25_7B, vocab_size=151936, hidden_size=1536, intermediate_size=8960, num_attention_heads=12, num_key_value_heads=2,
    tie_word_embeddings=True,
)
SHAPES = {"qwen2.5-7b": QWEN25_7B, "qwen2.5-1.5b": QWEN25_1_5B}
SHAPE = os.environ.get("AWQ_SHAPE", "qwen2.5-7b")
# Without a GPU (a smoke test of this script on a CPU machine) the same steps run on a tiny shape.
TINY = dict(QWEN25_7B, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)
CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def rows() -> list[dict]:
    topics = ["the budget", "the launch plan", "hiring", "the office move", "customer support", "the roadmap"]
    out = []
    for i in range(256):
        topic = topics[i % len(topics)]
        out.append({"messages": [
            {"role": "user", "content": f"Summarise meeting {i}: we discussed {topic} and agreed on next steps. " * 6},
            {"role": "assistant", "content": f"Meeting {i}: {topic} discussed; owner team {i % 7}; due day {i % 28 + 1}. " * 4},
        ]})
    return out


def tokenizer(texts: list[str]):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    special = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=4000, special_tokens=special, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    fast = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|im_end|>", pad_token="<|endoftext|>", bos_token=None)
    fast.chat_template = CHATML
    return fast


def prepare() -> None:
    import torch
    from transformers import AutoModelForCausalLM, Qwen2Config

    from tuneforge.testing import run_cli

    WORK.mkdir(parents=True, exist_ok=True)
    data = rows()
    (WORK / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in data))
    if SHAPE not in SHAPES:
        raise SystemExit(f"AWQ_SHAPE is {SHAPE!r}; use one of {', '.join(SHAPES)}")
    base = WORK / f"{SHAPE}-random"
    if not (base / "config.json").exists():
        started = time.monotonic()
        tok = tokenizer([m["content"] for r in data for m in r["messages"]])
        shape = SHAPES[SHAPE] if torch.cuda.is_available() else TINY
        config = Qwen2Config(**shape, bos_token_id=None, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
        torch.manual_seed(0)
        with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
            model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16, trust_remote_code=False)
        model.save_pretrained(base)
        tok.save_pretrained(base)
        del model
        torch.cuda.empty_cache()
        print(f"built {base} in {time.monotonic() - started:.0f} s")
    run = WORK / f"run-{SHAPE}"
    if not (run / "tuneforge_run.json").exists():
        started = time.monotonic()
        run_cli("sft", "--model", base, "--dataset", WORK / "rows.jsonl", "--output-dir", run, "--max-steps", 1,
                "--per-device-batch-size", 1, "--save-steps", 100, "--max-length", 512, "--val-split-ratio", 0.125,
                "--template", "chatml", "--allow-template-drift")
        print(f"trained {run} in {time.monotonic() - started:.0f} s")


def export(method: str, samples: int) -> dict:
    import torch

    from tuneforge.testing import run_cli

    gpu = torch.cuda.is_available()
    group = int(os.environ.get("AWQ_GROUP_SIZE") or (128 if gpu else 32))
    symmetric = os.environ.get("AWQ_SYMMETRIC", "") not in ("", "0")
    target = WORK / f"{SHAPE}-{method}-{samples}-g{group}{'-sym' if symmetric else ''}"
    if target.exists():
        import shutil

        shutil.rmtree(target)
    if gpu:
        torch.cuda.reset_peak_memory_stats()
    started = time.monotonic()
    result = run_cli("export", "--model", WORK / f"run-{SHAPE}", "--format", method, "--output-dir", target, "--group-size", group,
                     "--symmetric" if symmetric else "--no-symmetric",
                     "--num-calibration-samples", samples, "--calibration-max-length", 512, ok=False)
    wall = time.monotonic() - started
    summary = {
        "shape": f"{SHAPE} (random weights, bf16)" if gpu else "tiny qwen2 (no GPU: a smoke test of the script)",
        "format": method,
        "group_size": group,
        "symmetric": symmetric,
        "checkpoint": str(target),
        "calibration": f"{samples} rows x up to 512 tokens",
        "exit_code": result.exit_code,
        "wall_s": round(wall, 1),
        "peak_gpu_allocated_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if gpu else None,
        "peak_gpu_reserved_gib": round(torch.cuda.max_memory_reserved() / 2**30, 2) if gpu else None,
        "peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
        "gpu": torch.cuda.get_device_name(0) if gpu else None,
    }
    if result.exit_code == 0:
        record = json.loads((target / "tuneforge_export.json").read_text())
        summary["seconds"] = record["seconds"]
        summary["quality"] = record["quality"]
        summary["size_gib"] = round(sum(p.stat().st_size for p in target.glob("*.safetensors")) / 2**30, 2)
    else:
        summary["output_tail"] = result.output[-3000:]
    return summary


def main(argv: list[str]) -> None:
    sys.path.insert(0, str(Path(__file__).parent))  # the plugin, whether or not pip installed it
    import tuneforge_awq.plugin
    from tuneforge.testing import plugin_installed

    stage = argv[1] if len(argv) > 1 else "all"
    method = argv[2] if len(argv) > 2 else "awq"
    samples = int(argv[3]) if len(argv) > 3 else 64
    with plugin_installed(tuneforge_awq.plugin, "awq", "tuneforge-awq"):
        if stage in ("prepare", "all"):
            prepare()
        summary = export(method, samples) if stage in ("export", "all") else None
    if summary is not None:
        text = json.dumps(summary, indent=2)
        print(text)
        out = Path(os.environ.get("OUT") or WORK)
        out.mkdir(parents=True, exist_ok=True)
        (out / f"{Path(summary['checkpoint']).name}.json").write_text(text + "\n")


if __name__ == "__main__":
    main(sys.argv)
