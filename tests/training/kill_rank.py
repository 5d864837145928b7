"""Kill one training process of a torchrun job once the job has written its first checkpoint.

Run as a separate process by ``test_restarts.py`` (no thread in the test process, no torch here):

    python kill_rank.py STORE_ROOT MARKER RANK

It watches ``STORE_ROOT/runs`` for a ``checkpoint.pt``, then finds the process of the first attempt
(``TORCHELASTIC_RESTART_COUNT=0``) of ``RANK`` whose environment carries ``GALAXY_TEST_JOB=MARKER``,
SIGKILLs it and prints ``killed rank RANK (pid PID)``. Exit status 0 if it killed one, 1 otherwise.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

TIMEOUT_S = 180


def has_checkpoint(root: Path) -> bool:
    return any("checkpoint.pt" in files for _, _, files in os.walk(root / "runs"))


def first_attempt_of(marker: str, rank: int) -> int | None:
    wanted = {f"GALAXY_TEST_JOB={marker}".encode(), f"RANK={rank}".encode(), b"TORCHELASTIC_RESTART_COUNT=0"}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environment = set((entry / "environ").read_bytes().split(b"\0"))
        except OSError:  # gone, or not ours
            continue
        if wanted <= environment:
            return int(entry.name)
    return None


def main() -> int:
    root, marker, rank = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
    deadline = time.monotonic() + TIMEOUT_S
    while time.monotonic() < deadline:
        if has_checkpoint(root):
            pid = first_attempt_of(marker, rank)
            if pid is not None:
                os.kill(pid, signal.SIGKILL)
                print(f"killed rank {rank} (pid {pid})", flush=True)
                return 0
        time.sleep(0.05)
    print(f"no process of rank {rank} was killed within {TIMEOUT_S} s", flush=True)
    return 1


if __name__ == "__main__":
    sys.exit(main())
