"""Built-in dataset formats (an internal plugin)."""

from tuneforge import hookimpl
