"""The process-wide plugin manager and registry, kept in one place.

The plugin manager (``tuneforge.plugins``) loads plugins and answers hooks; the
registry (``tuneforge.registry``) indexes the records a manager's plugins return.
Neither imports the other: this module builds both and keeps them in step (a new
manager means a new registry). ``tuneforge.plugins.get_plugin_manager`` and
``tuneforge.registry.get_registry`` are thin wrappers around it.
"""

from __future__ import annotations

from .plugins import PluginManager, allowed_plugins_from_env, warn_failures
from .registry import Registry

_manager: PluginManager | None = None
_registry: Registry | None = None


def get_plugin_manager() -> PluginManager:
    """The process-wide manager: the core's plugins and the installed ones the environment allows."""
    global _manager
    if _manager is None:
        manager = PluginManager()
        manager.load_builtins()
        manager.load_entry_points(allowed_plugins_from_env())
        _manager = manager
    return _manager


def reset_plugin_manager(manager: PluginManager | None = None) -> None:
    """Replace the process-wide manager (None: build it again on next use); the registry follows."""
    global _manager
    _manager = manager
    reset_registry()


def get_registry() -> Registry:
    """The process-wide registry of the manager's records; a plugin it sets aside is reported on stderr, once."""
    global _registry
    if _registry is None:
        manager = get_plugin_manager()
        _registry = Registry(manager)
        warn_failures(manager)
    return _registry


def reset_registry() -> None:
    """Collect the records again at the next ``get_registry``."""
    global _registry
    _registry = None
