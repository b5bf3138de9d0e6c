"""The registry: every record of every plugin, indexed by kind and name."""

from __future__ import annotations

import difflib
from typing import Any

from .records import RECORD_KINDS, iter_records


class RegistryError(Exception):
    """A record conflict or a failed look-up; the message is a sentence for a person."""


class UnknownName(RegistryError, KeyError):
    def __str__(self) -> str:  # KeyError would quote the message
        return self.args[0]


_KIND_WORDS = {
    "model_families": "model family",
    "models": "model",
    "chat_templates": "chat template",
    "dataset_formats": "dataset format",
    "datasets": "dataset",
    "tuners": "tuner",
    "training_methods": "training method",
    "parallel_backends": "parallel backend",
    "devices": "device",
    "inference_engines": "inference engine",
    "exporters": "exporter",
}


class Registry:
    def __init__(self, manager) -> None:
        self.manager = manager
        self.records: dict[str, dict[str, Any]] = {}
        self.providers: dict[str, dict[str, str]] = {}  # kind -> name -> plugin name
        for kind in RECORD_KINDS:
            self._collect(kind)

    def _provider_label(self, plugin_name: str) -> str:
        info = self.manager.infos.get(plugin_name)
        if info is None:
            return plugin_name
        return f"{info.distribution} {info.version} (plugin '{plugin_name}')"

    def _collect(self, kind: str) -> None:
        record_type = RECORD_KINDS[kind]
        hook = getattr(self.manager.hook, f"tuneforge_{kind}")
        found: dict[str, Any] = {}
        providers: dict[str, str] = {}
        for impl in reversed(hook.get_hookimpls()):  # registration order
            for record in iter_records(impl.function()):
                if not isinstance(record, record_type):
                    raise RegistryError(
                        f"Plugin {self._provider_label(impl.plugin_name)} returned a "
                        f"{type(record).__name__} from tuneforge_{kind}; it must return "
                        f"{record_type.__name__} records."
                    )
                if record.name in found:
                    raise RegistryError(
                        f"Conflicting plugins for {_KIND_WORDS[kind]} '{record.name}': provided by "
                        f"{self._provider_label(providers[record.name])} and by "
                        f"{self._provider_label(impl.plugin_name)}; uninstall one of them or limit "
                        f"the plugins that load with TUNEFORGE_LOAD_PLUGINS."
                    )
                found[record.name] = record
                providers[record.name] = impl.plugin_name
                info = self.manager.infos.get(impl.plugin_name)
                if info is not None:
                    info.registers.setdefault(kind, []).append(record.name)
        self.records[kind] = found
        self.providers[kind] = providers

    def all(self, kind: str) -> list[Any]:
        return list(self.records[kind].values())

    def names(self, kind: str) -> list[str]:
        return sorted(self.records[kind])

    def has(self, kind: str, name: str) -> bool:
        return name in self.records[kind]

    def get(self, kind: str, name: str) -> Any:
        try:
            return self.records[kind][name]
        except KeyError:
            known = self.names(kind)
            close = difflib.get_close_matches(name, known, n=1)
            hint = f" Did you mean '{close[0]}'?" if close else ""
            raise UnknownName(
                f"Unknown {_KIND_WORDS[kind]} '{name}'; known: {', '.join(known) or 'none'}.{hint} "
                f"Install the plugin that provides it or check the spelling (`tuneforge list`)."
            ) from None

    def provider(self, kind: str, name: str) -> str:
        return self.providers[kind][name]


_registry: Registry | None = None


def get_registry() -> Registry:
    global _registry
    if _registry is None:
        from .plugins import get_plugin_manager

        _registry = Registry(get_plugin_manager())
    return _registry


def reset_registry() -> None:
    global _registry
    _registry = None
