"""Resolve a model spec, match its family, load it for training or inference.

A model spec is a registered model name, a tuneforge output directory, a local
checkpoint directory or a hub id. Everything here answers bad input with one
sentence before any weights are read.

No code shipped with a checkpoint runs unless the caller passes
``trust_remote_code=True`` (the ``--trust-remote-code`` flag): every config,
tokenizer and model load here passes its decision to transformers explicitly,
because transformers left to itself asks on standard input, where a piped "y"
counts as consent.
"""

from __future__ import annotations

import json
import os
import sys
import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import TuneforgeError
from .registry import get_registry
from .runrecord import RUN_RECORD, RunRecord


def read_run_record(path: str | os.PathLike) -> RunRecord | None:
    """The run record of a tuneforge output dir, or None for anything else."""
    return RunRecord.find(path)


@dataclass
class ResolvedModel:
    """Where the weights to start from are, and what a tuneforge run left on top."""

    spec: str
    base_path: str  # a local dir or a hub id holding the base weights
    run_dir: str | None = None  # a tuneforge output dir, when the spec is one
    run: RunRecord | None = None


def _checkpoint_run(path: Path, spec: str) -> RunRecord | None:
    """The record of the finished run whose checkpoint ``path`` is (None: not a tuneforge checkpoint).

    A checkpoint holds the run's weights at its step (an adapter, or a whole model) and the
    tokenizer, but the base model, family and template are the run's: its output
    directory, the checkpoint's parent, records them once the run has finished.
    """
    from .training.output import CHECKPOINT_RECORD, checkpoint_run_id

    if not (path / CHECKPOINT_RECORD).is_file():
        return None
    run = read_run_record(path.parent)
    if run is None:
        raise TuneforgeError(
            f"'{spec}' is a checkpoint of a run that has not finished ('{path.parent}' has no {RUN_RECORD}); "
            f"finish the run with --resume, then load its checkpoint."
        )
    written_by = checkpoint_run_id(path)
    if written_by and run.run_id and written_by != run.run_id:
        raise TuneforgeError(
            f"'{spec}' was written by run {written_by}, but '{path.parent}' now holds run {run.run_id}; "
            f"load a checkpoint of the run that is there."
        )
    return run


def model_run_record(path: Path, spec: str) -> RunRecord | None:
    """The record of the run whose output directory, or whose checkpoint of a finished run, ``path`` is."""
    return read_run_record(path) or _checkpoint_run(path, spec)


def resolve_model(spec: str) -> ResolvedModel:
    registry = get_registry()
    if registry.has("models", spec):
        return ResolvedModel(spec, registry.get("models", spec).resolve())
    path = Path(spec).expanduser()
    if path.is_dir():
        run = model_run_record(path, spec)
        if run is not None:
            if run.saves_adapter:
                return ResolvedModel(spec, run.base_model, str(path), run)
            return ResolvedModel(spec, str(path), str(path), run)
        if not (path / "config.json").is_file():
            raise TuneforgeError(
                f"Model directory '{spec}' has no config.json; point --model at a transformers checkpoint "
                f"or a tuneforge output directory."
            )
        return ResolvedModel(spec, str(path))
    if path.exists():
        raise TuneforgeError(f"Model '{spec}' is a file; pass the directory that holds the checkpoint.")
    if spec.count("/") == 1 and not spec.startswith((".", "/", "~")):
        return ResolvedModel(spec, spec)  # a hub id; loading says so if no hub is reachable
    known = ", ".join(registry.names("models")) or "none"
    raise TuneforgeError(
        f"Model '{spec}' is not a registered model (known: {known}), an existing directory, or a hub id "
        f"like 'org/name'; check the path or the name."
    )


TRUST_FLAG = "--trust-remote-code"
_announced: set[tuple[str, bool]] = set()  # (path, trusted) already warned about in this process


def check_remote_code(resolved: ResolvedModel, trust_remote_code: bool) -> None:
    """Refuse, before anything loads, a model spec whose checkpoint needs its own Python code, unless trusted.

    Decided from the checkpoint's JSON files alone (nothing is imported); with
    ``trust_remote_code`` the user is warned, on stderr, which directory's code will run.
    A run's record saying it was trained with ``--trust-remote-code`` is not consent:
    each command that loads the run must be given the flag again.
    """
    for path in dict.fromkeys(p for p in (resolved.base_path, resolved.run_dir) if p):
        _check_path(path, trust_remote_code, run=resolved.run)


