"""What ``tuneforge doctor`` checks for tuneforge-ascend, as data.

Each torch_npu release is built against one torch major.minor (torch_npu 2.5.x for
torch 2.5.x) and does not load beside another. Installed with torch's autoload on, it
then breaks a plain ``import torch`` (the core recognises that failure, and a missing
CANN toolkit, from the text of the import of ``torch_npu`` that doctor runs).
"""

from __future__ import annotations

from tuneforge.api import KnownBad

from .npu import matching_torch_npu

# The torch major.minor of each torch_npu release line (torch_npu 2.1.0.post12, 2.5.1, ..., 2.13.0).
RELEASE_LINES = tuple(f"2.{minor}" for minor in range(1, 14))


def known_bad() -> tuple[KnownBad, ...]:
    """One entry per torch_npu release line: that line with any other torch; the fix names the build
    matching the installed torch."""
    fix = f"pip install '{matching_torch_npu()}' (the torch_npu build of the installed torch)"
    return tuple(
        KnownBad(
            packages={"torch-npu": f"=={line}.*", "torch": f"!={line}.*"},
            why=f"torch_npu {line} is built against torch {line} and does not load with another torch",
            fix=fix,
        )
        for line in RELEASE_LINES
    )
