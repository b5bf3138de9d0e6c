"""Several LoRA adapters on one loaded base model, each served under its own name.

The adapters live in the engine's model (peft's multi-adapter support): loading
one adds its weights beside the others, and before each generation the worker
activates the adapter the request names, or disables them all for the base.
Only the worker thread calls ``load`` and ``activate``.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import TuneforgeError
from ..modeling import RUN_RECORD

ADAPTER_CONFIG = "adapter_config.json"


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


class Adapters:
    """The adapters loaded into ``engine.model``, by name; ``None`` is the base model."""

    def __init__(self, engine) -> None:
        self.engine = engine
        self.paths: dict[str, str] = {}
        self._active: str | None = None
        self._applied = False

    @property
    def supported(self) -> bool:
        return hasattr(getattr(self.engine, "model", None), "load_adapter")

    def _is_peft(self) -> bool:
        from peft import PeftModel

        return isinstance(self.engine.model, PeftModel)

    def load(self, name: str, path: str) -> None:
        if not self.supported:
            raise TuneforgeError(
                f"The inference engine {type(self.engine).__name__} does not expose a peft-capable model, so adapter '{name}' cannot be loaded; "
                f"serve adapters with --engine pt."
            )
        check_adapter_dir(name, path)
        model = self.engine.model
        try:
            model.load_adapter(str(Path(path).expanduser()), adapter_name=name)
        except (ValueError, RuntimeError, KeyError, OSError) as exc:
            raise TuneforgeError(
                f"Adapter '{name}' at '{path}' does not fit the served model ({str(exc).splitlines()[0][:200]}); "
                f"give an adapter trained on the same base model."
            ) from None
        model.eval()  # adapter modules load in training mode; dropout must be off
        device = getattr(self.engine, "device", None)
        if device is not None:
            model.to(device)
        self.paths[name] = path
        self._applied = False  # loading may have changed which adapter is active

    def activate(self, name: str | None) -> None:
        if self._applied and name == self._active:
            return
        model = getattr(self.engine, "model", None)
        if self.paths and model is not None:
            if self._is_peft():
                # The base of a LoRA output dir is its own adapter, "default".
                model.set_adapter(name or "default")
            elif name is None:
                model.disable_adapters()
            else:
                model.enable_adapters()
                model.set_adapter(name)
        self._active, self._applied = name, True
