"""The plugin manager: the core's internal plugins plus every ``tuneforge`` entry point.

``TUNEFORGE_LOAD_PLUGINS=a,b`` limits the entry points that load to those names
(empty: none but the core's own). A plugin that fails to import, implements a
hook that does not exist, raises in a hook, registers an invalid record or was
written for a plugin API version this tuneforge does not offer (``apiversion``) is set
aside: reported once with its distribution and the error, and left out whole, so
a broken plugin breaks only itself. ``TUNEFORGE_TRACE_PLUGINS=1`` prints every
hook call to stderr.
"""

from __future__ import annotations

import difflib
import importlib
import importlib.metadata as md
import os
import sys
from dataclasses import dataclass, field, replace

import pluggy

from . import apiversion, hookspecs

ENTRY_POINT_GROUP = "tuneforge"
LOAD_ENV = "TUNEFORGE_LOAD_PLUGINS"
TRACE_ENV = "TUNEFORGE_TRACE_PLUGINS"

# The core's defaults, registered through the same hooks a third party uses.
BUILTIN_PLUGINS = (
    "tuneforge.builtin.model_families",
    "tuneforge.builtin.models",
    "tuneforge.builtin.templates",
    "tuneforge.builtin.dataset_formats",
    "tuneforge.builtin.datasets",
    "tuneforge.builtin.tuners",
    "tuneforge.builtin.training_methods",
    "tuneforge.builtin.parallel_backends",
    "tuneforge.builtin.devices",
    "tuneforge.builtin.inference_engines",
    "tuneforge.builtin.exporters",
    "tuneforge.builtin.commands",
    "tuneforge.builtin.rewards",
)


@dataclass
class PluginInfo:
    """What ``tuneforge plugins`` shows about one loaded (or failed) plugin."""

    name: str
    distribution: str
    version: str
    builtin: bool = False
    error: str | None = None
    registers: dict[str, list[str]] = field(default_factory=dict)


