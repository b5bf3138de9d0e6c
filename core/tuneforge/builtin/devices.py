"""Built-in devices (an internal plugin)."""

from tuneforge import hookimpl
