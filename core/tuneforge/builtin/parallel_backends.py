"""Built-in parallel backends (an internal plugin)."""

from tuneforge import hookimpl
