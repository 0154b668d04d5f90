"""One daemon per state directory: an exclusive `flock` on `STATE/daemon.lock`, held for life.

The kernel drops the lock when its process dies (kill -9 included), so a stale file never blocks
a restart; a second daemon finds the lock taken and stops at once, naming the holder's pid. The
descriptor is close-on-exec: job workers never inherit it.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from convrepair.errors import BadInput

LOCK_FILE = "daemon.lock"


class StateLock:
    def __init__(self, state_dir: Path):
        self.path = Path(state_dir) / LOCK_FILE
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fd: int | None = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = holder_pid(self.path)
            os.close(self._fd)
            self._fd = None
            raise BadInput(f"another convrepair daemon (pid {holder if holder else 'unknown'}) holds this state "
                           "directory; stop it first or give this one its own --state-dir", self.path) from None
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, f"{os.getpid()}\n".encode(), 0)

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor releases the flock
            self._fd = None


def holder_pid(path: Path) -> int | None:
    """The pid the lock's holder wrote (None before it wrote it)."""
    try:
        return int(Path(path).read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
