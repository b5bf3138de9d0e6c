"""Several LoRA adapters on one loaded base model, each served under its own name.

The adapters live in the engine's model (peft's multi-adapter support): loading
one adds its weights beside the others, and before each generation the engine
activates the adapter its requests name, or disables them all for the base.

Loading checks the adapter against the served model before anything is injected
(``read_adapter``: its config's fields and types, the weights' names and shapes),
and a load that still fails removes every layer it added, so a bad adapter never
changes the base model's answers and its name stays free.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from ..errors import TuneforgeError
from ..modeling import RUN_RECORD

ADAPTER_CONFIG = "adapter_config.json"
WEIGHT_FILES = ("adapter_model.safetensors", "adapter_model.bin")

# adapter_config.json fields that loading reads, and the JSON types each may have.
_NUMBER, _NONE = (int, float), type(None)
CONFIG_TYPES: dict[str, tuple[tuple[type, ...], str]] = {
    "r": ((int,), "a positive integer"),
    "lora_alpha": (_NUMBER, "a number"),
    "lora_dropout": (_NUMBER, "a number"),
    "target_modules": ((list, str, _NONE), "a list of module names, a regular expression or null"),
    "modules_to_save": ((list, _NONE), "a list of module names or null"),
    "exclude_modules": ((list, str, _NONE), "a list of module names, a regular expression or null"),
    "layers_to_transform": ((list, int, _NONE), "a layer index, a list of them or null"),
    "rank_pattern": ((dict, _NONE), "an object of module patterns and ranks"),
    "alpha_pattern": ((dict, _NONE), "an object of module patterns and alphas"),
    "fan_in_fan_out": ((bool,), "true or false"),
    "use_dora": ((bool,), "true or false"),
    "use_rslora": ((bool,), "true or false"),
    "inference_mode": ((bool,), "true or false"),
    "bias": ((str,), "\"none\", \"all\" or \"lora_only\""),
    "base_model_name_or_path": ((str, _NONE), "a string or null"),
    "task_type": ((str, _NONE), "a string or null"),
    "init_lora_weights": ((bool, str), "true, false or a method name"),
}


def parse_adapter_flag(value: str) -> tuple[str, str]:
    """``NAME=PATH`` from ``--adapters`` into (name, path)."""
    name, sep, path = value.partition("=")
    if not sep or not name.strip() or not path.strip():
        raise TuneforgeError(f"--adapters '{value}' is not NAME=PATH; write it as --adapters minutes=output/smollm2-lora.")
    return name.strip(), path.strip()


def check_adapter_dir(name: str, path: str) -> None:
    """Refuse, before loading, a path that holds no LoRA adapter."""
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise TuneforgeError(f"Adapter '{name}' path '{path}' is not a directory; give a tuneforge LoRA output dir or a peft adapter dir.")
    if not (folder / ADAPTER_CONFIG).is_file():
        what = "a tuneforge run without an adapter (a full-weights run)" if (folder / RUN_RECORD).is_file() else "no adapter"
        raise TuneforgeError(
            f"Adapter '{name}' path '{path}' holds {what}: there is no {ADAPTER_CONFIG}; serve a full-weights run with --model instead."
        )


def read_adapter_config(name: str, path: str) -> dict:
    """The adapter's ``adapter_config.json``, refused unless it is a LoRA config whose fields have the right types."""
    check_adapter_dir(name, path)
    file = Path(path).expanduser() / ADAPTER_CONFIG
    try:
        config = json.loads(file.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise TuneforgeError(f"Adapter '{name}' has an {ADAPTER_CONFIG} that is not valid JSON ({_first_line(exc)}); save the adapter again with peft.") from None
    if not isinstance(config, dict):
        raise TuneforgeError(f"Adapter '{name}' has an {ADAPTER_CONFIG} that is a JSON {_json_kind(config)}, not an object; save the adapter again with peft.")
    peft_type = config.get("peft_type")
    if peft_type != "LORA":
        raise TuneforgeError(f"Adapter '{name}' has peft_type {peft_type!r} in its {ADAPTER_CONFIG}, but only LoRA adapters (\"LORA\") are served; give a LoRA adapter.")
    for field, (types, expected) in CONFIG_TYPES.items():
        if field not in config:
            continue
        value = config[field]
        if isinstance(value, bool) and bool not in types or not isinstance(value, types):
            raise TuneforgeError(f"Adapter '{name}' has {field}={_short(value)} in its {ADAPTER_CONFIG}; it must be {expected}.")
    if "r" not in config or config["r"] < 1:
        raise TuneforgeError(f"Adapter '{name}' has r={_short(config.get('r'))} in its {ADAPTER_CONFIG}; it must be a positive integer (the LoRA rank).")
    for field in ("target_modules", "modules_to_save", "exclude_modules"):
        if isinstance(config.get(field), list) and not all(isinstance(item, str) for item in config[field]):
            raise TuneforgeError(f"Adapter '{name}' has {field}={_short(config[field])} in its {ADAPTER_CONFIG}; it must list module names as strings.")
    for field in ("rank_pattern", "alpha_pattern"):
        values = (config.get(field) or {}).values()
        if not all(isinstance(v, _NUMBER) and not isinstance(v, bool) for v in values):
            raise TuneforgeError(f"Adapter '{name}' has {field}={_short(config[field])} in its {ADAPTER_CONFIG}; its values must be numbers.")
    return config


def read_adapter_shapes(name: str, path: str) -> dict[str, tuple[int, ...]]:
    """The names and shapes of the adapter's weights, read without loading them into a model."""
    folder = Path(path).expanduser()
    file = next((folder / f for f in WEIGHT_FILES if (folder / f).is_file()), None)
    if file is None:
        raise TuneforgeError(f"Adapter '{name}' has no weights: its folder holds neither {WEIGHT_FILES[0]} nor {WEIGHT_FILES[1]}; save the adapter again with peft.")
    try:
        if file.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(file), framework="pt") as weights:
                shapes = {key: tuple(weights.get_slice(key).get_shape()) for key in weights.keys()}
        else:
            import torch

            state = torch.load(file, map_location="meta", weights_only=True)
            if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
                raise ValueError("it holds no dictionary of tensors")
            shapes = {key: tuple(value.shape) for key, value in state.items()}
    except Exception as exc:  # the readers raise many kinds for a damaged file
        raise TuneforgeError(f"Adapter '{name}' weights file {file.name} cannot be read ({_first_line(exc)}); save the adapter again with peft.") from None
    return shapes


