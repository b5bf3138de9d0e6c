"""tuneforge: data to a served, aligned, quantized language model, through plugins."""

import pluggy

__version__ = "0.1.0"

# Plugins import it from tuneforge.api, the plugin API; it stays here for plugins written before that module.
hookimpl = pluggy.HookimplMarker("tuneforge")

__all__ = ["hookimpl", "__version__"]
