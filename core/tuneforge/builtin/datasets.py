"""Built-in datasets (an internal plugin)."""

from tuneforge import hookimpl
