"""``tuneforge export --format awq|gptq``: merge, quantize to W4A16 with llmcompressor, measure, write.

The order, inside the folder the core renames into place only when the export
succeeds:

1. everything that can be refused without weights: the options, the group size
   against the model's layer sizes, llmcompressor being installed, the rows to
   calibrate on and to measure with (``tuneforge_awq.rows``);
2. the core's merge (``merge_lora``) writes the merged model into ``.merged/``
   (llmcompressor reads a checkpoint from a path);
3. llmcompressor's ``oneshot`` quantizes it (AWQ: its scaling transform, then
   round-to-nearest per group; GPTQ: Hessian-aware rounding per group) on the
   calibration sample, and saves a compressed-tensors (``pack-quantized``)
   checkpoint, beside the tokenizer with the trained chat template;
4. both models are loaded back with plain transformers and measured
   (``tuneforge_awq.quality``); the report is written beside the model;
5. past ``--max-quality-loss`` the export is refused: the merged model (with the
   report) moves to ``OUTPUT-merged`` and nothing is left at ``OUTPUT``; else the
   merged copy is removed and the export record and README are written.

Without an accelerator llmcompressor's AWQ step still pins its cached activations
for faster host-to-device copies, which fails on a CPU-only machine; there the
pinning is skipped (there is no device to copy to).
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import importlib.util
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Mapping

from tuneforge.api import EXPORT_RECORD, TuneforgeError, __version__, merge_lora

from . import quality
from .rows import check_rows, export_rows

MERGED = ".merged"
LLMCOMPRESSOR_RANGE = ">=0.14,<0.15"  # as plugins/awq/pyproject.toml pins it
POSITIVE = (
    ("group_size", "--group-size"),
    ("num_calibration_samples", "--num-calibration-samples"),
    ("calibration_max_length", "--calibration-max-length"),
    ("quality_rows", "--quality-rows"),
    ("quality_prompts", "--quality-prompts"),
    ("quality_max_new_tokens", "--quality-max-new-tokens"),
)


def kept_merged_path(destination: Path) -> Path:
    """Where a refused export leaves the merged model: beside the asked output folder."""
    return destination.with_name(destination.name + "-merged")


def _layer_inputs(config) -> dict[str, int]:
    """The input sizes of the linear layers that are quantized, by what they are."""
    sizes = {"hidden size": getattr(config, "hidden_size", None)}
    heads, head_dim = getattr(config, "num_attention_heads", None), getattr(config, "head_dim", None)
    if heads and head_dim:
        sizes["attention output size (heads x head_dim)"] = heads * head_dim
    sizes["intermediate size"] = getattr(config, "intermediate_size", None)
    return {name: int(size) for name, size in sizes.items() if isinstance(size, int) and size > 0}


def check_export(method: str, bundle, options: Mapping[str, Any]) -> None:
    """Refuse, in one sentence, what cannot be exported, before any weights load."""
    for key, flag in POSITIVE:
        value = options.get(key)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise TuneforgeError(f"{flag} is {value!r}; give a positive whole number.")
    limit = options.get("max_quality_loss")
    if limit is not None and (not isinstance(limit, (int, float)) or isinstance(limit, bool) or not limit >= 0):
        raise TuneforgeError(f"--max-quality-loss is {limit!r}; give the largest share the perplexity may rise, such as 0.05 for 5%.")
    if bundle.run is None:
        raise TuneforgeError(
            f"'{bundle.spec}' is not a tuneforge output dir (it has no run record); pass the --output-dir of a `tuneforge sft` run."
        )
    if bundle.processor is not None and bundle.processor is not bundle.tokenizer:
        raise TuneforgeError(
            f"'{bundle.spec}' is a {bundle.family.name} model with a processor (images or other parts), which the {method} "
            f"exporter does not quantize; export it with --format merged."
        )
    group = options["group_size"]
    sizes = _layer_inputs(bundle.hf_config)
    wrong = {name: size for name, size in sizes.items() if size % group}
    if wrong:
        name, size = next(iter(wrong.items()))
        fitting = [g for g in (32, 64, 128, 256) if all(s % g == 0 for s in sizes.values())]
        hint = f"pick one that divides it, such as {' or '.join(map(str, fitting))}" if fitting else "pick a divisor of every layer's input size"
        raise TuneforgeError(
            f"--group-size {group} does not divide the model's {name} {size} (each quantized layer's inputs split into groups of that size); {hint}."
        )
    if importlib.util.find_spec("llmcompressor") is None:
        raise TuneforgeError(
            f"The {method} exporter needs llmcompressor, which is not installed here; install it with "
            f"pip install 'llmcompressor{LLMCOMPRESSOR_RANGE}' (it pins transformers 5.15 to 5.17: give it an environment of its own)."
        )
    destination = Path(options.get("destination") or ".")
    kept = kept_merged_path(destination)
    if limit is not None and kept.exists() and (not kept.is_dir() or any(kept.iterdir())):
        raise TuneforgeError(
            f"'{kept}', where a refused export keeps the merged model, already exists; move it away or choose another --output-dir."
        )


@contextlib.contextmanager
def _without_pinning_off_accelerator():
    """llmcompressor pins cached activations before copying them to the accelerator; with none, skip it."""
    import torch
    from llmcompressor.pipelines.cache import IntermediatesCache

    if torch.accelerator.is_available():
        yield
        return
    pin = IntermediatesCache.pin_memory
    IntermediatesCache.pin_memory = lambda self, *args, **kwargs: None
    try:
        yield
    finally:
        IntermediatesCache.pin_memory = pin


def recipe(method: str, group_size: int, symmetric: bool) -> list:
    """llmcompressor modifiers for 4-bit integer weights in groups, every Linear but the output head."""
    groups = {
        "group_0": {
            "targets": ["Linear"],
            "weights": {"num_bits": 4, "type": "int", "symmetric": symmetric, "strategy": "group", "group_size": group_size},
        }
    }
    if method == "awq":
        from llmcompressor.modifiers.quantization import QuantizationModifier
        from llmcompressor.modifiers.transform.awq import AWQModifier

        return [AWQModifier(), QuantizationModifier(config_groups=groups, ignore=["lm_head"])]
    from llmcompressor.modifiers.gptq import GPTQModifier

    return [GPTQModifier(config_groups=groups, ignore=["lm_head"])]


def _calibration_dataset(rows, template, max_length: int):
    from datasets import Dataset
    from datasets.table import InMemoryTable

    ids = [list(template.encode(row.messages, tools=row.tools).input_ids)[:max_length] for row in rows]
    # The fingerprint is the rows' own hash: datasets would otherwise pickle the table's state to make one,
    # which fails on some Pythons (3.12 with pyarrow 26: "Can't pickle <class 'MonthDayNano'>").
    fingerprint = hashlib.sha256(json.dumps(ids).encode()).hexdigest()[:16]
    table = InMemoryTable.from_pydict({"input_ids": ids, "attention_mask": [[1] * len(i) for i in ids]})
    return Dataset(table, fingerprint=fingerprint)


def _free() -> None:
    import torch

    gc.collect()
    if torch.accelerator.is_available():
        torch.accelerator.empty_cache()


def quantize(method: str, merged_dir: Path, out: Path, rows, template, options: Mapping[str, Any]) -> None:
    """Quantize the checkpoint in ``merged_dir`` on ``rows`` and save it compressed into ``out``, with its tokenizer."""
    from llmcompressor import oneshot
    from transformers import AutoTokenizer

    dataset = _calibration_dataset(rows, template, options["calibration_max_length"])
    with _without_pinning_off_accelerator():
        model = oneshot(
            model=str(merged_dir),
            dataset=dataset,
            recipe=recipe(method, options["group_size"], bool(options["symmetric"])),
            num_calibration_samples=len(dataset),
            max_seq_length=options["calibration_max_length"],
            shuffle_calibration_samples=False,
            trust_remote_code_model=bool(options.get("trust_remote_code")),
        )
    model.save_pretrained(out, save_compressed=True)
    del model
    _free()
    # The merged export's tokenizer carries the trained chat template: the quantized model gets the same.
    AutoTokenizer.from_pretrained(merged_dir, trust_remote_code=False).save_pretrained(out)
    umask = os.umask(0)
    os.umask(umask)
    for path in out.iterdir():
        if path.is_file():
            os.chmod(path, 0o666 & ~umask)  # some writers make their files private; the export is not


def measure(method: str, merged_dir: Path, out: Path, rows, template, tokenizer, options: Mapping[str, Any]) -> dict:
    """The quality report of the checkpoint in ``out`` against the one in ``merged_dir``."""
    max_length = max(options["calibration_max_length"], 2048)
    samples = quality.encode_rows(rows.quality[: options["quality_rows"]], template, max_length)
    prompts = quality.prompts_of(rows.quality, template, options["quality_prompts"])
    stop_ids = list(getattr(template, "stop_token_ids", None) or []) or [tokenizer.eos_token_id]
    results = {}
    for name, path in (("merged", merged_dir), ("quantized", out)):
        model = quality.load_for_measure(str(path))
        results[name] = quality.measure(model, samples, prompts, stop_ids, options["quality_max_new_tokens"])
        del model
        _free()
    settings = {
        "format": method,
        "scheme": "W4A16",
        "group_size": options["group_size"],
        "symmetric": bool(options["symmetric"]),
        "perplexity_rows": len(samples),
        "max_new_tokens": options["quality_max_new_tokens"],
        "max_quality_loss": options.get("max_quality_loss"),
    }
    return quality.compare(
        results["merged"], results["quantized"], decode=lambda ids: tokenizer.decode(ids),
        rows_from=rows.quality_from, held_out=rows.quality_held_out, settings=settings,
    )


def export_quantized(method: str, bundle, output_dir: str, options: Mapping[str, Any]) -> str:
    """The awq and gptq exporters: write the quantized checkpoint of the run ``bundle`` into ``output_dir``."""
    check_export(method, bundle, options)
    rows = export_rows(bundle, options)
    check_rows(rows)
    out = Path(output_dir)
    destination = Path(options.get("destination") or out)
    kept = kept_merged_path(destination)
    merged_dir = out / MERGED
    seconds = {}

    started = time.monotonic()
    merge_lora(bundle, str(merged_dir), {**options, "destination": str(kept)})
    seconds["merge"] = time.monotonic() - started
    _free()

    started = time.monotonic()
    quantize(method, merged_dir, out, rows.calibration, bundle.template, options)
    seconds["quantize"] = time.monotonic() - started

    started = time.monotonic()
    report = measure(method, merged_dir, out, rows, bundle.template, bundle.tokenizer, options)
    seconds["measure"] = time.monotonic() - started
    report["calibration"] = {"rows_from": rows.calibration_from, "samples": len(rows.calibration), "max_length": options["calibration_max_length"]}
    report["seconds"] = {name: round(value, 1) for name, value in seconds.items()}
    limit = options.get("max_quality_loss")
    increase = report["perplexity"]["increase"]
    report["passed"] = limit is None or increase <= limit
    text = json.dumps(report, indent=2, default=str) + "\n"
    print(quality.table(report))

    if not report["passed"]:
        (merged_dir / quality.REPORT).write_text(text)
        os.replace(merged_dir, kept)
        ppl = report["perplexity"]
        raise TuneforgeError(
            f"The {method} model's perplexity on {ppl['rows']} {'held-out' if rows.quality_held_out else 'training'} rows is "
            f"{increase:.2%} above the merged model's ({ppl['quantized']:.3f} vs {ppl['merged']:.3f}), more than "
            f"--max-quality-loss {limit:g} ({limit:.2%}) allows, so nothing was written to '{destination}' and the merged "
            f"model and the quality report were kept in '{kept}'."
        )

    merged_record = json.loads((merged_dir / EXPORT_RECORD).read_text())
    shutil.rmtree(merged_dir)
    (out / quality.REPORT).write_text(text)
    record = _record(method, merged_record, report, options)
    (out / EXPORT_RECORD).write_text(json.dumps(record, indent=2, default=str) + "\n")
    (out / "README.md").write_text(_readme(destination, record))
    print(f"Wrote {destination} ({method}, W4A16, group size {options['group_size']}, {_symmetry(options)}; {quality.REPORT} beside it).", file=sys.stderr)
    return str(out)


def _symmetry(options) -> str:
    return "symmetric" if options["symmetric"] else "asymmetric"


def _record(method: str, merged: dict, report: dict, options: Mapping[str, Any]) -> dict:
    import llmcompressor

    return {
        **merged,
        "exported_by": f"tuneforge {__version__}",
        "exporter": method,
        "quantization": {
            "method": method,
            "scheme": "W4A16",
            "bits": 4,
            "group_size": options["group_size"],
            "symmetric": bool(options["symmetric"]),
            "not_quantized": ["lm_head"],
            "format": "compressed-tensors (pack-quantized)",
            "library": f"llmcompressor {llmcompressor.__version__}",
        },
        "calibration": report["calibration"],
        "quality": {
            "report": quality.REPORT,
            "rows_from": report["rows_from"],
            "held_out": report["held_out"],
            "perplexity_merged": report["perplexity"]["merged"],
            "perplexity_quantized": report["perplexity"]["quantized"],
            "perplexity_increase": report["perplexity"]["increase"],
            "exact_match": report["greedy"]["exact_match"],
            "token_overlap": report["greedy"]["token_overlap"],
            "max_quality_loss": options.get("max_quality_loss"),
        },
        "seconds": report["seconds"],
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def _readme(destination: Path, record: dict) -> str:
    q, quality_ = record["quantization"], record["quality"]
    lines = [
        f"# {destination.name}",
        "",
        f"A 4-bit weight-only ({q['scheme']}) {q['method'].upper()} checkpoint in the compressed-tensors format "
        f"(group size {q['group_size']}, {'symmetric' if q['symmetric'] else 'asymmetric'}, the output head unquantized), "
        f"made with {q['library']} from `{record['source']}` ({record['tuner']} merged into `{record['base_model']}`).",
        "",
        f"- calibrated on {record['calibration']['samples']} rows of {record['calibration']['rows_from']}",
        f"- perplexity on {quality_['rows_from']}: {quality_['perplexity_quantized']:.3f} "
        f"(merged model: {quality_['perplexity_merged']:.3f}, {quality_['perplexity_increase']:+.2%}); greedy answers: "
        f"{quality_['exact_match']:.0%} identical, token overlap {quality_['token_overlap']:.2f} (`{quality_['report']}`)",
        f"- chat template: the `{record.get('template')}` template the model was trained with, in the tokenizer",
        "",
        "Load or serve it:",
        "",
        "```",
        f'python -c "from transformers import AutoModelForCausalLM; AutoModelForCausalLM.from_pretrained(\'{destination}\')"',
        f"vllm serve {destination}",
        f"tuneforge deploy --model {destination} --engine lmdeploy   # tuneforge-lmdeploy serves a copy in AutoAWQ's layout",
        "```",
        "",
        f"`{EXPORT_RECORD}` records the same in machine-readable form.",
        "",
    ]
    return "\n".join(lines)