def check_adapter(name: str, path: str, model=None) -> dict:
    """Refuse an adapter that is not a well-formed LoRA adapter, or (with ``model``) does not fit that model.

    Returns its config. Without a model only the files are checked (the vllm
    engine checks the fit with a generation).
    """
    config = read_adapter_config(name, path)
    shapes = read_adapter_shapes(name, path)
    lora = {key: shape for key, shape in shapes.items() if _LORA_KEY.search(key)}
    if not lora:
        raise TuneforgeError(f"Adapter '{name}' weights hold no LoRA tensors (lora_A/lora_B); save the adapter again with peft.")
    if not config.get("rank_pattern"):
        ranks = {shape[0] for key, shape in lora.items() if ".lora_A." in key and len(shape) == 2}
        wrong = sorted(rank for rank in ranks if rank != config["r"])
        if wrong:
            raise TuneforgeError(
                f"Adapter '{name}' holds rank-{wrong[0]} weights, but its {ADAPTER_CONFIG} says r={config['r']}; "
                f"give the adapter's own config and weights together."
            )
    if model is not None:
        _check_fit(name, config, lora, model)
    return config


_LORA_KEY = re.compile(r"\.(lora_A|lora_B|lora_embedding_A|lora_embedding_B)(\.[^.]+)?(\.weight)?$")


def _check_fit(name: str, config: dict, lora: dict[str, tuple[int, ...]], model) -> None:
    """The adapter's target modules exist in ``model`` and its weights' shapes fit them."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    modules = dict(base.named_modules())
    targets = config.get("target_modules")
    if targets and targets != "all-linear":
        if isinstance(targets, str):
            found = any(re.fullmatch(targets, module) for module in modules)
        else:
            found = any(module == t or module.endswith("." + t) for module in modules for t in targets)
        if not found:
            raise TuneforgeError(
                f"Adapter '{name}' targets modules {_short(targets)} that the served model does not have; "
                f"give an adapter trained on the same base model."
            )
    fitted = 0
    for key, shape in lora.items():
        module_name = _LORA_KEY.sub("", key.removeprefix("base_model.model."))
        module = modules.get(module_name)
        if module is None:
            continue  # transformers may rename some modules while loading; the ones found are checked
        fitted += 1
        dims = _in_out(module)
        if dims is None or len(shape) != 2:
            continue
        kind = _LORA_KEY.search(key).group(1)
        expected = dims[0] if kind in ("lora_A", "lora_embedding_A") else dims[1]
        got = shape[1] if kind in ("lora_A", "lora_embedding_A") else shape[0]
        if got != expected:
            raise TuneforgeError(
                f"Adapter '{name}' has weights of shape {list(shape)} for {module_name}, which takes {dims[0]} inputs and gives {dims[1]} outputs; "
                f"give an adapter trained on the same base model."
            )
    if not fitted:
        raise TuneforgeError(
            f"Adapter '{name}' has weights for modules the served model does not have (such as {_LORA_KEY.sub('', next(iter(lora)))}); "
            f"give an adapter trained on the same base model."
        )


def _in_out(module) -> tuple[int, int] | None:
    """(inputs, outputs) of the layer a LoRA wraps, or None for a kind this does not know."""
    import torch

    while hasattr(module, "base_layer"):
        module = module.base_layer
    if isinstance(module, torch.nn.Linear):
        return module.in_features, module.out_features
    if isinstance(module, torch.nn.Embedding):
        return module.num_embeddings, module.embedding_dim
    if type(module).__name__ == "Conv1D" and getattr(module, "weight", None) is not None:
        return tuple(module.weight.shape)  # transformers' Conv1D stores (in, out)
    return None


def _first_line(exc: BaseException) -> str:
    """The first sentence of an exception's text, to quote inside one sentence of ours."""
    text = str(exc).strip().splitlines()
    first = (text[0] if text else type(exc).__name__).split(". ")[0].rstrip(".")
    return first[:200]


