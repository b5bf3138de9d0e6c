"""Several LoRA adapters on one loaded base model, each served under its own name.

The adapters live in the engine's model (peft's multi-adapter support): loading
one adds its weights beside the others, and before each generation the engine
activates the adapter its requests name, or disables them all for the base.
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
        if name in self.paths:
            raise TuneforgeError(f"An adapter named '{name}' is already loaded; choose another name.")
        check_adapter_dir(name, path)
        try:
            self.model.load_adapter(str(Path(path).expanduser()), adapter_name=name)
        except (ValueError, RuntimeError, KeyError, OSError) as exc:
            raise TuneforgeError(
                f"Adapter '{name}' at '{path}' does not fit the served model ({str(exc).splitlines()[0][:200]}); "
                f"give an adapter trained on the same base model."
            ) from None
        self.model.eval()  # adapter modules load in training mode; dropout must be off
        if self.device is not None:
            self.model.to(self.device)
        self.paths[name] = path
        self._applied = False  # loading may have changed which adapter is active

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
