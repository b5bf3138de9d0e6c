"""The vision-language plugin: its records, gathered from one module per family or concern.

Each module listed in ``MODULES`` may define ``model_families()``, ``chat_templates()``,
``dataset_formats()``, ``datasets()``, ``models()``, ``quickstart_tasks()`` and ``cli_commands()`` generators; this module is the only one with hooks, so the
records are built only when tuneforge asks for them.
"""

from importlib import import_module

from tuneforge.api import hookimpl

TUNEFORGE_API = "1.0"  # the tuneforge.api version this plugin was written for

MODULES: tuple[str, ...] = ("qwen_vl", "internvl", "smolvlm", "datasets.whiteboard_notes", "default_model", "bench")


def _records(kind: str):
    for name in MODULES:
        make = getattr(import_module(f"tuneforge_vl.{name}"), kind, None)
        if make is not None:
            yield from make()


@hookimpl
def tuneforge_model_families():
    yield from _records("model_families")


@hookimpl
def tuneforge_chat_templates():
    yield from _records("chat_templates")


@hookimpl
def tuneforge_dataset_formats():
    yield from _records("dataset_formats")


@hookimpl
def tuneforge_datasets():
    yield from _records("datasets")


@hookimpl
def tuneforge_models():
    yield from _records("models")


@hookimpl
def tuneforge_quickstart_tasks():
    yield from _records("quickstart_tasks")


@hookimpl
def tuneforge_cli_commands():
    yield from _records("cli_commands")
