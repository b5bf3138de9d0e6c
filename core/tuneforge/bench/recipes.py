"""Compare training recipes for the quickstart's meeting-minutes task: what each gets right on held-out meetings.

    python -m tuneforge.bench.recipes [--out output/recipes] [--recipes NAME,...] [--splits hard,test]
        [--limit 50] [--model smollm2-135m-instruct] [--list]

Each recipe is the quickstart's (``tuneforge.quickstart.RECIPE``, 80 steps) with some of
its settings changed. For each one, ``tuneforge sft`` trains SmolLM2 with it on the
bundled ``meeting-minutes`` training split (with ``train-long``'s long meetings beside it for
``long-steps160``) and ``tuneforge eval`` answers the held-out
splits (``--limit`` rows each, the quickstart's 320 new tokens, 1024 for the ``long`` split, whose
minutes are longer); the content figures of
every recipe and split are printed as one table and kept in ``OUT/recipes.json`` with
the number of tokens each recipe trained on (what its training costs on a CPU, where a
step's time grows with its tokens) and its wall times. A recipe already measured in
``OUT`` is not run again. It runs on any device; on a GPU a recipe takes about a minute.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

from tuneforge.quickstart import CONTENT_COLUMNS, MAX_NEW_TOKENS, MEETING_MINUTES, RECIPE

LONG_MIX = [MEETING_MINUTES.dataset, f"{MEETING_MINUTES.dataset}:train-long"]
# the long split's minutes run to about 900 tokens (13 action items where a test meeting has 3)
MAX_NEW_TOKENS_OF = {"long": 1024}
# name: (the settings changed from the quickstart's recipe, max_steps); "quickstart" is the default (80 steps, as "steps80")
RECIPES: dict[str, tuple[dict, int]] = {
    "quickstart": ({}, MEETING_MINUTES.max_steps),
    "steps40": ({}, 40),  # the default until 2026-12-03
    "len2048": ({"max_length": 2048}, 40),
    "steps80": ({}, 80),
    "lr2e-3": ({"learning_rate": 2e-3}, 40),
    "lr5e-4-steps80": ({"learning_rate": 5e-4}, 80),
    "rank64": ({"lora_rank": 64, "lora_alpha": 64}, 40),
    "batch2": ({"per_device_batch_size": 2}, 40),
    "len2048-steps80": ({"max_length": 2048}, 80),
    # for splits written by `generate --calendar`: the calendar's 241 tokens push six training rows past 2048
    "len2304": ({"max_length": 2304}, 40),
    "len2048-steps160": ({"max_length": 2048}, 160),
    # the 40 long training meetings (2,800-6,500 tokens) beside the 320 others, at SmolLM2's context
    "long-steps160": ({"dataset": LONG_MIX, "max_length": 8192}, 160),
    "epoch": ({"max_length": 2048}, 320),
    # every weight trained (no LoRA): the 135M model's 270 MB of weights, AdamW's state beside them
    "full": ({"train_type": "full", "learning_rate": 1e-4}, 40),
    "full-lr3e-4": ({"train_type": "full", "learning_rate": 3e-4}, 40),
    "full-steps80": ({"train_type": "full", "learning_rate": 1e-4}, 80),
}
def recipe_settings(settings: dict) -> dict:
    """The quickstart's recipe with a variant's settings over it, without the options of the
    quickstart's tuner that the variant's tuner does not take (LoRA's rank under full fine-tuning)."""
    recipe = {**RECIPE, **settings}
    if recipe["train_type"] != RECIPE["train_type"]:
        for key in _tuner_options(RECIPE["train_type"]) - _tuner_options(recipe["train_type"]):
            recipe.pop(key, None)
    return recipe


def _tuner_options(name: str) -> set[str]:
    """The option names a tuner's record declares."""
    from ..registry import get_registry

    record = get_registry().get("tuners", name)
    return {f.name for f in dataclasses.fields(record.options)} if record.options is not None else set()


def flags(settings: dict) -> list[str]:
    """The ``tuneforge sft`` flags of a recipe's settings."""
    out = []
    for key, value in settings.items():
        flag = "--" + key.replace("_", "-")
        if isinstance(value, bool):
            out.append(flag if value else "--no-" + key.replace("_", "-"))
        elif isinstance(value, (list, tuple)):  # a list option's flag is repeated, once per item
            for item in value:
                out += [flag, str(item)]
        else:
            out += [flag, str(value)]
    return out


def tuneforge(*args: str) -> float:
    print("+ tuneforge " + " ".join(shlex.quote(a) for a in args), flush=True)
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "tuneforge", *args], check=True)
    return time.perf_counter() - start


