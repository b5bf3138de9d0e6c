"""Built-in templates (an internal plugin)."""

from tuneforge import hookimpl
