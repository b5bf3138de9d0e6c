"""From dataset specs to tokenized train and eval datasets, with a summary.

Order: load and mix every source, convert and validate every row (so bad data
fails before any tokenization), limit to ``max_samples``, hold out the validation
rows, then tokenize with the template and the length policy.
"""

from __future__ import annotations

import dataclasses
import hashlib
from array import array
from dataclasses import dataclass, field
from typing import Any, Sequence

from ..errors import DataError
from ..templates import tools_dropped_warning
from .convert import Converted, convert_rows
from .loading import load_mixture
from .rows import BadRows
from .tokenize import TokenStats, tokenize_conversations


@dataclass
class SourceCount:
    spec: str
    path: str
    split: str  # "train" or "eval"
    rows: int


@dataclass
class DataSummary:
    """What the data pipeline read, skipped, cut and produced."""

    template: str
    max_length: int
    truncation: str
    sources: list[SourceCount] = field(default_factory=list)
    formats: dict[str, int] = field(default_factory=dict)
    skipped_rows: int = 0
    skipped_examples: list[str] = field(default_factory=list)
    train: TokenStats = field(default_factory=TokenStats)
    eval: TokenStats | None = None
    eval_from: str = "none"  # "val_dataset", "split" or "none"
    fingerprint: str = ""
    packing: str = ""  # with --packing, what is not packed and why
    tools_dropped: str = ""  # the rows have tools that the template does not render: the warning

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def describe(self) -> str:
        lines = []
        sources = "; ".join(f"{s.spec} {s.rows:,}" for s in self.sources if s.split == "train")
        formats = ", ".join(f"{name} {count:,}" for name, count in self.formats.items())
        rows = sum(s.rows for s in self.sources if s.split == "train")
        lines.append(f"data: {_count(rows, 'training row')} read ({sources}); formats: {formats}; template: {self.template}")
        if self.skipped_rows:
            lines.append(f"skipped {_count(self.skipped_rows, 'bad row')}, first: {self.skipped_examples[0]}")
        lines.append("train: " + _describe_stats(self.train, self.max_length, self.truncation))
        if self.eval is not None:
            origin = "from --val-dataset" if self.eval_from == "val_dataset" else "split off the training rows"
            lines.append(f"eval ({origin}): " + _describe_stats(self.eval, self.max_length, self.truncation))
        if self.packing:
            lines.append(f"packing: {self.packing}")
        if self.tools_dropped:
            lines.append(f"warning: {self.tools_dropped}")
        lines.append(f"data fingerprint: {self.fingerprint}")
        return "\n".join(lines)


def _count(n: int, noun: str) -> str:
    return f"{n:,} {noun}" + ("" if n == 1 else "s")


def _describe_stats(stats: TokenStats, max_length: int, truncation: str) -> str:
    text = f"{_count(stats.samples, 'sample')}, {_count(stats.tokens, 'token')} ({stats.learned_tokens:,} learned)"
    notes = []
    if stats.truncated:
        notes.append(f"{stats.truncated:,} cut to {max_length} tokens from the {truncation}")
    if stats.dropped_too_long:
        notes.append(f"{stats.dropped_too_long:,} dropped for being over {max_length} tokens")
    if stats.dropped_no_learned:
        notes.append(f"{stats.dropped_no_learned:,} dropped with no token left to learn")
    return text + ("; " + ", ".join(notes) if notes else "")


def fingerprint(samples: Sequence[dict]) -> str:
    """sha256 over the tokenized samples, independent of their order."""
    digests = []
    for sample in samples:
        h = hashlib.sha256()
        h.update(array("q", sample["input_ids"]).tobytes())
        h.update(b"|")
        h.update(array("q", sample["labels"]).tobytes())
        for key, value in sorted((sample.get("extras") or {}).items()):  # the pixels of image rows
            h.update(key.encode())
            h.update(value.numpy().tobytes() if hasattr(value, "numpy") else repr(value).encode())
        digests.append(h.digest())
    total = hashlib.sha256()
    for digest in sorted(digests):
        total.update(digest)
    return total.hexdigest()


def _check_options(config) -> None:
    if config.max_samples is not None and config.max_samples < 1:
        raise DataError(f"--max-samples is {config.max_samples}; give a positive number or leave it out.")
    if not 0 <= config.val_split_ratio < 1:
        raise DataError(f"--val-split-ratio is {config.val_split_ratio}; give a number from 0 up to (not including) 1.")


def _empty_split_error(label: str, stats: TokenStats, config) -> DataError:
    return DataError(
        f"Every {label} sample was dropped ({stats.dropped_too_long} over --max-length {config.max_length}, "
        f"{stats.dropped_no_learned} with no token left to learn); raise --max-length or pass --truncation left."
    )


def limit_and_split(train_rows: list, eval_rows: list | None, config, summary) -> tuple[list, list | None]:
    """``--max-samples``, then (without a ``--val-dataset``) the ``--val-split-ratio`` split off the front."""
    if config.max_samples is not None:
        train_rows = train_rows[: config.max_samples]
    if eval_rows is None and config.val_split_ratio > 0:
        held_out = max(1, round(len(train_rows) * config.val_split_ratio))
        if held_out >= len(train_rows):
            raise DataError(
                f"--val-split-ratio {config.val_split_ratio} of {len(train_rows)} rows leaves no training rows; "
                f"lower the ratio or pass --val-dataset."
            )
        eval_rows, train_rows = train_rows[:held_out], train_rows[held_out:]
        summary.eval_from = "split"
    return train_rows, eval_rows


