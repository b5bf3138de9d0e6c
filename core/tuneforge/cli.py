"""The ``tuneforge`` command line. Heavy modules are imported inside commands."""

from __future__ import annotations

import json
import sys

import click

from . import __version__, options
from .config import TrainConfig
from .errors import TuneforgeError
from .records import KINDS
from .registry import RegistryError


def _config_from(cls, config_path, values):
    yaml_values = options.load_yaml(config_path) if config_path else {}
    return options.build(cls, yaml_values, options.given(values))


def _run(func, *args):
    """Call ``func`` and turn the errors meant for a person into one clean line."""
    try:
        return func(*args)
    except (TuneforgeError, RegistryError) as exc:
        raise click.ClickException(str(exc)) from None


class TuneforgeGroup(click.Group):
    """Loads plugin commands lazily: only when a name is not a core command.

    The registry is collected first, so a plugin it sets aside (a registration hook
    that raises, an invalid record) adds no command either; a plugin whose own
    ``tuneforge_commands`` raises is set aside too, and every other command stays.
    """

    _added_for = None  # the plugin manager whose commands were added
    _added: tuple = ()  # the names they added

    def _add_plugin_commands(self):
        from .plugins import get_plugin_manager

        manager = get_plugin_manager()
        if self._added_for is not manager:
            # Another manager (tests install their own) brings its own commands: drop the earlier ones first.
            for name in self._added:
                self.commands.pop(name, None)
            self._added_for = manager
            from .plugins import warn_failures
            from .registry import get_registry, reset_registry

            registry = get_registry()
            core = dict(self.commands)
            failed = len(manager.failures)
            for record in _plugin_command_records(registry):
                self.add_command(command_from(record))
            manager.add_commands(self)
            self._added = tuple(name for name in self.commands if name not in core)
            if len(manager.failures) > failed:
                reset_registry()  # collected again without the plugin that was set aside
            warn_failures(manager, lambda msg: click.echo(msg, err=True))
            for name, command in core.items():
                if self.commands.get(name) is not command:  # plugins add commands, never replace the core's
                    self.commands[name] = command
                    click.echo(
                        f"warning: a plugin tried to replace the core command '{name}'; the core's is kept. "
                        f"Rename the plugin's command.",
                        err=True,
                    )

    def get_command(self, ctx, name):
        command = super().get_command(ctx, name)
        if command is None:
            self._add_plugin_commands()
            command = super().get_command(ctx, name)
        return command

    def list_commands(self, ctx):
        self._add_plugin_commands()
        return super().list_commands(ctx)


@click.group(cls=TuneforgeGroup)
@click.version_option(__version__, prog_name="tuneforge")
def cli():
    """Fine-tune, align, serve and export language models.

    Every name (model, dataset, template, tuner, engine, ...) comes from a plugin;
    `tuneforge list` shows them and `tuneforge plugins` shows who provides them.
    """
    from .plugins import get_plugin_manager, warn_failures
    from .versions import check_installed

    if click.get_current_context().invoked_subcommand != "doctor":  # doctor reports such a set instead
        _run(check_installed)  # a set of packages that cannot work together stops here, before any work

    warn_failures(get_plugin_manager(), lambda msg: click.echo(msg, err=True))


def _installed_methods() -> list[str]:
    from .registry import get_registry

    return _run(get_registry().names, "training_methods")


def _training_method(name: str):
    """The TrainingMethod record ``name``, or a one-sentence usage error naming what is installed."""
    from .registry import get_registry

    registry = get_registry()
    if _run(registry.has, "training_methods", name):
        return registry.get("training_methods", name)
    installed = ", ".join(registry.names("training_methods")) or "none"
    raise click.UsageError(
        f"Training method '{name}' is not installed (installed: {installed}); install the plugin that provides it "
        f"(docs/plugins.md lists them) and check `tuneforge plugins`."
    )


def _value_in_args(args: list[str], name: str):
    """Option ``name`` (``--train-type X`` or ``--train-type=X``) from the command line, else the
    key of the YAML file given first; None when neither sets it."""
    flag = "--" + name.replace("_", "-")
    args = [str(arg) for arg in args]
    for i, arg in enumerate(args):
        if arg == flag and i + 1 < len(args):
            return args[i + 1]
        if arg.startswith(flag + "="):
            return arg.split("=", 1)[1]
    positional = next((arg for arg in args if not arg.startswith("-")), None)
    if positional and positional.endswith((".yaml", ".yml")):
        try:
            values = options.load_yaml(positional)
        except options.OptionError:
            return None  # the command reports the bad file itself
        for key, value in values.items():
            if options.normalise_key(key) == name:
                return value
    return None


def _method_in_args(args: list[str]) -> str | None:
    """``--method NAME`` from the command line, else the ``method`` key of the YAML file given first."""
    return _value_in_args(args, "method")


