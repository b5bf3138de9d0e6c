"""The command-to-action job of docs/agents.md, end to end: base model, SFT, then GRPO, each measured.

    python plugins/dpo/agents_pipeline.py [--out output/agents] [--stages base,sft,grpo]
        [--splits test,hard] [--constrained-splits test] [--limit N] [--sft-epochs 3]
        [--grpo-steps 100] [--grpo-learning-rate 2e-5] [--grpo-lr-scheduler cosine]
        [--grpo-temperature 1.0] [--grpo-num-iterations 1]
        [--grpo-name grpo] [--grpo-beta 0] [--grpo-gradient-accumulation-steps 1]
        [--grpo-torch-dtype float32] [--grpo-scale-rewards group]
        [--grpo-loss-type dapo] [--grpo-rewards json_valid,action_match:2,argument_f1]
        [--grpo-refusal-share S] [--sft-holdout N] [--grpo-split rl] [--sft-extra-split rl]
        [--save-steps 50] [--save-total-limit 2] [--grpo-seed N]
        [--model smollm2-135m-instruct]

Each stage is the `tuneforge` command docs/agents.md shows, run as a user runs it
(``tuneforge eval``, ``tuneforge sft``, ``tuneforge rlhf --method grpo``, all with
``--template chatml --allow-template-drift``, so the tools are in every prompt):

1. ``base``: the model as it comes;
2. ``sft``: LoRA on the ``device-actions`` training split (``OUT/sft``);
3. ``grpo``: GRPO from the SFT adapter with the built-in rewards (``OUT/grpo``;
   ``--grpo-name`` names another directory, and its rows in the table, so that
   several GRPO settings can follow one SFT run).

``--grpo-split rl`` has GRPO sample the dataset's ``rl`` split (400 commands drawn as
the training split's are, none of them in it) instead of the training split: SFT
learns from all 360 training commands, and GRPO then meets commands whose answers
the SFT model has not learnt by heart. ``--sft-holdout N`` does the same within the
training split: it keeps N of its rows (drawn with a fixed seed) from SFT, and GRPO
samples those only; give it to both stages' runs. ``--sft-extra-split rl`` is the
comparison GRPO must beat: SFT on the training split and the same extra commands,
with their reference answers.

After each stage the model answers every split in ``--splits`` unconstrained, and
those in ``--constrained-splits`` with ``--constrained`` too; the answers and the
scores go to ``OUT/answers/STAGE-SPLIT[-constrained].jsonl`` (and their
``.summary.json``). A stage whose output is there already is skipped, so an
interrupted run (or a run spread over several calls of a time-limited machine)
goes on where it stopped; a training stage cut off mid-way resumes from its last
checkpoint (``--save-steps``). The last lines print the four metrics of every stage and
split as a table, then GRPO's changes against SFT on each split, command by command
(``changes``), and ``OUT/figures.json`` keeps them with the time of each step.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import shlex
import subprocess
import sys
import time
from pathlib import Path

TEMPLATE = ["--template", "chatml", "--allow-template-drift"]
METRICS = ("valid_json_rate", "action_accuracy", "argument_f1", "refusal_accuracy")
STAGES = ("base", "sft", "grpo")
# the bundled split in this checkout (this script runs from the repository, as docs/agents.md shows)
TRAIN_SPLIT = Path(__file__).resolve().parents[2] / "core" / "tuneforge" / "datasets" / "device_actions" / "train.jsonl"


def tuneforge(*args: str) -> float:
    """Run one tuneforge command (its output streams through); the seconds it took."""
    command = [sys.executable, "-m", "tuneforge", *args]
    print("+ tuneforge " + " ".join(shlex.quote(a) for a in args), flush=True)
    start = time.perf_counter()
    subprocess.run(command, check=True)
    return time.perf_counter() - start


def check_refusal_share(refusal_share: float) -> None:
    if not 0 < refusal_share < 1:
        raise SystemExit(f"--grpo-refusal-share {refusal_share} is not a share; give one between 0 and 1, e.g. 0.3.")


def load_split(split: str) -> list[dict]:
    path = TRAIN_SPLIT.with_name(f"{split}.jsonl")
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def training_rows() -> list[dict]:
    return load_split("train")


def split_for_holdout(holdout: int) -> tuple[list[dict], list[dict]]:
    """The training split cut in two: the rows SFT learns from, and ``holdout`` rows (drawn with a fixed
    seed) that only GRPO samples. An SFT model has seen the answers of the rows it trained on, so GRPO's
    groups there are mostly unanimous and teach nothing; on rows it has not seen, it errs as it does on
    new commands."""
    rows = training_rows()
    if not 0 < holdout < len(rows):
        raise SystemExit(f"--sft-holdout {holdout} leaves no rows to one of the stages; give a count between 1 and "
                         f"{len(rows) - 1} (the training split has {len(rows)} rows), e.g. 120.")
    held = set(random.Random(0).sample(range(len(rows)), holdout))
    return [r for i, r in enumerate(rows) if i not in held], [r for i, r in enumerate(rows) if i in held]


def write_rows(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def grpo_prompts(path: Path, refusal_share: float, rows: list[dict] | None = None) -> Path:
    """The training split (or ``rows`` of it) with its commands to refuse repeated until they are
    ``refusal_share`` of the rows.

    The split's own share is 17% (61 of 360); on the other rows a sampled refusal scores below
    its group, so GRPO pushes refusing down everywhere unless enough rows reward it.
    """
    check_refusal_share(refusal_share)
    rows = list(training_rows() if rows is None else rows)
    refusals = [row for row in rows if "refusal" in row["meta"]["phenomena"]]
    wanted = round(refusal_share * (len(rows) - len(refusals)) / (1 - refusal_share))
    rows += [refusals[i % len(refusals)] for i in range(max(0, wanted - len(refusals)))]
    write_rows(path, rows)
    print(f"{path}: {len(rows)} prompts, {max(wanted, len(refusals))} of them commands to refuse", flush=True)
    return path


def sft_datasets(args: argparse.Namespace, out: Path, sft_rows: list[dict] | None) -> list[str]:
    """The ``--dataset`` values of the SFT stage (a file of the rows it keeps under ``--sft-holdout``)."""
    specs = ["device-actions" if sft_rows is None else str(write_rows(out / "sft-rows.jsonl", sft_rows))]
    if args.sft_extra_split is not None:
        specs.append(f"device-actions:{args.sft_extra_split}")
    return specs


def grpo_dataset(args: argparse.Namespace, out: Path, grpo_rows: list[dict] | None) -> str:
    """The ``--dataset`` of the GRPO stage: a split, or a file of its prompts (held-out rows, more refusals)."""
    rows = load_split(args.grpo_split) if args.grpo_split != "train" else grpo_rows
    if args.grpo_refusal_share is not None:
        return str(grpo_prompts(out / f"{args.grpo_name}-prompts.jsonl", args.grpo_refusal_share, rows))
    if grpo_rows is not None:
        return str(write_rows(out / f"{args.grpo_name}-prompts.jsonl", grpo_rows))
    return f"device-actions:{args.grpo_split}"


def changes(before: Path, after: Path) -> dict:
    """Command by command, from the answers ``before`` to those ``after`` (two ``tuneforge eval --output``
    files of one split): how many tool commands went right and how many went wrong, and the two-sided sign
    test's p of so many or more in one direction if either were as likely (the commands that changed).

    At ~85 commands a split, two models' accuracies differ by a few commands by chance; the changes,
    not the two accuracies, say whether one is better."""

    def right(path: Path) -> dict[str, bool]:
        rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        return {row["meta"]["id"]: bool(row["scores"]["action_match"]) for row in rows
                if not row["scores"].get("expects_refusal")}

    old, new = right(before), right(after)
    if old.keys() != new.keys():
        raise SystemExit(f"{before} and {after} answer different commands; compare two answers of one split "
                         "with the same --limit.")
    gained = sum(new[i] and not old[i] for i in old)
    lost = sum(old[i] and not new[i] for i in old)
    n = gained + lost
    tail = sum(math.comb(n, i) for i in range(min(gained, lost) + 1)) / 2**n
    return {"right": gained, "wrong": lost, "commands": len(old), "p": min(1.0, 2 * tail)}


def grpo_command(args: argparse.Namespace, sft: str, prompts: str, output_dir: str, common: list[str]) -> list[str]:
    """The ``tuneforge rlhf --method grpo`` arguments of the GRPO stage, from the SFT adapter ``sft``.

    A step learns from ``--grpo-batch-size`` x ``--grpo-gradient-accumulation-steps`` answers, all
    sampled before the step, ``--num-generations`` to a command: 32 x 4 is 16 commands a step.
    """
    return [
        "rlhf", "--method", "grpo", "--model", sft, "--dataset", prompts, *TEMPLATE,
        "--reward", args.grpo_rewards,
        "--num-generations", str(args.num_generations), "--per-device-batch-size", str(args.grpo_batch_size),
        "--gradient-accumulation-steps", str(args.grpo_gradient_accumulation_steps),
        "--max-completion-length", str(args.max_new_tokens), "--learning-rate", str(args.grpo_learning_rate),
        "--lr-scheduler", args.grpo_lr_scheduler, "--num-iterations", str(args.grpo_num_iterations),
        "--temperature", str(args.grpo_temperature), "--beta", str(args.grpo_beta), *common,
        "--scale-rewards", args.grpo_scale_rewards, "--loss-type", args.grpo_loss_type,
        "--torch-dtype", args.grpo_torch_dtype, *(["--seed", str(args.grpo_seed)] if args.grpo_seed is not None else []),
        "--max-steps", str(args.grpo_steps), "--logging-steps", "5", "--output-dir", output_dir,
    ]


def checkpoint_options(args: argparse.Namespace, output_dir: Path) -> list[str]:
    """Both training stages' checkpoint options; a stage cut off (a time-limited machine's call) resumes."""
    resume = ["--resume"] if any(output_dir.glob("checkpoint-*")) else []
    return ["--save-steps", str(args.save_steps), "--save-total-limit", str(args.save_total_limit), *resume]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The options, checked before any stage runs (a clash or a count that leaves a stage nothing stops here)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="output/agents")
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--stages", default=",".join(STAGES))
    parser.add_argument("--splits", default="test,hard")
    parser.add_argument("--constrained-splits", default="test")
    parser.add_argument("--limit", type=int, default=None, help="answer at most this many rows of each split")
    parser.add_argument("--max-new-tokens", type=int, default=96)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--sft-epochs", type=float, default=3)
    parser.add_argument("--sft-max-steps", type=int, default=-1)
    parser.add_argument("--sft-batch-size", type=int, default=8)
    parser.add_argument("--grpo-steps", type=int, default=100)
    parser.add_argument("--grpo-learning-rate", type=float, default=2e-5)
    parser.add_argument("--num-generations", type=int, default=8)
    parser.add_argument("--grpo-batch-size", type=int, default=32)
    # float32 on the CPU (bfloat16 gains nothing there); on a GPU bfloat16 takes 11-12 s a step against
    # float32's 18-23 (docs/agents.md). Its earlier NaN stops came from cuDNN's attention backward, which
    # training on CUDA turns off (docs/hardware.md)
    parser.add_argument("--grpo-torch-dtype", default="float32", choices=["float32", "bfloat16"],
                        help="GRPO's --torch-dtype (bfloat16: about 1.7x faster a step on a GPU)")
    parser.add_argument("--grpo-gradient-accumulation-steps", type=int, default=1,
                        help="GRPO's --gradient-accumulation-steps: a step learns from this many batches of answers")
    parser.add_argument("--grpo-temperature", type=float, default=1.0)
    parser.add_argument("--grpo-num-iterations", type=int, default=1,
                        help="GRPO's --num-iterations: optimizer steps on each batch of sampled answers (2 samples "
                             "every other step; --grpo-steps counts optimizer steps)")
    parser.add_argument("--grpo-lr-scheduler", default="cosine", choices=["cosine", "linear", "constant", "constant_with_warmup"],
                        help="GRPO's --lr-scheduler (cosine: the rate is under half the set one for the second half of the run)")
    parser.add_argument("--grpo-name", default="grpo")
    parser.add_argument("--grpo-seed", type=int, default=None, help="GRPO's seed (sampling, data order), to repeat a run")
    parser.add_argument("--grpo-beta", type=float, default=0.0, help="GRPO's KL weight to the SFT model (0: none)")
    parser.add_argument("--grpo-scale-rewards", default="group", choices=["group", "batch", "none"],
                        help="GRPO's --scale-rewards")
    parser.add_argument("--grpo-rewards", default="json_valid,action_match:2,argument_f1",
                        help="GRPO's --reward: NAME[:WEIGHT], comma-separated (tuneforge list rewards), e.g. "
                             "json_valid,action_f1:2,argument_f1 to credit each right tool of a two-action command")
    parser.add_argument("--grpo-loss-type", default="dapo", choices=["grpo", "dr_grpo", "dapo", "gspo"],
                        help="GRPO's --loss-type")
    parser.add_argument("--grpo-refusal-share", type=float, default=None,
                        help="repeat the training split's commands to refuse until they are this share of GRPO's prompts")
    parser.add_argument("--sft-holdout", type=int, default=None,
                        help="keep this many training rows from SFT for GRPO alone to sample (the same rows for both stages)")
    parser.add_argument("--grpo-split", default="train", choices=["train", "rl"],
                        help="the device-actions split GRPO samples (rl: commands SFT did not train on)")
    parser.add_argument("--sft-extra-split", default=None, choices=["rl"],
                        help="SFT on this split's commands too (with their answers), beside the training split")
    parser.add_argument("--save-steps", type=int, default=50, help="checkpoint every N steps (a stage cut off resumes from the last)")
    parser.add_argument("--save-total-limit", type=int, default=2,
                        help="keep this many checkpoints of a stage (more to score a run step by step: tuneforge eval "
                             "--model OUT/grpo/checkpoint-N)")
    args = parser.parse_args(argv)
    if args.grpo_refusal_share is not None:
        check_refusal_share(args.grpo_refusal_share)
    if args.grpo_split != "train" and args.sft_holdout is not None:
        parser.error(f"--grpo-split {args.grpo_split} and --sft-holdout both choose GRPO's commands; give one of them.")
    if args.sft_extra_split is not None and args.sft_holdout is not None:
        parser.error(f"--sft-extra-split {args.sft_extra_split} and --sft-holdout both change SFT's rows; give one of them.")
    args.stages = [stage for stage in args.stages.split(",") if stage]
    unknown = sorted(set(args.stages) - set(STAGES))
    if unknown:
        parser.error(f"--stages names {', '.join(unknown)}; choose among {', '.join(STAGES)}")
    if "grpo" in args.stages:  # an unknown reward stops here, not after the SFT stage
        from tuneforge.api import TuneforgeError, combine_rewards

        try:
            combine_rewards(args.grpo_rewards)
        except TuneforgeError as exc:
            parser.error(f"--grpo-rewards {args.grpo_rewards}: {exc}")
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    # the split is drawn once, before any stage runs (a count that leaves a stage nothing stops here)
    sft_rows, grpo_rows = split_for_holdout(args.sft_holdout) if args.sft_holdout is not None else (None, None)

    out = Path(args.out)
    (out / "answers").mkdir(parents=True, exist_ok=True)
    figures_path = out / "figures.json"
    figures = json.loads(figures_path.read_text()) if figures_path.is_file() else {"seconds": {}, "scores": {}}
    models = {"base": args.model, "sft": str(out / "sft"), "grpo": str(out / args.grpo_name)}
    labels = {"base": "base", "sft": "sft", "grpo": args.grpo_name}

    def save() -> None:
        figures_path.write_text(json.dumps(figures, indent=2) + "\n")

    def train(stage: str) -> None:
        done = Path(models[stage]) / "tuneforge_run.json"
        if done.is_file():
            print(f"{models[stage]} is there already; not training it again", flush=True)
            return
        common = checkpoint_options(args, Path(models[stage]))
        if stage == "sft":
            datasets = [a for spec in sft_datasets(args, out, sft_rows) for a in ("--dataset", spec)]
            seconds = tuneforge(
                "sft", "--model", args.model, *datasets, *TEMPLATE,
                "--lora-rank", "16", "--lora-alpha", "32", "--learning-rate", "5e-4",
                "--per-device-batch-size", str(args.sft_batch_size), "--num-train-epochs", str(args.sft_epochs),
                "--max-steps", str(args.sft_max_steps), "--logging-steps", "5", *common,
                "--output-dir", models["sft"],
            )
        else:
            seconds = tuneforge(*grpo_command(args, models["sft"], grpo_dataset(args, out, grpo_rows), models["grpo"], common))
        figures["seconds"][f"train-{labels[stage]}"] = round(seconds, 1)
        save()

    def answer(stage: str) -> None:
        runs = [(split, False) for split in args.splits.split(",") if split]
        runs += [(split, True) for split in args.constrained_splits.split(",") if split]
        for split, constrained in runs:
            name = f"{labels[stage]}-{split}" + ("-constrained" if constrained else "")
            output = out / "answers" / f"{name}.jsonl"
            summary = output.with_name(output.stem + ".summary.json")
            if not summary.is_file():
                extra = ["--constrained"] if constrained else []
                extra += ["--limit", str(args.limit)] if args.limit else []
                seconds = tuneforge(
                    "eval", "--model", models[stage], "--dataset", "device-actions", "--split", split, *TEMPLATE,
                    "--max-new-tokens", str(args.max_new_tokens), "--batch-size", str(args.batch_size),
                    "--output", str(output), *extra,
                )
                figures["seconds"][f"eval-{name}"] = round(seconds, 1)
            scores = json.loads(summary.read_text())["scores"]
            figures["scores"][name] = {key: scores.get(key) for key in (*METRICS, "rows")}
            save()

    for stage in args.stages:
        if stage != "base":
            train(stage)
        answer(stage)

    print("\nstage  split               " + "  ".join(f"{m:>16}" for m in METRICS))
    for name, scores in figures["scores"].items():
        stage, _, split = name.partition("-")
        cells = "  ".join(f"{'' if scores.get(m) is None else f'{100 * scores[m]:.1f}%':>16}" for m in METRICS)
        print(f"{stage:<6} {split:<19} {cells}")
    # GRPO against the SFT adapter it continued (whose answers a grid run finds beside that adapter)
    sft_answers = [out / "answers", Path(models["sft"]).resolve().parent / "answers"]
    for name in [n for n in figures["scores"] if n.startswith(f"{labels['grpo']}-")]:
        split = name[len(labels["grpo"]) + 1:]
        before = next((d / f"sft-{split}.jsonl" for d in sft_answers if (d / f"sft-{split}.jsonl").is_file()), None)
        if before is not None:
            change = figures.setdefault("changes", {})[name] = changes(before, out / "answers" / f"{name}.jsonl")
            save()
            print(f"{name} against sft-{split}: {change['right']} of {change['commands']} commands right that were "
                  f"wrong, {change['wrong']} wrong that were right (sign test p = {change['p']:.2f})")
    print(f"figures: {figures_path}")
    return figures


if __name__ == "__main__":
    main()
