"""Built-in inference engines (an internal plugin): the plain PyTorch engine."""

from tuneforge import hookimpl
from tuneforge.records import InferenceEngine


def create_pt(
    model,
    *,
    batch_size: int = 8,
    compile: bool = False,
    device: str | None = None,
    torch_dtype: str | None = None,
    template: str | None = None,
    attn_implementation: str | None = None,
    model_family: str | None = None,
    trust_remote_code: bool | None = None,
):
    # A named signature (no **kwargs) lets create_engine name an option pt does not take.
    from tuneforge.inference.pt import create_pt_engine

    return create_pt_engine(
        model,
        batch_size=batch_size,
        compile=compile,
        device=device,
        torch_dtype=torch_dtype,
        template=template,
        attn_implementation=attn_implementation,
        model_family=model_family,
        trust_remote_code=trust_remote_code,
    )


@hookimpl
def tuneforge_inference_engines():
    yield InferenceEngine(
        name="pt",
        description="Plain PyTorch: transformers generate() on dynamically batched requests (any device, any model)",
        create=create_pt,
    )
