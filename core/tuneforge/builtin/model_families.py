"""Built-in model families (an internal plugin)."""

from tuneforge import hookimpl
