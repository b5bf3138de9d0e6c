"""The registry: every record of every plugin, indexed by kind and name."""

from __future__ import annotations

import difflib
from typing import Any

from .records import KINDS, RECORD_KINDS, iter_records


class RegistryError(Exception):
    """A record conflict or a failed look-up; the message is a sentence for a person."""


class UnknownName(RegistryError, KeyError):
    def __str__(self) -> str:  # KeyError would quote the message
        return self.args[0]


_KIND_WORDS = {kind.key: kind.word for kind in KINDS}


def kind_word(kind: str) -> str:
    """The word a sentence uses for a record kind ("tuner", "inference engine")."""
    return _KIND_WORDS.get(kind, kind.replace("_", " "))


class Registry:
    """Every healthy plugin's records, collected once.

    A plugin whose registration hook raises, or that registers an invalid record, is
    set aside whole (``PluginManager.set_aside``): none of its records of any kind is
    kept, since a half-registered plugin is worse than none. Two healthy plugins that
    give a record the same name are an error only where that kind is used (a look-up
    or a listing of it), so every other command keeps working.
    """

    def __init__(self, manager) -> None:
        self.manager = manager
        self.records: dict[str, dict[str, Any]] = {}
        self.providers: dict[str, dict[str, str]] = {}  # kind -> name -> plugin name
        self.conflicts: dict[str, str] = {}  # kind -> the sentence that stops its use
        self.conflicting: dict[str, set[str]] = {}  # kind -> the names two plugins provide
        for info in manager.infos.values():
            info.registers = {}  # rebuilt below, so a second registry does not add them twice
        failed: dict[str, str] = {}  # plugin name -> why it is set aside
        answers = {kind: self._answers(kind, failed) for kind in RECORD_KINDS}
        for name, error in failed.items():
            manager.set_aside(name, error)
        for kind, kind_answers in answers.items():
            self._index(kind, [(name, records) for name, records in kind_answers if name not in failed])

    def _provider_label(self, plugin_name: str) -> str:
        info = self.manager.infos.get(plugin_name)
        if info is None:
            return f"plugin '{plugin_name}'"
        return f"{info.distribution} {info.version} (plugin '{plugin_name}')"

    @staticmethod
    def _problem(kind: str, records: list[Any]) -> str | None:
        """What is wrong with one plugin's answer to ``tuneforge_<kind>``, or None."""
        record_type = RECORD_KINDS[kind]
        seen: set[str] = set()
        for record in records:
            if not isinstance(record, record_type):
                return (
                    f"tuneforge_{kind} returned a {type(record).__name__}; it must return "
                    f"{record_type.__name__} records"
                )
            if not isinstance(record.name, str) or record.name.split() != [record.name]:
                return (
                    f"tuneforge_{kind} registered a {_KIND_WORDS[kind]} named {record.name!r}; "
                    f"a name must be a non-empty string without spaces"
                )
            if record.name in seen:
                return (
                    f"tuneforge_{kind} registers the {_KIND_WORDS[kind]} '{record.name}' twice; "
                    f"give each record its own name"
                )
            seen.add(record.name)
        return None

    def _answers(self, kind: str, failed: dict[str, str]) -> list[tuple[str, list[Any]]]:
        """Each plugin's records for ``kind``; a plugin that fails goes into ``failed`` instead."""
        hook_name = f"tuneforge_{kind}"
        answers: list[tuple[str, list[Any]]] = []
        # pluggy's call order: the plugin registered last answers first, so at equal
        # priority an installed plugin's record comes before the core's default.
        # Each implementation is called on its own to know who provided what, and
        # so that one that raises takes only its own plugin down.
        for impl in reversed(getattr(self.manager.hook, hook_name).get_hookimpls()):
            if impl.plugin_name in failed:
                continue  # already set aside by an earlier kind: none of its hooks is called again
            try:
                records = list(iter_records(impl.function()))
            except Exception as exc:
                failed[impl.plugin_name] = f"{hook_name} raised {type(exc).__name__}: {' '.join(str(exc).split())}"
                continue
            self.manager.trace_records(hook_name, impl.plugin_name, records)
            problem = self._problem(kind, records)
            if problem:
                failed[impl.plugin_name] = problem
            else:
                answers.append((impl.plugin_name, records))
        return answers

    def _index(self, kind: str, answers: list[tuple[str, list[Any]]]) -> None:
        found: dict[str, Any] = {}
        providers: dict[str, str] = {}
        for plugin_name, records in answers:
            for record in records:
                if record.name in found:
                    self.conflicting.setdefault(kind, set()).add(record.name)
                if record.name in found and kind not in self.conflicts:
                    self.conflicts[kind] = (
                        f"Conflicting plugins for {_KIND_WORDS[kind]} '{record.name}': provided by "
                        f"{self._provider_label(providers[record.name])} and by "
                        f"{self._provider_label(plugin_name)}; uninstall one of them or limit "
                        f"the plugins that load with TUNEFORGE_LOAD_PLUGINS."
                    )
                found.setdefault(record.name, record)
                providers.setdefault(record.name, plugin_name)
                info = self.manager.infos.get(plugin_name)
                if info is not None:
                    info.registers.setdefault(kind, []).append(record.name)
        self.records[kind] = found
        self.providers[kind] = providers

    def _usable(self, kind: str) -> dict[str, Any]:
        if kind in self.conflicts:
            raise RegistryError(self.conflicts[kind])
        return self.records[kind]

    def all(self, kind: str) -> list[Any]:
        return list(self._usable(kind).values())

    def unconflicted(self, kind: str) -> list[Any]:
        """The records of ``kind`` whose names no two plugins provide, even when others conflict
        (for the commands, where one plugin's clash must not take the other commands away)."""
        taken = self.conflicting.get(kind, set())
        return [record for name, record in self.records[kind].items() if name not in taken]

    def names(self, kind: str) -> list[str]:
        return sorted(self._usable(kind))

    def _aliased(self, kind: str, name: str) -> str:
        """The record name ``name`` stands for: itself, or the record that lists it in ``aliases``."""
        records = self._usable(kind)
        if name in records:
            return name
        return next((r.name for r in records.values() if name in getattr(r, "aliases", ())), name)

    def has(self, kind: str, name: str) -> bool:
        return self._aliased(kind, name) in self._usable(kind)

    def get(self, kind: str, name: str) -> Any:
        try:
            return self._usable(kind)[self._aliased(kind, name)]
        except KeyError:
            known = self.names(kind)
            close = difflib.get_close_matches(name, known, n=1)
            hint = f" Did you mean '{close[0]}'?" if close else ""
            raise UnknownName(
                f"Unknown {_KIND_WORDS[kind]} '{name}'; known: {', '.join(known) or 'none'}.{hint} "
                f"Install the plugin that provides it or check the spelling (`tuneforge list`)."
            ) from None

    def provider(self, kind: str, name: str) -> str:
        self._usable(kind)
        return self.providers[kind][name]


def get_registry() -> Registry:
    """The process-wide registry (kept by ``tuneforge.facade``, with the plugin manager)."""
    from . import facade

    return facade.get_registry()


def reset_registry() -> None:
    """Collect the records again at the next ``get_registry``."""
    from . import facade

    facade.reset_registry()