def _check_path(path: str, trust_remote_code: bool, run: RunRecord | None = None) -> None:
    shipped = _shipped_code(path)
    key = (str(Path(path).expanduser().resolve()) if Path(path).expanduser().is_dir() else path, bool(trust_remote_code))
    if trust_remote_code:
        if key not in _announced:
            _announced.add(key)
            if shipped is None and not Path(path).expanduser().is_dir():
                what = f"code from the hub repository '{path}' may run"
            elif shipped is None or not shipped["modules"]:
                what = f"'{path}' ships no code of its own, so none of it runs"
            else:
                what = f"the Python code shipped in '{path}' ({', '.join(shipped['modules'])}) will run with your permissions"
            _warn(f"warning: {TRUST_FLAG} is on: {what}; pass it only for checkpoints you trust.")
        return
    if shipped is None or not shipped["modules"]:
        return
    if shipped["needed"]:
        raise TuneforgeError(_refusal(path, shipped, run))
    if key not in _announced:
        _announced.add(key)
        _warn(
            f"note: '{path}' ships its own code ({', '.join(shipped['modules'])}), which does not run: transformers' "
            f"built-in classes for model_type {shipped['model_type']!r} load it instead."
        )


def _warn(line: str) -> None:
    """A warning on stderr, once per run: every process of a run checks the same model, the main one says so."""
    if int(os.environ.get("RANK", "0")) == 0:
        print(line, file=sys.stderr)


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _modules(auto_map) -> list[str]:
    """The Python files an ``auto_map`` names (``module.Class`` or ``repo--module.Class`` entries)."""
    refs = []
    for value in (auto_map.values() if isinstance(auto_map, dict) else auto_map if isinstance(auto_map, list) else ()):
        refs.extend(value if isinstance(value, (list, tuple)) else [value])
    return sorted({ref.split("--")[-1].rpartition(".")[0] + ".py" for ref in refs if isinstance(ref, str) and "." in ref})


def _shipped_code(path: str) -> dict | None:
    """What code a local checkpoint names, and whether transformers needs it to load the checkpoint.

    None for a hub id (nothing local to read). transformers loads a checkpoint of a
    model_type it knows with its own classes when code is not trusted, so only an
    unknown model_type (or tokenizer class) makes the shipped code necessary.
    """
    directory = Path(path).expanduser()
    if not directory.is_dir():
        return None
    from transformers import CONFIG_MAPPING
    from transformers.models.auto.tokenization_auto import tokenizer_class_from_name

    config = _read_json(directory / "config.json")
    tokenizer_config = _read_json(directory / "tokenizer_config.json")
    model_type = config.get("model_type")
    known_type = isinstance(model_type, str) and model_type in CONFIG_MAPPING
    config_modules = _modules(config.get("auto_map") or {})
    tokenizer_map = tokenizer_config.get("auto_map") or {}
    tokenizer_modules = _modules(tokenizer_map.get("AutoTokenizer") or [] if isinstance(tokenizer_map, dict) else tokenizer_map)
    tokenizer_class = tokenizer_config.get("tokenizer_class")
    known_tokenizer = (
        tokenizer_class_from_name(tokenizer_class.removesuffix("Fast")) is not None
        if isinstance(tokenizer_class, str)
        else known_type or not config
    )
    needed = []
    if config_modules and not known_type:
        needed.append("config.json")
    if tokenizer_modules and not known_tokenizer:
        needed.append("tokenizer_config.json")
    return {
        "modules": sorted(set(config_modules) | set(tokenizer_modules)),
        "needed": needed,
        "model_type": model_type,
    }


def _refusal(path: str, shipped: dict, run: RunRecord | None) -> str:
    model_type = shipped["model_type"]
    record = ""
    if run is not None and run.trust_remote_code:
        record = (
            f" (its run was trained with {TRUST_FLAG}, but that choice is not read from the run record: "
            f"each command needs the flag again)"
        )
    commands = _conversion_commands(model_type)
    convert = f"`tuneforge {commands[0]}` converts this one; " if commands else ""
    return (
        f"'{path}' (model_type {model_type!r}) needs the Python code shipped with it ({', '.join(shipped['modules'])}, "
        f"named by auto_map in {' and '.join(shipped['needed'])}), and tuneforge runs no code shipped with a checkpoint "
        f"unless you pass {TRUST_FLAG}{record}: pass it if you trust the code in '{path}', or look for a plugin that "
        f"supports or converts the checkpoint ({convert}`tuneforge --help` lists the conversion commands plugins add)."
    )


