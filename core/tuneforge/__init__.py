"""tuneforge: data to a served, aligned, quantized language model, through plugins."""

import pluggy

__version__ = "0.1.0"

hookimpl = pluggy.HookimplMarker("tuneforge")

__all__ = ["hookimpl", "__version__"]
