"""`tuneforge quickstart`: the bundled default job, end to end.

Answers held-out meeting transcripts with the base SmolLM2, fine-tunes it with
LoRA on the bundled meeting-minutes data, answers the same transcripts again and
prints how many minutes follow the structure before and after. Each step is the
same code path as the command of the same name; an interrupted quickstart
resumes from its last checkpoint.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

from . import options
from .config import DEFAULT_DATASET, DEFAULT_MODEL, EvalConfig, SFTConfig
from .options import option


@dataclass
class QuickstartConfig:
    output_dir: str = option("output/quickstart", "Where the fine-tuned model, the answers and the report go.")
    max_steps: int = option(40, "LoRA training steps (one transcript each).")
    eval_limit: int = option(24, "Held-out transcripts answered before and after fine-tuning.")
    skip_base: bool = option(False, "Skip answering with the base model.")
    device: str | None = option(None, "Device name (default: the best available).")


# The recipe: chosen so the whole job finishes in about 20 minutes on two CPU cores
# (a step over one ~800-token transcript takes ~13 s there).
RECIPE = dict(
    model=DEFAULT_MODEL,
    dataset=[DEFAULT_DATASET],
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
    max_length=1024,
    truncation="drop",
    packing=False,
    logging_steps=5,
    save_steps=10,
    save_total_limit=2,
)
MAX_NEW_TOKENS = 320


def _evaluate(model: str, config: QuickstartConfig, answers: Path) -> dict:
    from .evaluation import run_eval

    summary = run_eval(
        options.build(
            EvalConfig,
            dict(
                model=model,
                dataset=DEFAULT_DATASET,
                split="test",
                limit=config.eval_limit,
                max_new_tokens=MAX_NEW_TOKENS,
                batch_size=8,
                device=config.device,
                output=str(answers),
            ),
        )
    )
    return summary["scores"]


def run_quickstart(config: QuickstartConfig) -> dict:
    from .training.output import RUN_RECORD_NAME, checkpoints
    from .training.sft import run_sft

    root = Path(config.output_dir)
    root.mkdir(parents=True, exist_ok=True)
    model_dir = root / "model"
    report: dict = {}

    if not config.skip_base:
        print(f"\n== 1/3  {DEFAULT_MODEL} answers {config.eval_limit} held-out transcripts (before fine-tuning)")
        report["before"] = _evaluate(DEFAULT_MODEL, config, root / "answers-before.jsonl")

    print(f"\n== 2/3  LoRA fine-tuning on {DEFAULT_DATASET} ({config.max_steps} steps)")
    if (model_dir / RUN_RECORD_NAME).is_file():
        print(f"{model_dir} already holds the fine-tuned model; reusing it")
    else:
        sft_config = options.build(
            SFTConfig,
            RECIPE,
            dict(output_dir=str(model_dir), max_steps=config.max_steps, device=config.device, resume=bool(checkpoints(model_dir))),
        )
        run_sft(sft_config)

    print(f"\n== 3/3  the fine-tuned model answers the same transcripts")
    report["after"] = _evaluate(str(model_dir), config, root / "answers-after.jsonl")

    print("\nMinutes that follow the structure (held-out transcripts):")
    for label in ("before", "after"):
        if label in report:
            r = report[label]
            print(f"  {label:>6} fine-tuning: {r['follows_structure']}/{r['total']} ({100 * r['rate']:.0f}%)")
    (root / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nReport: {root / 'report.json'}; fine-tuned model: {model_dir}")
    print(f"Next: tuneforge infer --model {model_dir}   |   tuneforge export --model {model_dir} --format merged --output-dir {root / 'merged'}")
    return report