def trained(run_dir: Path, steps: int, batch: int) -> tuple[int, int | None]:
    """The rows the run could train on, and about how many tokens it trained on (its steps' samples
    times the mean sample's tokens), from its run record."""
    train = json.loads((run_dir / "tuneforge_run.json").read_text())["data"].get("train") or {}
    samples = train.get("samples") or 0
    return samples, (round(steps * batch * train["tokens"] / samples) if samples else None)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="output/recipes")
    parser.add_argument("--model", default=MEETING_MINUTES.model)
    parser.add_argument("--recipes", default=",".join(RECIPES))
    parser.add_argument("--splits", default="hard,test")
    parser.add_argument("--limit", type=int, default=50)
    parser.add_argument("--batch-size", type=int, default=25)
    parser.add_argument("--max-steps", type=int, default=None, help="train every recipe this many steps instead of its own (a smoke test)")
    parser.add_argument("--list", action="store_true", help="print the recipes and stop")
    args = parser.parse_args(argv)
    if args.list:
        for name, (settings, steps) in RECIPES.items():
            print(f"{name}: {steps} steps, " + " ".join(flags(settings)))
        return {}
    names = [n for n in args.recipes.split(",") if n]
    unknown = [n for n in names if n not in RECIPES]
    if unknown:
        parser.error(f"--recipes names {', '.join(unknown)}; choose among {', '.join(RECIPES)}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "recipes.json"
    results = json.loads(path.read_text()) if path.is_file() else {}
    for name in names:
        settings, steps = RECIPES[name]
        steps = args.max_steps or steps
        run_dir = out / name
        entry = results.setdefault(name, {"settings": settings, "max_steps": steps, "seconds": {}, "scores": {}})
        if not (run_dir / "tuneforge_run.json").is_file():
            recipe = recipe_settings(settings)
            recipe.pop("save_steps", None), recipe.pop("save_total_limit", None)
            recipe.setdefault("dataset", [MEETING_MINUTES.dataset])
            entry["seconds"]["train"] = round(tuneforge(
                "sft", "--model", args.model, *flags(recipe),
                "--max-steps", str(steps), "--save-steps", str(10 * steps), "--output-dir", str(run_dir)), 1)
        entry["trained_rows"], entry["trained_tokens"] = trained(run_dir, steps, {**RECIPE, **settings}["per_device_batch_size"])
        for split in args.splits.split(","):
            answers = out / f"{name}-{split}.jsonl"
            summary = answers.with_name(answers.stem + ".summary.json")
            if not summary.is_file():
                entry["seconds"][f"eval-{split}"] = round(tuneforge(
                    "eval", "--model", str(run_dir), "--dataset", MEETING_MINUTES.dataset, "--split", split,
                    "--limit", str(args.limit), "--max-new-tokens", str(MAX_NEW_TOKENS_OF.get(split, MAX_NEW_TOKENS)),
                    "--batch-size", str(args.batch_size), "--output", str(answers)), 1)
            scores = json.loads(summary.read_text())["scores"]
            entry["scores"][split] = {key: scores.get(key) for key, _ in CONTENT_COLUMNS}
        path.write_text(json.dumps(results, indent=2) + "\n")

    head = f"{'recipe':<18} {'split':<5} {'tokens':>8} " + " ".join(f"{title:>15}" for _, title in CONTENT_COLUMNS)
    print("\n" + head)
    for name, entry in results.items():
        for split, scores in entry["scores"].items():
            cells = " ".join(f"{'' if scores.get(k) is None else f'{100 * scores[k]:.0f}%':>15}" for k, _ in CONTENT_COLUMNS)
            print(f"{name:<18} {split:<5} {entry.get('trained_tokens') or '':>8} {cells}")
    print(f"figures: {path}")
    return results


if __name__ == "__main__":
    main()
