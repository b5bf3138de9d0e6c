"""Version combinations that install together but do not work together: the core's, as data.

``tuneforge doctor`` reports each one whose every package is installed in its range,
with what fails and the pip command that fixes it. A plugin declares its own through
the ``tuneforge_doctor_checks`` hook (docs/plugins.md). Add an entry only for a
failure that was seen, and say in ``why`` what fails.
"""

from .records import KnownBad

KNOWN_BAD = (
    KnownBad(
        packages={"torch": "<2.3", "numpy": ">=2"},
        why="torch wheels before 2.3 were built against NumPy 1 and cannot use NumPy 2 (tensor.numpy() and torch.from_numpy fail)",
        fix="pip install 'numpy<2'",
    ),
)
