"""The transformers Trainer, with checkpoints that appear whole or not at all."""

from __future__ import annotations

import os
import shutil

from transformers import Trainer
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

STAGING = ".staging"


class TuneforgeTrainer(Trainer):
    """A Trainer whose checkpoints are written to a staging dir, then renamed.

    ``checkpoint-N`` only ever names a complete checkpoint, so a run killed while
    saving resumes from the previous one instead of a half-written directory.
    With ``loss_chunk_size`` set, the loss comes from the last hidden states chunk
    by chunk (``training.loss``) wherever the model's output layer allows it.
    """

    def __init__(self, *args, loss_chunk_size: int | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.loss_chunk_size = loss_chunk_size

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        from .loss import chunked_causal_lm_loss, head_returns_hidden, output_layer

        # Evaluation keeps the plain loss: its callers may read the logits.
        head = output_layer(model) if self.loss_chunk_size and model.training and "labels" in inputs else None
        if head is None or self.label_smoother is not None or self.compute_loss_func is not None:
            return super().compute_loss(model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch)
        inputs = dict(inputs)
        labels = inputs.pop("labels")
        with head_returns_hidden(head):
            outputs = model(**inputs)
        hidden = outputs["logits"] if isinstance(outputs, dict) else outputs[0]
        loss = chunked_causal_lm_loss(
            hidden, head.weight, labels, bias=head.bias, num_items_in_batch=num_items_in_batch, chunk_size=self.loss_chunk_size
        )
        if self.args.average_tokens_across_devices and self.model_accepts_loss_kwargs and num_items_in_batch is not None:
            loss = loss * self.accelerator.num_processes  # as the Trainer's own loss: a sum over every process's tokens
        return (loss, outputs) if return_outputs else loss

    def _save_checkpoint(self, model, trial):
        run_dir = self._get_output_dir(trial=trial)
        staging_root = os.path.join(run_dir, STAGING)
        name = f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
        if self.args.should_save:
            shutil.rmtree(os.path.join(staging_root, name), ignore_errors=True)
        self._get_output_dir = lambda trial=None: staging_root  # type: ignore[method-assign]
        try:
            super()._save_checkpoint(model, trial)
        finally:
            del self._get_output_dir
        if self.args.should_save:
            final = os.path.join(run_dir, name)
            if os.path.isdir(final):  # the same step saved twice (e.g. the last step)
                shutil.rmtree(final)
            os.replace(os.path.join(staging_root, name), final)
            shutil.rmtree(staging_root, ignore_errors=True)
            from transformers.trainer_utils import rotate_checkpoints

            rotate_checkpoints(
                output_dir=run_dir,
                save_total_limit=self.args.save_total_limit,
                best_model_checkpoint=self.state.best_model_checkpoint,
                use_mtime=False,
            )
