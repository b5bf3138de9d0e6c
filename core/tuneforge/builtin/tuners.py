"""Built-in tuners (an internal plugin)."""

from tuneforge import hookimpl