def _one_line(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {' '.join(str(exc).split())}"


def _tracing_requested() -> bool:
    return os.environ.get(TRACE_ENV, "").strip().lower() not in ("", "0", "false", "no", "off")


def _write_trace(message: str) -> None:
    sys.stderr.write("".join(f"[tuneforge] {line}\n" for line in message.splitlines()))


class PluginManager(pluggy.PluginManager):
    """A pluggy manager that remembers where each plugin came from."""

    def __init__(self) -> None:
        super().__init__(hookspecs.PROJECT)
        self.add_hookspecs(hookspecs)
        self.infos: dict[str, PluginInfo] = {}
        self.warnings: list[str] = []  # problems that are not one plugin's failure
        self.reported: set[str] = set()  # messages already shown, so each is shown once
        self.refusals: dict[str, str] = {}  # plugin name -> why its API version is refused, in one sentence
        self.tracing = _tracing_requested()
        if self.tracing:
            self.trace.root.setwriter(_write_trace)
            self.enable_tracing()

    def register_plugin(self, plugin, name: str, distribution: str, version: str, builtin: bool = False):
        self.register(plugin, name=name)
        self.infos[name] = PluginInfo(name, distribution, version, builtin)

    def unregister(self, plugin=None, name=None):
        if name is None and plugin is not None:
            name = self.get_name(plugin)
        removed = super().unregister(plugin=plugin, name=name)
        self.infos.pop(name, None)
        return removed

    def set_aside(self, name: str, error: str) -> None:
        """Unregister a plugin that failed after it loaded (in a hook, or with an invalid record).

        It stays in ``infos`` with the error, like a plugin that failed to import, so
        ``tuneforge plugins`` shows it and ``warn_failures`` reports it; none of its
        hooks is called again, so none of its records or commands is used.
        """
        info = self.infos.get(name) or PluginInfo(name, "?", "?")
        if self.has_plugin(name):
            super().unregister(name=name)  # not ours: that forgets the info, and its place in the listing
        self.infos[name] = replace(info, error=error, registers={})

    def load_builtins(self) -> None:
        from . import __version__

        for module_name in BUILTIN_PLUGINS:
            module = importlib.import_module(module_name)
            self.register_plugin(module, module_name, "tuneforge", __version__, builtin=True)
        self.check_pending()  # a misspelled hook in the core is a bug: fail loudly

    def load_entry_points(self, allowed: set[str] | None = None) -> None:
        """Load every ``tuneforge`` entry point (or those named in ``allowed``)."""
        found: set[str] = set()
        for ep in md.entry_points(group=ENTRY_POINT_GROUP):
            found.add(ep.name)
            if allowed is not None and ep.name not in allowed:
                continue
            dist = ep.dist.metadata["Name"] if ep.dist is not None else "?"
            version = ep.dist.version if ep.dist is not None else "?"
            taken = self.infos.get(ep.name)
            if taken is not None:
                if taken.distribution != dist:
                    self.warnings.append(
                        f"warning: plugin '{ep.name}' from {dist} {version} was skipped because "
                        f"{taken.distribution} {taken.version} already provides a plugin of that name; "
                        f"uninstall one of the two distributions."
                    )
                continue
            try:
                plugin = ep.load()
                refused = apiversion.version_problem(ep.name, dist, apiversion.declared_version(plugin))
                if refused is not None:
                    self.infos[ep.name] = PluginInfo(ep.name, dist, version, error=refused[0])
                    self.refusals[ep.name] = refused[1]
                    continue
                self.register_plugin(plugin, ep.name, dist, version)
                self._check_hook_names(ep.name)
            except Exception as exc:  # a broken plugin must not break every command
                if self.has_plugin(ep.name):
                    self.unregister(name=ep.name)
                self.infos[ep.name] = PluginInfo(ep.name, dist, version, error=_one_line(exc))
        for name in sorted((allowed or set()) - found):
            self.warnings.append(
                f"warning: {LOAD_ENV} names '{name}', but no installed plugin has that name "
                f"(installed: {', '.join(sorted(found)) or 'none'}); fix the name or install the plugin."
            )

    def _check_hook_names(self, plugin_name: str) -> None:
        """Like pluggy's ``check_pending``, for one plugin, with a did-you-mean."""
        plugin = self.get_plugin(plugin_name)
        for hook_name, caller in vars(self.hook).items():
            if hook_name.startswith("_") or caller.has_spec():
                continue
            if any(impl.plugin is plugin and not impl.optionalhook for impl in caller.get_hookimpls()):
                specs = [name for name in vars(hookspecs) if name.startswith(f"{hookspecs.PROJECT}_")]
                close = difflib.get_close_matches(hook_name, specs, n=1)
                hint = f"; did you mean '{close[0]}'?" if close else ""
                raise pluggy.PluginValidationError(plugin, f"unknown hook '{hook_name}'{hint}")

    def trace_records(self, hook_name: str, plugin_name: str, records) -> None:
        """Trace one plugin's answer to a registration hook (the registry calls them one by one)."""
        if self.tracing:
            names = ", ".join(str(getattr(r, "name", r)) for r in records) or "nothing"
            self.trace.root.get("hook")(f"{hook_name} from {plugin_name} --> {names}")

    def add_commands(self, group) -> None:
        """Let each plugin add its commands to the click ``group``, one plugin at a time.

        A plugin whose ``tuneforge_commands`` raises is set aside and the commands it
        added before raising are taken back, so ``--help`` and every other command
        keep working.
        """
        for impl in reversed(self.hook.tuneforge_commands.get_hookimpls()):
            before = dict(group.commands)
            try:
                impl.function(cli=group)
            except Exception as exc:
                group.commands.clear()
                group.commands.update(before)
                self.set_aside(impl.plugin_name, f"tuneforge_commands raised {_one_line(exc)}")
                continue
            if self.tracing:
                added = ", ".join(sorted(set(group.commands) - set(before))) or "nothing"
                self.trace.root.get("hook")(f"tuneforge_commands from {impl.plugin_name} --> {added}")

    @property
    def failures(self) -> list[PluginInfo]:
        return [info for info in self.infos.values() if info.error]


def allowed_plugins_from_env() -> set[str] | None:
    value = os.environ.get(LOAD_ENV)
    if value is None:
        return None
    return {name.strip() for name in value.split(",") if name.strip()}


def get_plugin_manager() -> PluginManager:
    """The process-wide manager, built on first use (kept by ``tuneforge.facade``)."""
    from . import facade

    return facade.get_plugin_manager()


def reset_plugin_manager(manager: PluginManager | None = None) -> None:
    """Replace the process-wide manager, and so the registry (tests build their own)."""
    from . import facade

    facade.reset_plugin_manager(manager)


def warn_failures(manager: PluginManager, echo=None) -> None:
    """Report plugins that failed (and allow-list mistakes) without stopping, each once.

    Called when the CLI starts and again whenever collecting records or commands
    sets a plugin aside; a message already shown is not shown again.
    """
    echo = echo or (lambda msg: print(msg, file=sys.stderr))
    messages = [
        manager.refusals.get(info.name) or f"warning: plugin '{info.name}' from {info.distribution} {info.version} failed to load "
        f"and was skipped ({info.error}); fix or uninstall {info.distribution}, or leave it out "
        f"by listing only the plugins you want in {LOAD_ENV}."
        for info in manager.failures
    ]
    for message in [*messages, *manager.warnings]:
        if message not in manager.reported:
            manager.reported.add(message)
            echo(message)
