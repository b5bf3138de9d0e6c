"""Built-in inference engines (an internal plugin): the plain PyTorch engine."""

from dataclasses import dataclass

from tuneforge import hookimpl
from tuneforge.options import option
from tuneforge.records import InferenceEngine


@dataclass
class PtOptions:
    """The pt engine's own options (``--engine pt --help``)."""

    compile: bool = option(False, "Decode small batches with a static KV cache, so transformers compiles the decoding step (torch.compile, CUDA graphs; for CUDA).", group="engine")


def create_pt(
    model,
    *,
    batch_size: int = 8,
    compile: bool = False,
    device: str | None = None,
    torch_dtype: str | None = None,
    attn_implementation: str | None = None,
):
    # ``model``: the ModelBundle the core resolved, or a Loaded (weights already in memory).
    from tuneforge.inference.pt import create_pt_engine

    return create_pt_engine(
        model,
        batch_size=batch_size,
        compile=compile,
        device=device,
        torch_dtype=torch_dtype,
        attn_implementation=attn_implementation,
    )


@hookimpl
def tuneforge_inference_engines():
    yield InferenceEngine(
        name="pt",
        description="Plain PyTorch: transformers generate() on dynamically batched requests (any device, any model)",
        create=create_pt,
        options=PtOptions,
    )
