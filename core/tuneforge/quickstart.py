"""`tuneforge quickstart`: a bundled job, end to end.

By default (``--task meeting-minutes``) it answers held-out meeting transcripts with
the base SmolLM2, fine-tunes it with LoRA on the bundled meeting-minutes data, answers
the same transcripts again and prints how many minutes follow the structure before and
after, and a table of their content (owners, due dates, whole action items, decisions,
invented owners) on the plain and the hard held-out split. Plugins add other tasks (``QuickstartTask`` records; ``tuneforge list tasks``):
each names its model, dataset, recipe and held-out splits, reported one by one. Each
step is the same code path as the command of the same name; an interrupted quickstart
resumes from its last checkpoint.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from . import options
from .config import DEFAULT_DATASET, DEFAULT_MODEL, EvalConfig, SFTConfig
from .options import option
from .records import QuickstartTask

DEFAULT_TASK = "meeting-minutes"


@dataclass
class QuickstartConfig:
    task: str = option(DEFAULT_TASK, "The job to run (tuneforge list tasks): its model, dataset, recipe and held-out splits.")
    output_dir: Optional[str] = option(None, "Where the fine-tuned model, the answers and the report go (default: output/quickstart, or output/quickstart-TASK for another task).")
    max_steps: Optional[int] = option(None, "LoRA training steps, one row each (default: the task's, 80 for meeting-minutes).")
    eval_limit: Optional[int] = option(None, "Held-out rows answered before and after fine-tuning, per split (default: the task's, 12 per split for meeting-minutes).")
    skip_base: bool = option(False, "Skip answering with the base model.")
    device: str | None = option(None, "Device name (default: the best available).")


# The recipe: chosen so the whole job finishes in about 20 minutes on two CPU cores
# (a step over one ~800-token transcript takes ~13 s there).
RECIPE = dict(
    train_type="lora",
    lora_rank=16,
    lora_alpha=32,
    lora_dropout=0.0,
    target_modules=["all-linear"],
    learning_rate=1e-3,
    lr_scheduler="cosine",
    warmup_ratio=0.05,
    per_device_batch_size=1,
    gradient_accumulation_steps=1,
    max_length=2048,  # every training meeting fits (1024 left out 147 of 320, the longest and hardest)
    truncation="drop",
    packing=False,
    logging_steps=5,
    save_steps=10,
    save_total_limit=2,
)
MAX_NEW_TOKENS = 320

MEETING_MINUTES = QuickstartTask(
    name=DEFAULT_TASK,
    description="Fine-tune SmolLM2 to write meeting minutes in a fixed structure",
    model=DEFAULT_MODEL,
    dataset=DEFAULT_DATASET,
    recipe=RECIPE,
    eval_splits=("test", "hard"),
    max_steps=80,  # the most content on the hard split in the README command's 30 minutes (docs/quickstart.md)
    eval_limit=12,  # per split: 12 test + 12 hard rows cost what 24 test rows did
    max_new_tokens=MAX_NEW_TOKENS,
)


def _evaluate(model: str, task: QuickstartTask, split: str, limit: int, config: QuickstartConfig, answers: Path) -> dict:
    from .evaluation import run_eval

    summary = run_eval(
        options.build(
            EvalConfig,
            dict(
                model=model,
                dataset=task.dataset,
                split=split,
                limit=limit,
                max_new_tokens=task.max_new_tokens,
                batch_size=task.eval_batch_size,
                device=config.device,
                output=str(answers),
            ),
        )
    )
    return summary["scores"]


# The content figures a dataset's scores may carry (meeting-minutes' do), as the table's columns.
CONTENT_COLUMNS = (
    ("structure_valid", "structure"), ("owner_recall", "owners"), ("due_recall", "due dates"),
    ("action_items_right", "whole items"), ("decision_recall", "decisions"), ("hallucinated_owners", "invented owners"),
)


def content_table(per_split: dict) -> list[str]:
    """A before/after table of the content figures, one row per split and label; empty when the
    scores have none."""
    rows = [(split, label, scores) for split, labels in per_split.items() for label, scores in labels.items()
            if scores and all(key in scores for key, _ in CONTENT_COLUMNS)]
    if not rows:
        return []
    head = ["split", "model"] + [title for _, title in CONTENT_COLUMNS]
    body = [[split, f"{label} fine-tuning"] + [f"{100 * scores[key]:.0f}%" for key, _ in CONTENT_COLUMNS]
            for split, label, scores in rows]
    widths = [max(len(row[i]) for row in [head] + body) for i in range(len(head))]
    lines = ["", "Content of the minutes (share of rows, of true action items or decisions, or of owners written):"]
    for row in [head] + body:
        lines.append("  " + "  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())
    return lines


def _task(name: str) -> QuickstartTask:
    from .registry import get_registry

    return get_registry().get("quickstart_tasks", name)  # an unknown name: one sentence listing the known ones


def run_quickstart(config: QuickstartConfig) -> dict:
    from .training.output import RUN_RECORD_NAME, checkpoints
    from .training.sft import run_sft

    task = _task(config.task)
    max_steps = task.max_steps if config.max_steps is None else config.max_steps
    limit = task.eval_limit if config.eval_limit is None else config.eval_limit
    for flag, value in (("--max-steps", max_steps), ("--eval-limit", limit)):
        if value < 1:
            raise options.OptionError(f"{flag} is {value}; give a positive number.")
    default_dir = "output/quickstart" if task.name == DEFAULT_TASK else f"output/quickstart-{task.name}"
    root = Path(config.output_dir or default_dir)
    root.mkdir(parents=True, exist_ok=True)
    model_dir = root / "model"
    splits = tuple(task.eval_splits)
    per_split: dict = {split: {} for split in splits}

    def answer(model: str, label: str) -> None:
        for split in splits:
            suffix = "" if len(splits) == 1 else f"-{split}"
            per_split[split][label] = _evaluate(model, task, split, limit, config, root / f"answers-{label}{suffix}.jsonl")

    held_out = f"{limit} held-out rows of {task.dataset} ({', '.join(splits)})"
    if not config.skip_base:
        print(f"\n== 1/3  {task.model} answers {held_out} (before fine-tuning)")
        answer(task.model, "before")

    print(f"\n== 2/3  LoRA fine-tuning on {task.dataset} ({max_steps} steps)")
    if (model_dir / RUN_RECORD_NAME).is_file():
        print(f"{model_dir} already holds the fine-tuned model; reusing it")
    else:
        sft_config = options.build(
            SFTConfig,
            dict(model=task.model, dataset=[task.dataset], **task.recipe),
            dict(output_dir=str(model_dir), max_steps=max_steps, device=config.device, resume=bool(checkpoints(model_dir))),
        )
        run_sft(sft_config)

    print("\n== 3/3  the fine-tuned model answers the same rows")
    answer(str(model_dir), "after")

    # the first split's scores stay at the top level; every split's are under per_split
    report: dict = dict(per_split[splits[0]])
    report["task"] = task.name
    report["per_split"] = per_split
    for split in splits:
        name = f" ({split} split)" if len(splits) > 1 else " (held-out rows)"
        print(f"\nMinutes that follow the structure{name}:")
        for label in ("before", "after"):
            if label in per_split[split]:
                r = per_split[split][label]
                line = f"  {label:>6} fine-tuning: {r['follows_structure']}/{r['total']} ({100 * r['rate']:.0f}%)"
                if r.get("action_items_expected"):
                    line += f"; action items with the right owner and due date: {r['action_items_matched']}/{r['action_items_expected']}"
                print(line)
    for line in content_table(per_split):
        print(line)
    (root / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nReport: {root / 'report.json'}; fine-tuned model: {model_dir}")
    print(f"Next: tuneforge infer --model {model_dir}   |   tuneforge export --model {model_dir} --format merged --output-dir {root / 'merged'}")
    return report
