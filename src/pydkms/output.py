"""Where pydkms' words go (spec/cli.md §9).

Progress and results on stdout; warnings, errors and notices on stderr, never mixed.
``-q`` silences both from the moment it is parsed; ``--verbose`` prints command lines instead of
step descriptions.
"""

from __future__ import annotations

import sys
from contextlib import contextmanager
from typing import Iterator, List, Optional, TextIO


class Console:
    def __init__(self, out: Optional[TextIO] = None, err: Optional[TextIO] = None) -> None:
        self._out = out
        self._err = err
        self.quiet = False
        self.verbose = False

    @property
    def out(self) -> TextIO:
        return self._out if self._out is not None else sys.stdout

    @property
    def err(self) -> TextIO:
        return self._err if self._err is not None else sys.stderr

    def _write(self, stream: TextIO, text: str) -> None:
        if self.quiet:
            return
        stream.write(text)
        stream.flush()

    def raw(self, text: str, to_err: bool) -> None:
        """Text exactly as given, on stderr or stdout (replaying a job's buffered output)."""
        self._write(self.err if to_err else self.out, text)

    def info(self, text: str = "") -> None:
        """A line of progress or result on stdout."""
        self._write(self.out, text + "\n")

    def write(self, text: str) -> None:
        """Raw text on stdout (no newline added)."""
        self._write(self.out, text)

    def warn(self, text: str) -> None:
        self._write(self.err, f"Warning: {text}\n")

    def error(self, text: str) -> None:
        self._write(self.err, f"Error! {text}\n")

    def failure(self, exc: BaseException) -> None:
        """Report a DkmsError: each listed problem, the message, then the hint."""
        for problem in getattr(exc, "errors", ()):
            self.error(problem)
        self.error(getattr(exc, "message", str(exc)))
        hint = getattr(exc, "hint", None)
        if hint:
            self.notice(hint)

    def notice(self, text: str) -> None:
        """A diagnostic on stderr without a prefix."""
        self._write(self.err, text + "\n")

    def deprecated(self, text: str) -> None:
        self._write(self.err, f"Deprecated feature: {text}\n")

    def raw_err(self, text: str) -> None:
        """Text that other programs wrote to stderr (e.g. a dkms.conf evaluated by bash)."""
        self._write(self.err, text if text.endswith("\n") else text + "\n")

    @contextmanager
    def step(self, description: str, command: Optional[str] = None) -> Iterator[StepResult]:
        """Print ``description...`` (or the command in verbose mode), then the step's outcome."""
        result = StepResult()
        self.write(f"{command}\n" if self.verbose and command else f"{description}...")
        try:
            yield result
        except BaseException:
            self.write("(failed)\n")
            raise
        if result.status:
            self.write(f"(bad exit status: {result.status})\n")
            if result.failed_command and not self.verbose:
                self.write(f"Failed command:\n{result.failed_command}\n")
        else:
            self.write(" done.\n")


class StepResult:
    def __init__(self) -> None:
        self.status = 0
        self.failed_command: Optional[str] = None

    def fail(self, status: int, command: Optional[str] = None) -> None:
        self.status = status
        self.failed_command = command


def join_words(words: List[str]) -> str:
    """``a``, ``a and b``, ``a, b and c``."""
    if len(words) <= 1:
        return "".join(words)
    return ", ".join(words[:-1]) + " and " + words[-1]
