"""Built-in training methods (an internal plugin)."""

from tuneforge import hookimpl
