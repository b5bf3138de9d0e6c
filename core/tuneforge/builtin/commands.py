"""Built-in commands (an internal plugin): sft, infer, deploy, eval, export, plan, quickstart; and quickstart's default task.

Each is a ``Command`` record; the CLI builds them, and any a plugin registers, with
one builder (``tuneforge.cli.command_from``). The work is imported when a command runs.
"""

from tuneforge import hookimpl
from tuneforge.config import EvalConfig, ExportConfig, InferConfig, SFTConfig
from tuneforge.plan import PlanConfig
from tuneforge.quickstart import MEETING_MINUTES, QuickstartConfig
from tuneforge.records import Command
from tuneforge.server.config import DeployConfig


def _sft(config):
    from tuneforge.registry import get_registry

    return get_registry().get("training_methods", "sft").run(config)


def _infer(config):
    from tuneforge.inference.run import run_infer

    return run_infer(config)


def _deploy(config):
    from tuneforge.server.run import run_deploy

    return run_deploy(config)


def _eval(config):
    from tuneforge.evaluation import run_eval

    return run_eval(config)


def _export(config):
    from tuneforge.export import run_export

    return run_export(config)


def _plan(config):
    from tuneforge.plan import run_plan

    run_plan(config)


def _quickstart(config):
    from tuneforge.quickstart import run_quickstart

    return run_quickstart(config)


@hookimpl
def tuneforge_cli_commands():
    yield Command("sft", "Supervised fine-tuning. CONFIG_FILE: optional YAML; flags override it.", SFTConfig, _sft)
    yield Command("infer", "Chat with a model, or answer a jsonl of requests (--input).", InferConfig, _infer)
    yield Command("deploy", "Serve a model over an OpenAI-compatible HTTP API (docs/serving.md).", DeployConfig, _deploy)
    yield Command("eval", "Answer a dataset's held-out split and score the answers.", EvalConfig, _eval)
    yield Command("export", "Turn an output dir into a deployable model (merge LoRA, quantize, ...).", ExportConfig, _export)
    yield Command(
        "plan",
        "Estimate the peak memory per GPU of a training run under each parallel backend, from the model's config alone, and recommend one.",
        PlanConfig,
        _plan,
        config_file=False,
    )
    yield Command(
        "quickstart",
        "A bundled job, before/after: by default, fine-tune SmolLM2 to write meeting minutes (--task: tuneforge list tasks).",
        QuickstartConfig,
        _quickstart,
        config_file=False,
    )


@hookimpl
def tuneforge_quickstart_tasks():
    yield MEETING_MINUTES