def _conversion_commands(model_type) -> list[str]:
    """The plugin commands named ``<model_type>-to-...``: converters to a layout that needs no code."""
    if not isinstance(model_type, str) or not model_type:
        return []
    import click

    from .plugins import get_plugin_manager

    group = click.Group()
    get_plugin_manager().add_commands(group)  # a plugin whose hook raises is set aside, the others still count
    return sorted(name for name in group.commands if name.startswith(f"{model_type}-to-"))


def _custom_code_refused(exc: Exception) -> bool:
    return "custom code" in str(exc) and "trust_remote_code" in str(exc)


def load_hf_config(path: str, *, trust_remote_code: bool = False):
    from transformers import AutoConfig

    _check_path(path, trust_remote_code)
    try:
        return AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
    except OSError as exc:
        raise TuneforgeError(
            f"Could not read the model config of '{path}' ({str(exc).splitlines()[0]}); check the path, "
            f"or that the hub is reachable for a hub id."
        ) from None
    except ValueError as exc:  # e.g. a checkpoint that needs its own code, or a model_type transformers lacks
        model_type = _config_model_type(path)
        if _custom_code_refused(exc):
            raise TuneforgeError(
                f"'{path}' (model_type {model_type!r}) needs the Python code shipped with it, and tuneforge runs no "
                f"code shipped with a checkpoint unless you pass {TRUST_FLAG}: pass it if you trust that code, or look "
                f"for a plugin that supports or converts it (`tuneforge --help` lists the conversion commands plugins add)."
            ) from None
        raise TuneforgeError(
            f"transformers cannot read the config of '{path}' (model_type {model_type!r}: {str(exc).splitlines()[0][:160]}); "
            f"tuneforge runs no code shipped with a checkpoint: look for a plugin that supports or converts it "
            f"(`tuneforge --help` lists the conversion commands plugins add)."
        ) from None


def _config_model_type(path: str) -> str | None:
    try:
        return json.loads((Path(path) / "config.json").read_text()).get("model_type")
    except (OSError, ValueError):
        return None


def _matches(family, config) -> bool:
    architectures = set(getattr(config, "architectures", None) or ())
    return bool(architectures & set(family.architectures)) or (
        getattr(config, "model_type", None) in set(family.model_types)
    )


def match_family(config, forced: str | None = None):
    """The model family for a transformers config (or the one named by ``forced``).

    Families that name architectures or model types are tried first, highest
    priority first; a family that names neither is a catch-all fallback.
    """
    registry = get_registry()
    if forced:
        return registry.get("model_families", forced)
    families = sorted(registry.all("model_families"), key=lambda f: -f.priority)
    for family in families:
        if (family.architectures or family.model_types) and _matches(family, config):
            return family
    for family in families:
        if not family.architectures and not family.model_types:
            return family
    raise TuneforgeError(
        f"No model family matches model_type '{getattr(config, 'model_type', '?')}' "
        f"(architectures {getattr(config, 'architectures', None)}); install the plugin for it or pass --model-family."
    )


def family_name_for(spec) -> str | None:
    """The name of the model family ``spec`` belongs to, told cheaply: from a run's record or a
    ``config.json`` already on this machine, never weights, a download or a registered model's
    conversion (a ``ModelSource`` says its family itself). None where it cannot be told now; the
    command resolving the spec reports a bad one."""
    if not isinstance(spec, str) or not spec:
        return None
    registry = get_registry()
    try:
        if registry.has("models", spec):
            return registry.get("models", spec).model_family
        location, path = spec, Path(spec).expanduser()
        run = model_run_record(path, spec) if path.is_dir() else None
        if run is not None:
            if run.model_family and registry.has("model_families", run.model_family):
                return run.model_family
            location = run.base_model if run.saves_adapter else spec
        config = _local_config(location)
        if config is None:
            return None
        from types import SimpleNamespace

        family = match_family(SimpleNamespace(architectures=config.get("architectures"), model_type=config.get("model_type")))
        return family.name
    except Exception:  # a broken record or config: resolving the spec says what is wrong
        return None


def _local_config(location: str) -> dict | None:
    """The ``config.json`` of a local checkpoint dir or of a hub id already in the hub cache (None: neither)."""
    path = Path(location).expanduser()
    if path.is_dir():
        config = _read_json(path / "config.json")
        return config or None
    if location.count("/") != 1 or location.startswith((".", "/", "~")):
        return None
    from huggingface_hub import try_to_load_from_cache

    cached = try_to_load_from_cache(location, "config.json")
    return (_read_json(Path(cached)) or None) if isinstance(cached, str) else None


