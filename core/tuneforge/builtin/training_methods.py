"""Built-in training methods (an internal plugin): supervised fine-tuning."""

from tuneforge import hookimpl
from tuneforge.config import SFTConfig
from tuneforge.records import TrainingMethod


def _run_sft(config):
    from tuneforge.training.sft import run_sft

    return run_sft(config)


@hookimpl
def tuneforge_training_methods():
    yield TrainingMethod(
        name="sft",
        description="Supervised fine-tuning on conversations (loss on the assistant turns)",
        options=SFTConfig,
        run=_run_sft,
        supports_packing=True,
    )
