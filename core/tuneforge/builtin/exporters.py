"""Built-in exporters (an internal plugin): merge-lora, which ``--format merged`` names, and gguf."""

from tuneforge import hookimpl
from tuneforge.gguf_export import GgufOptions
from tuneforge.records import Exporter


def _merge_lora(bundle, output_dir, options):
    from tuneforge.export import merge_lora

    return merge_lora(bundle, output_dir, options)


def _gguf(bundle, output_dir, options):
    from tuneforge.gguf_export import export_gguf

    return export_gguf(bundle, output_dir, options)


@hookimpl
def tuneforge_exporters():
    yield Exporter(
        name="merge-lora",
        description="Merge a LoRA/DoRA adapter into its base: a standalone transformers checkpoint (full weights are written as they are)",
        export=_merge_lora,
        aliases=("merged",),  # `export --format merged`
    )
    yield Exporter(
        name="gguf",
        description="Merge, then write one GGUF file (f16, q8_0 or q4_k_m) with the tokenizer and the trained chat template, for llama.cpp and Ollama",
        export=_gguf,
        options=GgufOptions,
    )
