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
    """

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
