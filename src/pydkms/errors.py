"""The one error type of pydkms.

Every failure that the user should see as a clean message ends as a :class:`DkmsError`
carrying the exit code the spec requires (spec/status.md §6) and an optional hint.
The CLI catches it at the edge; a traceback is only printed with ``--debug``.
"""

from __future__ import annotations

from typing import Optional


class DkmsError(Exception):
    """A failure with a documented exit code and a message for the user."""

    def __init__(self, code: int, message: str, hint: Optional[str] = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        if self.hint:
            return f"{self.message}\n{self.hint}"
        return self.message


class UsageError(DkmsError):
    """Wrong command line (unknown option, conflicting options, missing arguments)."""


class ConfError(DkmsError):
    """A dkms.conf (or framework file) that cannot be used; exit 8 unless stated otherwise."""

    def __init__(self, message: str, errors: tuple[str, ...] = (), code: int = 8, hint: Optional[str] = None):
        super().__init__(code, message, hint)
        self.errors = errors

    def __str__(self) -> str:
        lines = [*self.errors, self.message]
        if self.hint:
            lines.append(self.hint)
        return "\n".join(lines)


# Exit codes used across the code base, named after what they mean (spec/status.md §6).
EXIT_OK = 0
EXIT_GENERAL = 1
EXIT_USAGE = 2
EXIT_EXISTS = 3
EXIT_CONF_MISSING = 4
EXIT_BAD_ACTION = 4
EXIT_BROKEN = 4
EXIT_ALL_BANNED = 5
EXIT_PATCH_MISSING = 5
EXIT_PATCH_FAILED = 6
EXIT_INSTALL_FAILED = 6
EXIT_MODULE_MISSING = 7
EXIT_CONF_INVALID = 8
EXIT_NO_CONF_IN_PATH = 9
EXIT_MAKE_FAILED = 10
EXIT_AUTOINSTALL_FAILED = 11
EXIT_NO_ARCH = 12
EXIT_DEPENDS = 13
EXIT_PRERM_FAILED = 14
EXIT_CHDIR = 15
EXIT_EMPTY_KERNEL = 16
EXIT_NO_HEADERS = 21
EXIT_EXCLUDED = 77
EXIT_PRE_INSTALL = 101
