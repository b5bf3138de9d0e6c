"""Built-in models (an internal plugin)."""

from tuneforge import hookimpl
