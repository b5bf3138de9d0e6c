"""torchrun as tuneforge starts it: the same launcher, without the traceback it adds when a process fails.

Each failed process has already said why in one sentence (every rank checks the same
options); torchrun's ``ChildFailedError`` would repeat it as a screen of traceback.
This exits with the first failed process's exit code instead.
"""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    try:
        run(parse_args(argv))
    except ChildFailedError as exc:
        rank, failure = exc.get_first_failure()
        print(f"[tuneforge] process {rank} exited with code {failure.exitcode}", file=sys.stderr, flush=True)
        return failure.exitcode if isinstance(failure.exitcode, int) and failure.exitcode > 0 else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
