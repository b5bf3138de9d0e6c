"""Built-in exporters (an internal plugin)."""

from tuneforge import hookimpl
