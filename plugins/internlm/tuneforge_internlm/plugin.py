"""The InternLM plugin: the InternLM3 family, the InternLM chat templates, and an InternLM2 converter.

Only records are built here; the template and conversion code is imported when used.
"""

import click

from tuneforge.api import ChatTemplate, ModelFamily, hookimpl

TUNEFORGE_API = "1.0"  # the tuneforge.api version this plugin was written for

LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@hookimpl
def tuneforge_model_families():
    yield ModelFamily(
        name="internlm3",
        description="InternLM3 (InternLM3ForCausalLM, native in transformers), InternLM chat template",
        architectures=("InternLM3ForCausalLM",),
        model_types=("internlm3",),
        default_template="internlm3",
        lora_target_modules=LINEAR,
        priority=10,  # transformers loads it as a Llama: win over the generic llama family
    )


def _build(name):
    def build(tokenizer):
        from tuneforge_internlm import templates

        return getattr(templates, f"build_{name}")(tokenizer)

    return build


@hookimpl
def tuneforge_chat_templates():
    yield ChatTemplate(
        name="internlm2",
        description="InternLM2/2.5 ChatML after <s>; tools as <|plugin|> actions, results from 'environment'",
        build=_build("internlm2"),
    )
    yield ChatTemplate(
        name="internlm3",
        description="InternLM3 ChatML after <s> (the InternLM2 layout); tools as <|plugin|> actions",
        build=_build("internlm3"),
    )


@hookimpl
def tuneforge_commands(cli):
    @cli.command("internlm2-to-llama")
    @click.argument("src")
    @click.argument("dst")
    def internlm2_to_llama(src, dst):
        """Convert an InternLM2/2.5 checkpoint (fused wqkv) to a Llama-layout checkpoint in DST."""
        from tuneforge.api import TuneforgeError
        from tuneforge_internlm.convert import internlm2_to_llama as convert

        try:
            notes = convert(src, dst)
        except TuneforgeError as exc:
            raise click.ClickException(str(exc)) from None
        for note in notes:
            click.echo(note)
        click.echo(f"wrote a Llama-layout checkpoint to {dst}; train it with --template internlm2")
