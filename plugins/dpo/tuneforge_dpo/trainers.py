"""trl's preference trainers, fed with data the run's chat template already tokenized.

trl tokenizes text with the tokenizer's own chat template; tuneforge encodes with
the model family's template (which may be a different layout) and its loss mask,
so each trainer here takes the tokenized examples as they are. Checkpoints are
written atomically, as in every tuneforge run. This module imports trl: it is
imported only when a preference method runs.
"""

from __future__ import annotations

import os
import warnings

os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")  # CPO and ORPO live in trl.experimental in trl 1.x

from trl import DPOConfig, DPOTrainer, KTOConfig, KTOTrainer  # noqa: E402

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from trl.experimental.cpo import CPOConfig, CPOTrainer  # noqa: E402
    from trl.experimental.orpo import ORPOConfig, ORPOTrainer  # noqa: E402

from tuneforge.api import TuneforgeTrainer  # noqa: E402

__all__ = [
    "CPOConfig", "DPOConfig", "KTOConfig", "ORPOConfig",
    "TuneforgeCPOTrainer", "TuneforgeDPOTrainer", "TuneforgeKTOTrainer", "TuneforgeORPOTrainer",
    "to_pair_rows",
]


class _NoModelCard:
    def create_model_card(self, *args, **kwargs):
        """The run record (tuneforge_run.json) describes the run; no hub model card is written."""


class TuneforgeDPOTrainer(_NoModelCard, TuneforgeTrainer, DPOTrainer):
    """DPOTrainer on ``prompt_ids/chosen_ids/rejected_ids`` examples."""

    def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
        return dataset


class TuneforgeKTOTrainer(_NoModelCard, TuneforgeTrainer, KTOTrainer):
    """KTOTrainer on ``prompt_ids/completion_ids/label`` examples."""

    def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
        if not self.calculate_KL:
            return dataset

        # The KL term is estimated from mismatched pairs: within each batch, every prompt
        # gets the completion of its neighbour (as trl's own preparation does).
        def add_kl_completion_ids(examples):
            completions = examples["completion_ids"]
            examples["KL_completion_ids"] = [completions[-1]] + completions[:-1]
            return examples

        return dataset.map(add_kl_completion_ids, batched=True, batch_size=args.per_device_train_batch_size)


class _TokenizedRows:
    """CPO and ORPO tokenize row by row in ``tokenize_row``; the rows come tokenized already."""

    def tokenize_row(self, feature, model=None):
        return {}


class TuneforgeCPOTrainer(_NoModelCard, _TokenizedRows, TuneforgeTrainer, CPOTrainer):
    """CPOTrainer (CPO and SimPO losses) on rows made by ``to_pair_rows``."""


class TuneforgeORPOTrainer(_NoModelCard, _TokenizedRows, TuneforgeTrainer, ORPOTrainer):
    """ORPOTrainer on rows made by ``to_pair_rows``."""


def to_pair_rows(samples):
    """``prompt_ids/chosen_ids/rejected_ids`` examples in the layout CPO and ORPO batch: sequences with labels."""
    rows = []
    for sample in samples:
        prompt = list(sample["prompt_ids"])
        row = {"prompt_input_ids": prompt, "prompt_attention_mask": [1] * len(prompt)}
        for key in ("chosen", "rejected"):
            answer = list(sample[f"{key}_ids"])
            row[f"{key}_input_ids"] = prompt + answer
            row[f"{key}_attention_mask"] = [1] * (len(prompt) + len(answer))
            row[f"{key}_labels"] = [-100] * len(prompt) + answer
        rows.append(row)
    return rows
