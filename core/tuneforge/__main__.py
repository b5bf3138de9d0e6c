"""``python -m tuneforge``: the ``tuneforge`` command, where its script is not on the PATH."""

from tuneforge.cli import main

main()
