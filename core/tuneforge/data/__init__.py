"""The data pipeline: load, convert, validate, template, tokenize, collate.

``prepare_datasets(config, tokenizer, template)`` is the entry point a training
method calls; ``make_collator(tokenizer, packing)`` batches its samples.
"""

from .collate import PackingCollator, PaddingCollator, make_collator, pad_token_id
from .convert import Converted, convert_row, convert_rows, dataset_formats, validate_conversation
from .loading import Source, load_mixture, load_source, read_rows, resolve_spec
from .pipeline import DataSummary, SourceCount, fingerprint, prepare_datasets
from .rows import BadRows, Row
from .tokenize import TokenStats, fit_length, tokenize_conversations

__all__ = [
    "BadRows",
    "Converted",
    "DataSummary",
    "PackingCollator",
    "PaddingCollator",
    "Row",
    "Source",
    "SourceCount",
    "TokenStats",
    "convert_row",
    "convert_rows",
    "dataset_formats",
    "fingerprint",
    "fit_length",
    "load_mixture",
    "load_source",
    "make_collator",
    "pad_token_id",
    "prepare_datasets",
    "read_rows",
    "resolve_spec",
    "tokenize_conversations",
    "validate_conversation",
]
