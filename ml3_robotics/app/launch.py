"""``torch.distributed.run`` for ``ml3r run --nproc N``, with its failure report cut down to
the exit status: the failed rank's own error line comes first, ``ml3r`` adds one line after,
and torch's multi-screen ChildFailedError traceback would bury both."""

from __future__ import annotations

from collections.abc import Sequence

from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
from torch.distributed.run import main


def launch(argv: Sequence[str] | None = None) -> int:
    """Run ``torch.distributed.run`` with ``argv``; the first failed rank's exit status, or 0."""
    try:
        main(None if argv is None else list(argv))
    except ChildFailedError as e:
        _, failure = e.get_first_failure()
        return failure.exitcode if failure.exitcode > 0 else 1
    return 0


if __name__ == "__main__":
    raise SystemExit(launch())
