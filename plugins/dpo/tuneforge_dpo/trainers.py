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
    """DPOTrainer on ``prompt_ids/chosen_ids/rejected_ids`` examples.

    The reference stays frozen for the whole run, so the log-probabilities it gives a
    held-out batch are computed at the first evaluation and reused by the later ones
    (the start and the end evaluation of a run see the same batches): an evaluation
    after the first runs the policy alone.
    """

    def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
        return dataset

    def _compute_loss(self, model, inputs, return_outputs):
        if self.model.training or self.precompute_ref_logps or getattr(self.args, "sync_ref_model", False):
            return super()._compute_loss(model, inputs, return_outputs)
        key = _batch_key(inputs)
        known = self.__dict__.setdefault("_eval_reference_logps", {})
        if key not in known:
            known[key] = tuple(logps.detach() for logps in self.compute_ref_log_probs(self.model, inputs))
        chosen, rejected = known[key]
        # trl's own path for reference log-probs that come with the batch (precompute_ref_log_probs)
        self.precompute_ref_logps = True
        try:
            return super()._compute_loss(model, {**inputs, "ref_chosen_logps": chosen, "ref_rejected_logps": rejected}, return_outputs)
        finally:
            self.precompute_ref_logps = False


def _batch_key(inputs) -> bytes:
    """What identifies a batch: every tensor of it (token ids, masks, pixel values where there are pictures)."""
    import hashlib

    import torch

    digest = hashlib.sha256()
    for name in sorted(inputs):
        tensor = inputs[name]
        if hasattr(tensor, "detach"):
            digest.update(f"{name}{tuple(tensor.shape)}{tensor.dtype}".encode())
            digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return digest.digest()


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
