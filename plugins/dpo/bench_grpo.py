"""GRPO speed on one GPU: steps per second and rollout tokens/s of ``tuneforge rlhf --method grpo`` with LoRA.

    python plugins/dpo/bench_grpo.py --shape qwen2.5-7b [--tokenizer DIR] [--steps 5] [--warmup-steps 1]
        [--prompts-per-step 4] [--num-generations 8] [--prompt-tokens 256] [--completion-tokens 256]
        [--rollout-engine pt|trl] [--work-dir /tmp/grpo-bench] [--output bench-grpo.json]

A random-weight model of the Qwen2.5-7B shape (``tuneforge bench``'s) is built on
the GPU in bf16 and saved with a real tokenizer (``--tokenizer``, default SmolLM2's from
tuneforge's model folder: the GPU machine has no network); the prompts are random words
of that tokenizer, chat-formatted by its template, and a reward file scores each answer
by its number of distinct words, so that groups differ and every step has a gradient.
Random weights never end an answer early: every answer is ``--completion-tokens`` long,
the worst case of ``--max-completion-length``.

Each step samples ``--num-generations`` answers for each of ``--prompts-per-step``
prompts in one batch (``--rollout-engine pt``: tuneforge's pt engine over the policy;
``trl``: trl's own ``generate``), scores them, and takes one
optimizer step over them (LoRA rank 16 on every projection, gradient checkpointing). Reported, after ``--warmup-steps``: seconds per
step (trl's ``step_time``) and steps per second, rollout tokens per second (answer
tokens over the time of the sampling calls alone, timed around trl's sampling method
in this process), the share of a step spent sampling, and the peak GPU memory.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import statistics
import sys
import time
from pathlib import Path

SHAPES = {
    "qwen2.5-7b": dict(vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
                       num_attention_heads=28, num_key_value_heads=4, max_position_embeddings=32768, rms_norm_eps=1e-6,
                       tie_word_embeddings=False),
    # a smoke test of this script on a CPU
    "tiny": dict(vocab_size=49152, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, max_position_embeddings=4096, tie_word_embeddings=True),
}

REWARDS = '''
from tuneforge.api import RewardFunction


def _distinct_words(row, completion):
    return min(len(set(completion.split())), 64) / 64


def tuneforge_reward_functions():
    yield RewardFunction(name="distinct_words", description="distinct words of the answer, up to 64", score=_distinct_words)
'''


def build_base(shape: str, tokenizer_dir: str, path: Path) -> None:
    """A random bf16 model of ``shape`` on the GPU, saved with the tokenizer's files (its special tokens in the config)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, Qwen2Config

    fields = SHAPES[shape]
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir, trust_remote_code=False)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    config = Qwen2Config(**fields, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=pad)
    torch.manual_seed(0)
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16, trust_remote_code=False)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    del model
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def prompt_rows(tokenizer_dir: str, count: int, tokens: int, seed: int = 0) -> list[dict]:
    """``count`` prompts of about ``tokens`` tokens of random words from the tokenizer's vocabulary."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir, trust_remote_code=False)
    words = [w.strip() for w in tokenizer.batch_decode([[i] for i in range(len(tokenizer))]) if w.strip().isalpha()]
    rng = random.Random(seed)
    rows = []
    for _ in range(count):
        text = ""
        while len(tokenizer(text)["input_ids"]) < tokens:
            text += " ".join(rng.choices(words, k=16)) + " "
        rows.append({"messages": [{"role": "user", "content": text.strip()}]})
    return rows


class SamplingTimer:
    """Times trl's sampling calls in this process: seconds and answer tokens of each call."""

    def __init__(self):
        self.calls: list[tuple[float, int]] = []

    def install(self) -> None:
        from tuneforge_dpo.grpo_trainer import TuneforgeGRPOTrainer as GRPOTrainer  # either engine samples through it

        original = GRPOTrainer._generate_single_turn
        timer = self

        def timed(trainer, *args, **kwargs):
            import torch

            if torch.cuda.is_available():
                torch.cuda.synchronize()
            start = time.perf_counter()
            result = original(trainer, *args, **kwargs)
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            timer.calls.append((time.perf_counter() - start, sum(len(ids) for ids in result[0])))
            return result

        GRPOTrainer._generate_single_turn = timed


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="qwen2.5-7b", choices=list(SHAPES))
    parser.add_argument("--tokenizer", default=None, help="a tokenizer folder (default: SmolLM2-135M-Instruct's)")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup-steps", type=int, default=1)
    parser.add_argument("--prompts-per-step", type=int, default=4)
    parser.add_argument("--num-generations", type=int, default=8)
    parser.add_argument("--prompt-tokens", type=int, default=256)
    parser.add_argument("--completion-tokens", type=int, default=256)
    parser.add_argument("--lora-rank", type=int, default=16)
    parser.add_argument("--rollout-engine", default="pt", choices=["pt", "trl"])
    parser.add_argument("--work-dir", default="/tmp/grpo-bench")
    parser.add_argument("--output", default=None)
    args = parser.parse_args(argv)
    if args.steps <= args.warmup_steps:
        raise SystemExit(f"--steps is {args.steps}; give more than --warmup-steps ({args.warmup_steps}).")

    import torch

    sys.path.insert(0, str(Path(__file__).parent))  # the plugin, whether or not pip installed it
    import tuneforge_dpo.plugin
    from tuneforge.testing import plugin_installed, run_cli, smollm2_dir

    work = Path(args.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    tokenizer_dir = args.tokenizer or smollm2_dir()
    base = work / f"{args.shape}-random"
    if not (base / "config.json").exists():
        started = time.monotonic()
        build_base(args.shape, tokenizer_dir, base)
        print(f"built {base} in {time.monotonic() - started:.0f} s", flush=True)
    rows = prompt_rows(tokenizer_dir, args.prompts_per_step * args.steps, args.prompt_tokens)
    (work / "prompts.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    (work / "rewards.py").write_text(REWARDS)
    out = work / "run"
    shutil.rmtree(out, ignore_errors=True)

    timer = SamplingTimer()
    timer.install()
    gpu = torch.cuda.is_available()
    if gpu:
        torch.cuda.reset_peak_memory_stats()
    answers = args.prompts_per_step * args.num_generations
    started = time.monotonic()
    with plugin_installed(tuneforge_dpo.plugin, "dpo", "tuneforge-dpo"):
        run_cli(
            "rlhf", "--method", "grpo", "--model", base, "--dataset", work / "prompts.jsonl", "--output-dir", out,
            "--reward-file", work / "rewards.py", "--reward", "distinct_words",
            "--num-generations", args.num_generations, "--per-device-batch-size", answers,
            "--max-completion-length", args.completion_tokens, "--max-length", args.prompt_tokens + args.completion_tokens + 64,
            "--max-steps", args.steps, "--save-steps", args.steps, "--logging-steps", 1,
            "--lora-rank", args.lora_rank, "--learning-rate", "1e-6", "--rollout-engine", args.rollout_engine,
        )
    wall = time.monotonic() - started
    state = json.loads(next(out.glob("checkpoint-*/trainer_state.json")).read_text())
    steps = [entry for entry in state["log_history"] if "step_time" in entry]
    measured = steps[args.warmup_steps:]
    calls = timer.calls[args.warmup_steps:]
    step_time = statistics.mean(entry["step_time"] for entry in measured)
    sampling_s = sum(seconds for seconds, _ in calls)
    sampled_tokens = sum(tokens for _, tokens in calls)
    report = {
        "shape": f"{args.shape} (random weights, bf16)",
        "method": f"grpo, LoRA rank {args.lora_rank}",
        "rollouts": "trl's generate" if args.rollout_engine == "trl" else f"the pt engine",
        "prompts_per_step": args.prompts_per_step,
        "num_generations": args.num_generations,
        "answers_per_step": answers,
        "prompt_tokens": args.prompt_tokens,
        "completion_tokens": args.completion_tokens,
        "steps_measured": len(measured),
        "seconds_per_step": round(step_time, 2),
        "steps_per_second": round(1 / step_time, 4),
        "rollout_tokens_per_second": round(sampled_tokens / sampling_s, 1),
        "sampling_share_of_step": round(sampling_s / len(calls) / step_time, 3) if calls else None,
        "mean_answer_tokens": round(sampled_tokens / max(len(calls) * answers, 1), 1),
        "rewards": [entry.get("reward") for entry in steps],
        "wall_s_whole_run": round(wall, 1),
        "peak_gpu_allocated_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if gpu else None,
        "peak_gpu_reserved_gib": round(torch.cuda.max_memory_reserved() / 2**30, 2) if gpu else None,
        "gpu": torch.cuda.get_device_name(0) if gpu else None,
    }
    text = json.dumps(report, indent=2)
    print(text)
    if args.output:
        Path(args.output).write_text(text + "\n")
    return report


if __name__ == "__main__":
    main()
