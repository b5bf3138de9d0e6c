"""Built-in exporters (an internal plugin): merge-lora, which ``--format merged`` names."""

from tuneforge import hookimpl
from tuneforge.records import Exporter


def _merge_lora(bundle, output_dir, options):
    from tuneforge.export import merge_lora

    return merge_lora(bundle, output_dir, options)


@hookimpl
def tuneforge_exporters():
    yield Exporter(
        name="merge-lora",
        description="Merge a LoRA/DoRA adapter into its base: a standalone transformers checkpoint (full weights are written as they are)",
        export=_merge_lora,
        aliases=("merged",),  # `export --format merged`
    )