def load_examples(
    config, template, *, kind: str = "conversation", check=None, noun: str = "training"
) -> tuple[list[Converted], list[Converted] | None, DataSummary]:
    """Load, convert, validate and split the rows of ``config``'s ``--dataset`` and ``--val-dataset``.

    The part of a data pipeline every training method shares: the files read and
    mixed, each row converted by the dataset format of ``kind`` that detects it,
    bad rows failing the run with their file and line (or skipped and counted with
    ``--skip-bad-rows``), ``--max-samples`` and the validation split. ``check``
    (optional) validates one converted row and returns the examples to keep from it
    (raising ``DataError`` for a bad row); without it a row is a conversation checked
    by the core, with ``--system`` added. Returns the train rows, the eval rows (None
    without validation data) and the ``DataSummary`` that the tokenizing step fills.
    """
    _check_options(config)
    bad = BadRows(skip=config.skip_bad_rows)
    summary = DataSummary(
        template=getattr(template, "name", type(template).__name__),
        max_length=config.max_length,
        truncation=config.truncation,
    )

    def load(specs: Sequence[str], split: str) -> list[Converted]:
        rows, counts = load_mixture(specs, seed=config.seed, bad=bad)
        summary.sources += [SourceCount(source.spec, source.path, split, n) for source, n in counts]
        if check is None:
            converted = convert_rows(rows, dataset_format=config.dataset_format, system=config.system, bad=bad, kind=kind)
            for row in converted:
                summary.formats[row.format] = summary.formats.get(row.format, 0) + 1
            return converted
        out = []
        for row in convert_rows(rows, dataset_format=config.dataset_format, bad=bad, kind=kind):
            try:
                kept = check(row.data)
            except DataError as exc:
                bad.report(row.where, str(exc))
                continue
            summary.formats[row.format] = summary.formats.get(row.format, 0) + 1
            out += [Converted(example, row.where, row.source, row.format) for example in kept]
        return out

    train_rows = load(config.dataset, "train")
    eval_rows: list[Converted] | None = None
    if config.val_dataset:
        eval_rows = load(config.val_dataset, "eval")
        summary.eval_from = "val_dataset"
    summary.skipped_rows, summary.skipped_examples = bad.count, list(bad.examples)

    train_rows, eval_rows = limit_and_split(train_rows, eval_rows, config, summary)
    if not train_rows:
        raise DataError(
            f"No usable {noun} rows are left ({bad.count} bad rows skipped); fix the data or pass other --dataset files."
        )
    if eval_rows is not None and not eval_rows:
        raise DataError(f"No usable validation rows are left ({bad.count} bad rows skipped); fix the --val-dataset files.")
    return train_rows, eval_rows, summary


def not_packed(samples: Sequence[dict], packs_extras: bool = False) -> str:
    """The statement a run with ``--packing`` makes about its multimodal samples ("" when none goes unpacked).

    A sample with extras (pixel values, and for some families an image grid and
    position ids computed from its own tokens) is not packed beside others unless
    its template says its extras pack (``packs_extras``, the template's): the
    packing collator pads any batch that holds one (``PackingCollator``).
    """
    if packs_extras:
        return ""
    count = sum(1 for sample in samples if sample.get("extras"))
    if not count:
        return ""
    return (
        f"{_count(count, 'training sample')} of {len(samples):,} carry images (or other extras) and are not packed: "
        f"a sample's pixel values, image grid and position ids belong to its own tokens, so a batch holding one is "
        f"right-padded instead; batches of text samples only are packed"
    )


def prepare_datasets(config, tokenizer, template) -> tuple[list[dict], list[dict] | None, DataSummary]:
    """Load, convert, validate, split and tokenize the data of a ``TrainConfig``.

    Returns the training samples, the evaluation samples (None without validation
    data) and a ``DataSummary``. Each sample is ``{"input_ids", "labels"}``, with ``"extras"``
    where the template encodes parts (pixel values, ...).
    """
    train_rows, eval_rows, summary = load_examples(config, template)
    summary.tools_dropped = tools_dropped_warning(template, ((row.messages, row.tools, row.where) for row in train_rows))
    options: dict[str, Any] = dict(
        max_length=config.max_length, truncation=config.truncation, train_on_prompt=config.train_on_prompt
    )
    train, summary.train = tokenize_conversations(train_rows, template, **options)
    if not train:
        raise _empty_split_error("training", summary.train, config)
    evaluation = None
    if eval_rows is not None:
        evaluation, summary.eval = tokenize_conversations(eval_rows, template, **options)
        if not evaluation:
            raise _empty_split_error("validation", summary.eval, config)
    if getattr(config, "packing", False):
        summary.packing = not_packed(train, packs_extras=getattr(template, "packs_extras", False))
    summary.fingerprint = fingerprint(train)
    return train, evaluation, summary
