"""The core's defaults, registered through the same hooks a third-party plugin uses."""
