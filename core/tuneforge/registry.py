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
        for info in manager.infos.values():
            info.registers = {}  # rebuilt below, so a second registry does not add them twice
        for kind in RECORD_KINDS:
            self._collect(kind)

    def _provider_label(self, plugin_name: str) -> str:
        info = self.manager.infos.get(plugin_name)
        if info is None:
            return f"plugin '{plugin_name}'"
        return f"{info.distribution} {info.version} (plugin '{plugin_name}')"

    def _check(self, kind: str, record: Any, plugin_name: str) -> None:
        record_type = RECORD_KINDS[kind]
        if not isinstance(record, record_type):
            raise RegistryError(
                f"{self._provider_label(plugin_name)} returned a {type(record).__name__} from "
                f"tuneforge_{kind}; it must return {record_type.__name__} records."
            )
        if not isinstance(record.name, str) or record.name.split() != [record.name]:
            raise RegistryError(
                f"{self._provider_label(plugin_name)} registered a {_KIND_WORDS[kind]} named "
                f"{record.name!r}; a name must be a non-empty string without spaces."
            )

    def _collect(self, kind: str) -> None:
        hook_name = f"tuneforge_{kind}"
        hook = getattr(self.manager.hook, hook_name)
        found: dict[str, Any] = {}
        providers: dict[str, str] = {}
        # pluggy's call order: the plugin registered last answers first, so at equal
        # priority an installed plugin's record comes before the core's default.
        # Each implementation is called on its own to know who provided what.
        for impl in reversed(hook.get_hookimpls()):
            try:
                records = list(iter_records(impl.function()))
            except Exception as exc:
                raise RegistryError(
                    f"{self._provider_label(impl.plugin_name)} failed in {hook_name} "
                    f"({type(exc).__name__}: {' '.join(str(exc).split())}); fix or uninstall it, "
                    f"or leave it out with TUNEFORGE_LOAD_PLUGINS."
                ) from exc
            self.manager.trace_records(hook_name, impl.plugin_name, records)
            for record in records:
                self._check(kind, record, impl.plugin_name)
                if providers.get(record.name) == impl.plugin_name:
                    raise RegistryError(
                        f"{self._provider_label(impl.plugin_name)} registers the {_KIND_WORDS[kind]} "
                        f"'{record.name}' twice; give each record its own name."
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
