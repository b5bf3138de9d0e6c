"""Built-in training methods (an internal plugin): supervised fine-tuning."""

from tuneforge import hookimpl
from tuneforge.config import SFTConfig
from tuneforge.records import TrainingMethod


def _prepare_data(ctx):
    from tuneforge.training.sft import prepare_data

    return prepare_data(ctx)


def _build_trainer(ctx, model, ref_model):
    from tuneforge.training.sft import trainer_for

    return trainer_for(ctx, model, ref_model)


@hookimpl
def tuneforge_training_methods():
    # The core's run_training runs it: sft supplies only its data and its trainer.
    yield TrainingMethod(
        name="sft",
        description="Supervised fine-tuning on conversations (loss on the assistant turns)",
        options=SFTConfig,
        prepare_data=_prepare_data,
        build_trainer=_build_trainer,
        supports_packing=True,
        supports_sequence_parallel=True,
    )
