"""The plugin manager: the core's internal plugins plus every ``tuneforge`` entry point.

``TUNEFORGE_LOAD_PLUGINS=a,b`` limits the entry points that load to those names
(empty: none but the core's own). A plugin that fails to import is reported with
its distribution and the error, and skipped. ``TUNEFORGE_TRACE_PLUGINS=1`` prints
every hook call to stderr.
"""

from __future__ import annotations

import importlib
import importlib.metadata as md
import os
import sys
from dataclasses import dataclass, field

import pluggy

from . import hookspecs

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


class PluginManager(pluggy.PluginManager):
    """A pluggy manager that remembers where each plugin came from."""

    def __init__(self) -> None:
        super().__init__(hookspecs.PROJECT)
        self.add_hookspecs(hookspecs)
        self.infos: dict[str, PluginInfo] = {}
        if os.environ.get(TRACE_ENV):
            self.trace.root.setwriter(lambda msg: sys.stderr.write(f"[tuneforge] {msg}"))
            self.enable_tracing()

    def register_plugin(self, plugin, name: str, distribution: str, version: str, builtin: bool = False):
        self.register(plugin, name=name)
        self.infos[name] = PluginInfo(name, distribution, version, builtin)

    def load_builtins(self) -> None:
        from . import __version__

        for module_name in BUILTIN_PLUGINS:
            module = importlib.import_module(module_name)
            self.register_plugin(module, module_name, "tuneforge", __version__, builtin=True)

    def load_entry_points(self, allowed: set[str] | None = None) -> None:
        """Load every ``tuneforge`` entry point (or those named in ``allowed``)."""
        for ep in md.entry_points(group=ENTRY_POINT_GROUP):
            if allowed is not None and ep.name not in allowed:
                continue
            if self.has_plugin(ep.name) or ep.name in self.infos:
                continue
            dist = ep.dist.metadata["Name"] if ep.dist is not None else "?"
            version = ep.dist.version if ep.dist is not None else "?"
            try:
                plugin = ep.load()
                self.register_plugin(plugin, ep.name, dist, version)
            except Exception as exc:  # a broken plugin must not break every command
                self.infos[ep.name] = PluginInfo(
                    ep.name, dist, version, error=f"{type(exc).__name__}: {exc}"
                )
        self.check_pending()

    @property
    def failures(self) -> list[PluginInfo]:
        return [info for info in self.infos.values() if info.error]


def allowed_plugins_from_env() -> set[str] | None:
    value = os.environ.get(LOAD_ENV)
    if value is None:
        return None
    return {name.strip() for name in value.split(",") if name.strip()}


_manager: PluginManager | None = None


def get_plugin_manager() -> PluginManager:
    """The process-wide manager, built on first use."""
    global _manager
    if _manager is None:
        manager = PluginManager()
        manager.load_builtins()
        manager.load_entry_points(allowed_plugins_from_env())
        _manager = manager
    return _manager


def reset_plugin_manager(manager: PluginManager | None = None) -> None:
    """Replace the process-wide manager (tests build their own)."""
    global _manager
    _manager = manager
    from . import registry

    registry.reset_registry()


def warn_failures(manager: PluginManager, echo=None) -> None:
    echo = echo or (lambda msg: print(msg, file=sys.stderr))
    for info in manager.failures:
        echo(
            f"warning: plugin '{info.name}' from {info.distribution} {info.version} failed to load "
            f"and was skipped ({info.error}); reinstall it or set {LOAD_ENV} to leave it out."
        )