def pick_device(name: str | None = None):
    """The Device record to use: the one named, or the best available."""
    registry = get_registry()
    if name:
        device = registry.get("devices", name)
        if not device.is_available():
            if device.unavailable is not None:  # the device's own sentence: what is missing and how to install it
                raise TuneforgeError(device.unavailable())
            raise TuneforgeError(f"Device '{name}' is not available on this machine; omit --device to use the best available.")
        return device
    available = [d for d in registry.all("devices") if d.is_available()]
    if not available:
        raise TuneforgeError("No device is available, not even the CPU; check the installed device plugins.")
    return max(available, key=lambda d: d.priority)


def apply_device_environment(device) -> None:
    """Set the device's environment variables (allocator settings), unless the user set them.

    Effective only before the device's first allocation in the process, so training,
    inference and serving all run it before the weights load.
    """
    for key, value in device.environment.items():
        os.environ.setdefault(key, value)


def resolve_dtype(torch_dtype: str, device, family=None):
    import torch

    if torch_dtype == "auto":
        torch_dtype = (family.torch_dtype if family and family.torch_dtype else None) or (
            "bfloat16" if device.supports_bf16() else "float32"
        )
    return getattr(torch, torch_dtype)


def load_tokenizer(path: str, *, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    _check_path(path, trust_remote_code)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    except ValueError as exc:
        if not _custom_code_refused(exc):
            raise
        raise TuneforgeError(
            f"The tokenizer of '{path}' needs the Python code shipped with it, and tuneforge runs no code shipped with "
            f"a checkpoint unless you pass {TRUST_FLAG}: pass it if you trust that code, or give the checkpoint a "
            f"tokenizer.json of the same vocabulary."
        ) from None
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def family_options_for(family, run: RunRecord | None = None, given=None):
    """The instance of ``family.options`` a model is loaded with (None: the family declares none).

    ``given`` (a mapping of option values, or an instance) wins over what ``run`` recorded for
    this family, which wins over the defaults; a key the family does not declare is refused."""
    if family.options is None:
        return None
    if isinstance(given, family.options):
        return given
    from .options import build

    recorded = (run.options.get("model_families") or {}) if run is not None else {}
    fields = {f.name for f in dataclasses.fields(family.options)}
    kept = {k: v for k, v in (recorded.get("options") or {}).items() if k in fields} if recorded.get("name") == family.name else {}
    unknown = [key for key in (given or {}) if key not in fields]
    if unknown:
        raise TuneforgeError(
            f"Model family '{family.name}' has no option '{unknown[0]}'; it takes: {', '.join(sorted(fields))}. Leave that option out."
        )
    return build(family.options, kept, dict(given or {}))


def family_option_values(config) -> dict | None:
    """The values of the model family's options in a command's config (None: it selected no family with options)."""
    from .options import selected_options

    return selected_options(config).get("model_families", {}).get("options") or None


def _with_options(family, options) -> dict:
    """The ``options=`` keyword of a family's loaders: given only to a family that declares options."""
    if family.options is None:
        return {}
    return {"options": options if options is not None else family_options_for(family)}


def load_processor(family, path: str, *, trust_remote_code: bool = False, options=None):
    """What the family's templates are built on: its processor where it loads one, else the tokenizer.

    Returns ``(processor, tokenizer)``; they are the same object for a text model. A family that
    declares ``options`` gets them as ``options=`` (an instance of its options dataclass).
    """
    if family.load_processor is None:
        tokenizer = load_tokenizer(path, trust_remote_code=trust_remote_code)
        return tokenizer, tokenizer
    _check_path(path, trust_remote_code)
    processor = family.load_processor(path, trust_remote_code=trust_remote_code, **_with_options(family, options))
    tokenizer = getattr(processor, "tokenizer", processor)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return processor, tokenizer


def model_parts(model, model_family: str | None = None):
    """The ``ModelParts`` of a loaded model's family (None: the family names none)."""
    config = getattr(model, "config", None)
    try:
        return match_family(config, model_family).parts if config is not None else None
    except TuneforgeError:  # weights of no registered family (a benchmark's): nothing is named
        return None


def template_name_for(family, requested: str | None, run: RunRecord | None = None) -> str:
    name = requested or (run.template if run else None) or family.default_template
    get_registry().get("chat_templates", name)  # fail now on an unknown name
    return name


def build_template(name: str, tokenizer):
    return get_registry().get("chat_templates", name).build(tokenizer)


def load_model(path: str, family, *, dtype, attn_implementation: str | None = None, trust_remote_code: bool = False, options=None, **kwargs):
    """Load causal-LM weights the family's way (AutoModelForCausalLM unless it says otherwise).

    A family's own ``load_model`` gets ``trust_remote_code`` too, and must pass it on; a family
    that declares ``options`` gets them as ``options=`` (``options``, else its defaults).
    """
    attn = attn_implementation or family.attn_implementation or "sdpa"
    _check_path(path, trust_remote_code)
    if family.load_model is not None:
        return family.load_model(
            path, dtype=dtype, attn_implementation=attn, trust_remote_code=trust_remote_code, **_with_options(family, options), **kwargs
        )
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(
        path, dtype=dtype, attn_implementation=attn, trust_remote_code=trust_remote_code, **kwargs
    )


def adapter_chain(run_dir: str, run: RunRecord) -> list[str]:
    """The adapter runs that make up an adapter run's model on top of its base, oldest first (this one last)."""
    return run.adapter_chain(run_dir)


def merge_adapters(model, run_dirs: list[str]):
    """``model`` with each tuneforge adapter run of ``run_dirs`` loaded and merged into it, in order."""
    for run_dir in run_dirs:
        run = model_run_record(Path(run_dir), run_dir)
        if run is None or not run.saves_adapter:
            raise TuneforgeError(
                f"'{run_dir}' is named as an adapter this run builds on, but holds no tuneforge adapter run any more; "
                f"put it back, or train again from the base model."
            )
        tuner = get_registry().get("tuners", run.tuner)
        if tuner.merge is None:
            raise TuneforgeError(f"Tuner '{tuner.name}' of '{run_dir}' cannot merge its adapter, so nothing can be built on it; train from its base model.")
        model = tuner.merge(tuner.load(model, run_dir))
    return model


@dataclass(frozen=True)
class ModelBundle:
    """A model spec resolved once: everything training, an inference engine or an exporter needs
    to know about a model before its weights load.

    ``resolved``: where the base weights and the run are; ``run``: the run record of a
    tuneforge output dir (None for plain weights); ``hf_config``: the base's transformers
    config; ``template``: the chat template built on ``processor`` (the tokenizer unless the
    family loads a processor); ``adapters``: the
    adapter runs applied on the base weights, oldest first (the run's own last; empty
    for plain or full weights); ``trust_remote_code``: whether code shipped with the
    checkpoint may run (the caller's decision, never the run record's); ``family_options``:
    the instance of the family's options dataclass its processor and weights load with (None:
    the family declares none).
    """

    spec: str
    resolved: ResolvedModel
    hf_config: Any
    family: Any
    template_name: str
    template: Any
    tokenizer: Any
    adapters: tuple[str, ...] = ()
    trust_remote_code: bool = False
    processor: Any = None  # what the template was built on: the family's processor, else the tokenizer
    # What the template parity check found (``tuneforge.parity``): None where it does not apply.
    template_parity: dict | None = None
    family_options: Any = None

    @property
    def run(self) -> RunRecord | None:
        return self.resolved.run

    @property
    def base_path(self) -> str:
        return self.resolved.base_path

    @property
    def run_dir(self) -> str | None:
        return self.resolved.run_dir

    @property
    def processor_kwargs(self) -> dict:
        """The family's ``processor_kwargs`` for this bundle's processor and options: how another program's
        processor of the checkpoint (vLLM's) is set to process images as ``processor`` does (empty: as loaded)."""
        make = getattr(self.family, "processor_kwargs", None)
        if make is None or self.family_options is None:
            return {}
        return dict(make(self.processor, self.family_options) or {})

    @property
    def base_adapters(self) -> tuple[str, ...]:
        """The adapter runs merged into the base before the run's own adapter (all of ``adapters`` but the last)."""
        return self.adapters[:-1]


def resolve_bundle(
    spec: str,
    *,
    template: str | None = None,
    model_family: str | None = None,
    trust_remote_code: bool = False,
    allow_template_drift: bool = False,
    check_template: bool = True,
    family_options=None,
) -> ModelBundle:
    """Resolve ``spec`` into a ``ModelBundle``: the one place a model spec becomes a family, a template,
    a tokenizer and an adapter chain. Reads configs and the tokenizer, no weights; bad input gets one
    sentence first. ``template``/``model_family`` override what the run record and the config say.

    With ``check_template`` (the default), a named template is compared with the checkpoint's own chat
    template (``tuneforge.parity``): a difference raises ``TemplateDriftError`` unless
    ``allow_template_drift``; the outcome is the bundle's ``template_parity``.

    ``family_options`` (a mapping of the family's option values, or an instance of its
    options dataclass) go to the family's processor and, later, its weights; an option left
    out takes the value the run recorded, else its default."""
    resolved = resolve_model(spec)
    trust_remote_code = bool(trust_remote_code)
    check_remote_code(resolved, trust_remote_code)
    run = resolved.run
    hf_config = load_hf_config(resolved.base_path, trust_remote_code=trust_remote_code)
    family = match_family(hf_config, model_family or (run.model_family if run else None))
    template_name = template_name_for(family, template, run)
    chosen = family_options_for(family, run, family_options)
    processor, tokenizer = load_processor(
        family, resolved.run_dir or resolved.base_path, trust_remote_code=trust_remote_code, options=chosen
    )
    adapters = tuple(run.adapter_chain(resolved.run_dir)) if run and run.saves_adapter else ()
    bundle = ModelBundle(
        spec=spec,
        resolved=resolved,
        hf_config=hf_config,
        family=family,
        template_name=template_name,
        template=build_template(template_name, processor),
        tokenizer=tokenizer,
        processor=processor,
        adapters=adapters,
        trust_remote_code=trust_remote_code,
        family_options=chosen,
    )
    if not check_template:
        return bundle
    from .parity import check_bundle

    report = check_bundle(bundle, allow_drift=allow_template_drift, warn=_warn)
    return dataclasses.replace(bundle, template_parity=report.record()) if report is not None else bundle


@dataclass
class Loaded:
    """A model ready to generate, with everything needed to prompt it."""

    model: Any
    tokenizer: Any
    template: Any
    template_name: str
    family: Any
    run: RunRecord | None
    device: Any
    resolved: ResolvedModel
    device_record: Any = None  # the Device record ``device`` came from (its cache emptying, memory statistics)
    bundle: ModelBundle | None = None  # what the weights were loaded from


def load_for_inference(
    model: str | ModelBundle,
    *,
    device: str | None = None,
    torch_dtype: str = "auto",
    template: str | None = None,
    attn_implementation: str | None = None,
    model_family: str | None = None,
    trust_remote_code: bool = False,
    allow_template_drift: bool = False,
    family_options=None,
) -> Loaded:
    """Load a model spec or bundle for generation; a LoRA output dir comes back as base + adapter.

    ``trust_remote_code`` lets code shipped with the checkpoint run; a run trained
    with it does not pass it on (the caller decides each time). ``template``,
    ``model_family`` and ``trust_remote_code`` resolve a spec; a bundle was resolved with its own.
    """
    import torch

    if isinstance(model, ModelBundle):
        if template or model_family or trust_remote_code or allow_template_drift or family_options:
            raise TuneforgeError(
                "template, model_family, trust_remote_code, allow_template_drift and family_options resolve a model spec, and this model was given as a "
                "bundle already resolved; pass them to resolve_bundle instead."
            )
        bundle = model
    else:
        bundle = resolve_bundle(
            model, template=template, model_family=model_family, trust_remote_code=trust_remote_code,
            allow_template_drift=allow_template_drift, family_options=family_options,
        )
    run, family = bundle.run, bundle.family
    dev = pick_device(device)
    apply_device_environment(dev)
    if torch_dtype == "auto" and run and run.torch_dtype:
        torch_dtype = run.torch_dtype if dev.supports_bf16() or run.torch_dtype == "float32" else "float32"
    dtype = resolve_dtype(torch_dtype, dev, family)
    hf_model = load_model(
        bundle.base_path, family, dtype=dtype, attn_implementation=attn_implementation, trust_remote_code=bundle.trust_remote_code,
        options=bundle.family_options,
    )
    if bundle.adapters:
        hf_model = merge_adapters(hf_model, list(bundle.base_adapters))
        tuner = get_registry().get("tuners", run.tuner)
        hf_model = tuner.load(hf_model, bundle.run_dir)
    torch_device = torch.device(dev.torch_device)
    hf_model.to(torch_device)
    hf_model.eval()
    return Loaded(
        hf_model, bundle.tokenizer, bundle.template, bundle.template_name, family, run, torch_device, bundle.resolved, dev, bundle
    )