def _flags_of(cls) -> list[click.Parameter]:
    def holder():
        pass

    options.click_options(cls)(holder)
    return list(reversed(holder.__click_params__))  # click.option stacks them last-first


class SelectingCommand(click.Command):
    """A command whose flags are its own options plus those of the records the invocation selects.

    ``config_class(args)`` gives the command's options dataclass (for ``rlhf``, the
    method's); its selecting options (``--train-type``, ``--device``, ``--engine``, ...)
    are read from the arguments and the YAML file before they are parsed, so ``--help``
    and the accepted flags are those of the selected tuner, device, engine, ...
    """

    def __init__(self, *args, config_class=None, **kwargs):
        super().__init__(*args, **kwargs)
        self._fixed_params = list(self.params)
        self._base_help = self.help or ""
        self.config_class = config_class

    def _extra_help(self, args, cls) -> str:
        return ""

    def parse_args(self, ctx, args):
        from .selection import read_options

        cls = self.config_class(args)
        given = {name: value for name in read_options(cls) if (value := _value_in_args(args, name)) is not None}
        # Without --help, the default device is looked up only for a flag no other record
        # declares: asking a device whether it is available may import torch, and a bad
        # option must be reported before anything heavy loads.
        cheap = "--help" not in args
        try:
            return self._parse(ctx, args, cls, given, default_device=not cheap)
        except click.NoSuchOption:
            if not cheap:
                raise
        return self._parse(ctx, args, cls, given, default_device=True)

    def _parse(self, ctx, args, cls, given, default_device):
        from .selection import compose_for

        composed = _run(lambda: compose_for(cls, given, default_device=default_device))
        self.params = self._fixed_params + _flags_of(composed)
        selected = getattr(composed, options.SELECTED_ATTRIBUTE, {})
        from .registry import kind_word

        with_options = [f"the '{name}' {kind_word(kind)}" for kind, (name, oc) in selected.items() if oc is not None]
        flags = ", ".join("--" + name.replace("_", "-") for name in options.selects(cls))
        self.help = self._base_help + self._extra_help(args, cls)
        if with_options:
            self.help += f"\n\nThe options of {', '.join(with_options)} are included."
        if flags:
            self.help += f"\n\nEach record selected by {flags} adds its own options, listed here once selected."
        try:
            return super().parse_args(ctx, list(args))
        except click.NoSuchOption as exc:
            if not default_device:
                raise
            from .selection import owner_of

            # A flag of a record this invocation did not select: say whose it is and how to select it.
            sentence = owner_of(composed, options.normalise_key(exc.option_name.lstrip("-")))
            if sentence:
                raise click.UsageError(sentence, ctx=ctx) from None
            raise


class MethodCommand(SelectingCommand):
    """``rlhf``: the options dataclass is that of the training method named by ``--method``."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, config_class=self._method_options, **kwargs)

    @staticmethod
    def _method_options(args):
        name = _method_in_args(args)
        return _training_method(name).options if name else TrainConfig

    def _extra_help(self, args, cls) -> str:
        name = _method_in_args(args)
        if name:
            return f"\n\nOptions of the '{name}' method follow."
        return (
            f"\n\nInstalled methods: {', '.join(_installed_methods())}. "
            f"`--method NAME --help` lists the method's own options."
        )


def command_from(record) -> click.Command:
    """The click command of a ``Command`` record: the one builder of every such command.

    Its flags are the record's options and those of the records an invocation selects
    (``SelectingCommand``); an optional YAML file, where the record takes one, is the
    argument, and flags override it.
    """
    params = [click.Argument(["config_file"], required=False, type=click.Path(dir_okay=False))] if record.config_file else []

    def callback(config_file=None, **values):
        config = _config_from(record.options, config_file, values)
        _run(record.run, config)

    return SelectingCommand(
        name=record.name, callback=callback, params=params, help=record.description, config_class=lambda args: record.options
    )


def _add_core_commands(group: click.Group) -> None:
    """The core's own commands: the records of ``tuneforge.builtin.commands`` (no plugin loads for them)."""
    from .builtin import commands

    for record in commands.tuneforge_cli_commands():
        group.add_command(command_from(record))


def _plugin_command_records(registry) -> list:
    """The ``Command`` records plugins register (not the core's, whose names they may not take).

    Two plugins giving a command one name (or a plugin taking a core command's name) lose
    that command only, with a warning; their other commands are added."""
    if "cli_commands" in registry.conflicts:
        click.echo(f"warning: {registry.conflicts['cli_commands']}", err=True)
    builtin = {name for name, info in registry.manager.infos.items() if info.builtin}
    providers = registry.providers["cli_commands"]
    return [r for r in registry.unconflicted("cli_commands") if providers[r.name] not in builtin]


