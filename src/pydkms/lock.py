"""The tree lock [fix D-03] (spec/tree.md §12).

Every mutating invocation holds an exclusive ``flock(2)`` on ``$dkms_tree/.lock`` from after option
parsing until it exits. A second dkms waits, saying so once on stderr (and which process holds the
lock); with ``PYDKMS_LOCK_TIMEOUT`` (seconds, 0 = forever, the default) it gives up with a clear error.
Child processes started while the lock is held (scripts, post_transaction, nested dkms) find
``PYDKMS_LOCKED_TREE`` in their environment and do not lock again.
"""

from __future__ import annotations

import errno
import fcntl
import os
import time
from pathlib import Path
from typing import Callable, Optional

from . import runner
from .errors import DkmsError

ENV_LOCKED = "PYDKMS_LOCKED_TREE"
ENV_TIMEOUT = "PYDKMS_LOCK_TIMEOUT"


class TreeLock:
    def __init__(self, dkms_tree: Path, lock_file: Path) -> None:
        self.dkms_tree = dkms_tree
        self.lock_file = lock_file
        self._fd: Optional[int] = None

    def _holder(self) -> str:
        try:
            pid = self.lock_file.read_text().strip()
        except OSError:
            return ""
        return f" (held by process {pid})" if pid.isdigit() else ""

    def _held_by_ancestor(self) -> bool:
        """The process named in the lock file is this one or an ancestor (so it holds it for us).

        ``PYDKMS_LOCKED_TREE`` alone is inherited by anything a locked dkms starts, also a daemon
        that outlives it; it only lets a child skip the lock while its parent really holds it.
        """
        try:
            holder = int(self.lock_file.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return False
        if holder == os.getpid():
            return True
        pid = os.getppid()
        for _ in range(64):
            if pid == holder:
                return True
            if pid <= 1:
                return False
            try:
                with open(f"/proc/{pid}/stat", encoding="utf-8", errors="replace") as fh:
                    pid = int(fh.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                return False
        return False

    def acquire(self, notify: Callable[[str], None], timeout: Optional[float] = None) -> bool:
        """Take the lock; returns False if the tree cannot hold a lock file (read-only tree)."""
        real = os.path.realpath(self.dkms_tree)
        if os.environ.get(ENV_LOCKED) == real and self._held_by_ancestor():
            return True
        if timeout is None:
            raw = os.environ.get(ENV_TIMEOUT) or "0"
            try:
                timeout = float(raw)
            except ValueError:
                timeout = -1.0
            if not timeout >= 0:  # also NaN
                notify(
                    f"Warning: ignoring {ENV_TIMEOUT}={raw}: not a number of seconds; waiting as long as it takes."
                )
                timeout = 0.0
        try:
            self.dkms_tree.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.lock_file, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            if exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
                return False
            raise DkmsError(1, f"Cannot create the lock file {self.lock_file}: {exc.strerror}.") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            notify(f"Waiting for another dkms to finish with {self.dkms_tree}{self._holder()}...")
            deadline = time.monotonic() + timeout if timeout > 0 else None
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if deadline is not None and time.monotonic() >= deadline:
                        os.close(fd)
                        raise DkmsError(
                            1,
                            f"Gave up after {timeout:g} s waiting for the lock on {self.dkms_tree}{self._holder()}.",
                            hint=f"Another dkms is still working on this tree; retry later or raise {ENV_TIMEOUT}.",
                        ) from None
                    time.sleep(0.1)
        try:  # who holds it, for the waiting message; a full disk must not stop a remove
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
        except OSError:
            pass
        self._fd = fd
        # should dkms be killed, the lock stays taken until its children (make, …) are dead
        runner.hold_lock_for_children(fd)
        os.environ[ENV_LOCKED] = real
        return True

    def release(self) -> None:
        if self._fd is not None:
            try:
                os.ftruncate(self._fd, 0)
            except OSError:
                pass
            fcntl.flock(self._fd, fcntl.LOCK_UN)  # also for the watchdog's duplicate
            os.close(self._fd)
            runner.release_lock_for_children(self._fd)
            self._fd = None
            os.environ.pop(ENV_LOCKED, None)
