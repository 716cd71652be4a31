"""A guard for tests of code that must not hang: fail instead of waiting (not a timing assertion)."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Optional


class Overdue(Exception):
    """The guarded block did not return in time."""


@contextmanager
def deadline(seconds: float) -> Iterator[None]:
    """Raise :class:`Overdue` in the block when it has not returned within ``seconds`` (main thread)."""

    def fire(signum: int, frame: Optional[FrameType]) -> None:
        raise Overdue(f"did not return within {seconds} s")

    old = signal.signal(signal.SIGALRM, fire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