@cli.command(cls=MethodCommand)
@click.argument("config_file", required=False, type=click.Path(dir_okay=False))
@click.option("--method", "method_name", help="The training method (dpo, kto, ... from a plugin; `tuneforge list methods`).")
def rlhf(config_file, method_name, **values):
    """Align with a training method a plugin adds. CONFIG_FILE: optional YAML (it may set `method`)."""
    yaml_values = options.load_yaml(config_file) if config_file else {}
    name = method_name or yaml_values.get("method")
    yaml_values.pop("method", None)
    if not name:
        raise click.UsageError(
            f"tuneforge rlhf needs --method NAME (installed: {', '.join(_installed_methods())}); "
            f"`tuneforge rlhf --method NAME --help` lists its options."
        )
    method = _training_method(name)
    config = options.build(method.options, yaml_values, options.given(values))
    _run(method.run, config)


@cli.group()
def bench():
    """Measure speed and memory (docs/performance.md)."""


def _bench_config_class():
    from .bench.train import BenchTrainConfig

    return BenchTrainConfig


@bench.command(name="train", cls=SelectingCommand, config_class=lambda args: _bench_config_class())
@click.argument("config_file", required=False, type=click.Path(dir_okay=False))
def bench_train(config_file, **values):
    """Train a random-weight model of a named shape through the sft path and report tokens/s, MFU, peak memory."""
    config = _config_from(_bench_config_class(), config_file, values)
    from .bench.train import run_bench_train

    _run(run_bench_train, config)


@cli.group()
def template():
    """Chat templates: check one against a checkpoint's own (docs/data.md)."""


def _template_check_config_class():
    from .config import TemplateCheckConfig

    return TemplateCheckConfig


@template.command(name="check", cls=SelectingCommand, config_class=lambda args: _template_check_config_class())
@click.argument("config_file", required=False, type=click.Path(dir_okay=False))
def template_check(config_file, **values):
    """Render probe conversations (and the first rows of --dataset) through the checkpoint's own chat template and
    through the tuneforge template a command would use; print each difference; exit status 1 on any."""
    config = _config_from(_template_check_config_class(), config_file, values)
    from .parity import run_template_check

    status = _run(run_template_check, config, click.echo)
    sys.exit(status)


@cli.command()
@click.option("--all", "show_all", is_flag=True, help="Include the core's own plugins.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON for machines.")
def plugins(show_all, as_json):
    """List installed plugins: distribution, version and what each registers."""
    from .plugins import get_plugin_manager
    from .registry import get_registry

    manager = get_plugin_manager()
    get_registry()  # fills in what each plugin registers, and sets aside a plugin whose hooks fail
    rows = [info for info in manager.infos.values() if show_all or not info.builtin]
    if as_json:
        click.echo(json.dumps([info.__dict__ for info in rows], indent=2))
        return
    if not rows:
        click.echo("No plugins installed beyond the core's own (`tuneforge plugins --all` shows those).")
        return
    for info in rows:
        status = f"  FAILED: {info.error}" if info.error else ""
        click.echo(f"{info.name}  ({info.distribution} {info.version}){' [core]' if info.builtin else ''}{status}")
        for kind, names in info.registers.items():
            click.echo(f"    {kind.replace('_', ' ')}: {', '.join(names)}")


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print everything as JSON (for bug reports).")
@click.option("--timeout", default=120.0, show_default=True, help="Seconds each import check (torch, a plugin's heavy module) may take.")
def doctor(as_json, timeout):
    """Check the environment: Python, torch, devices, plugins, their dependencies' versions and imports.

    One line per finding (ok, warning, problem), with the fix of each problem; exit status 1 on any problem."""
    from .doctor import diagnose, render

    report = diagnose(timeout=timeout)
    if as_json:
        click.echo(json.dumps(report, indent=2))
    else:
        for line in render(report):
            click.echo(line)
    sys.exit(1 if report["problems"] else 0)


# `tuneforge list LABEL` -> record kind, from the one table of kinds.
LISTABLE = {kind.label: kind.key for kind in KINDS}


@cli.command(name="list")
@click.argument("what", required=False, type=click.Choice(sorted(LISTABLE)))
@click.option("--json", "as_json", is_flag=True, help="Print JSON for machines.")
def list_(what, as_json):
    """List what the registry knows: models, families, templates, formats, datasets, ..."""
    from .registry import get_registry

    registry = get_registry()
    kinds = {what: LISTABLE[what]} if what else LISTABLE
    result = {
        label: [
            {"name": r.name, "description": r.description, "plugin": registry.provider(kind, r.name)}
            for r in sorted(_run(registry.all, kind), key=lambda r: r.name)
        ]
        for label, kind in kinds.items()
    }
    if as_json:
        click.echo(json.dumps(result, indent=2))
        return
    for label, records in result.items():
        click.echo(f"{label}:")
        width = max((len(r["name"]) for r in records), default=0)
        for r in records:
            click.echo(f"  {r['name']:<{width}}  {r['description']}")
        if not records:
            click.echo("  (none)")


_add_core_commands(cli)


def main():
    cli(prog_name="tuneforge")


if __name__ == "__main__":
    sys.exit(main())