def _short(value: Any) -> str:
    text = json.dumps(value) if not isinstance(value, str) or len(value) < 80 else repr(value[:80] + "...")
    return text if len(text) <= 80 else text[:77] + "..."


def _json_kind(value: Any) -> str:
    return {list: "array", str: "string", bool: "boolean", type(None): "null"}.get(type(value), "number")


class _Snapshot:
    """What a model held before an adapter load, to undo everything the load added."""

    def __init__(self, model) -> None:
        from peft import PeftModel

        self.modules = dict(model.named_modules())
        # A transformers model without adapters has no peft_config yet; a PeftModel always has one.
        self.bare = not isinstance(model, PeftModel) and not getattr(model, "_hf_peft_config_loaded", False)
        self.training = model.training

    def restore(self, model, name: str) -> None:
        """Take adapter ``name`` out of every layer, and put back the layers the load wrapped."""
        from peft.tuners.tuners_utils import BaseTunerLayer

        for module_name, module in list(model.named_modules()):
            if module_name in self.modules and self.modules[module_name] is not module:
                parent_name, _, child = module_name.rpartition(".")
                parent = model.get_submodule(parent_name) if parent_name else model
                setattr(parent, child, self.modules[module_name])
        for module in model.modules():
            if isinstance(module, BaseTunerLayer) and name in _adapter_names(module):
                module.delete_adapter(name)
        config = getattr(model, "peft_config", None)
        if isinstance(config, dict):
            config.pop(name, None)
        if self.bare:
            if hasattr(model, "peft_config"):
                del model.peft_config
            model._hf_peft_config_loaded = False
        model.train(self.training)


def _adapter_names(layer) -> set[str]:
    names: set[str] = set()
    for attribute in getattr(layer, "adapter_layer_names", ()) + getattr(layer, "other_param_names", ()):
        held = getattr(layer, attribute, None)
        if isinstance(held, dict) or hasattr(held, "keys"):
            names.update(held.keys())
    return names


class Adapters:
    """The adapters loaded into one model, by name; ``None`` is the base model.

    The caller serialises ``load`` and ``activate`` with its generations (the pt
    engine holds its model lock around each).
    """

    def __init__(self, model, device=None) -> None:
        self.model, self.device = model, device
        self.paths: dict[str, str] = {}
        self._active: str | None = None
        self._applied = False

    def _is_peft(self) -> bool:
        from peft import PeftModel

        return isinstance(self.model, PeftModel)

    def load(self, name: str, path: str) -> None:
        if not hasattr(self.model, "load_adapter"):
            raise TuneforgeError(
                f"The served model ({type(self.model).__name__}) cannot take peft adapters, so adapter '{name}' cannot be loaded; "
                f"serve a transformers model."
            )
        if name in self.paths or name in (getattr(self.model, "peft_config", None) or {}):
            raise TuneforgeError(f"An adapter named '{name}' is already loaded; choose another name.")
        check_adapter(name, path, self.model)
        before = _Snapshot(self.model)
        self._applied = False  # whatever happens, the next generation sets the active adapter again
        try:
            folder = Path(path).expanduser()
            options = {}
            if not self._is_peft() and not (folder / WEIGHT_FILES[0]).is_file():
                options["use_safetensors"] = False  # transformers looks for safetensors only, unless told
            self.model.load_adapter(str(folder), adapter_name=name, **options)
            self.model.eval()  # adapter modules load in training mode; dropout must be off
            if self.device is not None:
                self.model.to(self.device)
        except Exception as exc:
            before.restore(self.model, name)
            raise TuneforgeError(
                f"Adapter '{name}' at '{path}' does not fit the served model ({_first_line(exc)}); "
                f"give an adapter trained on the same base model."
            ) from None
        self.paths[name] = path

    def check(self, name: str | None) -> None:
        """Refuse a request for an adapter that is not loaded."""
        if name is not None and name not in self.paths:
            known = ", ".join(self.paths) or "none"
            raise TuneforgeError(f"No adapter named '{name}' is loaded (loaded: {known}); load it first or leave 'adapter' out for the base model.")

    def activate(self, name: str | None) -> None:
        if self._applied and name == self._active:
            return
        if self.paths:
            if self._is_peft():
                # The base of a LoRA output dir is its own adapter, "default".
                self.model.set_adapter(name or "default")
            elif name is None:
                self.model.disable_adapters()
            else:
                self.model.enable_adapters()
                self.model.set_adapter(name)
        self._active, self._applied = name, True
