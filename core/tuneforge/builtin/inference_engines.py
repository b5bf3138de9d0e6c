"""Built-in inference engines (an internal plugin)."""

from tuneforge import hookimpl
