"""Which names may become a directory name of the trees: module, version, kernel and architecture.

Every name that dkms turns into a path (``$dkms_tree/<m>/<v>/<K>/<A>``, ``$source_tree/<m>-<v>``,
``$install_tree/<K>``) is checked here, whatever it came from: the command line, a dkms.conf
(``PACKAGE_NAME``, ``PACKAGE_VERSION``), a directory listing of the trees or, later, an archive.

* A **module name or version** is one plain directory name: not empty, no ``/``, no line break, no
  NUL byte, not ``.`` or ``..``, at most 255 bytes (the longest file name Linux allows). Anything
  else (spaces, non-UTF-8 bytes, ``*``) is allowed, as upstream allows it.
* A **kernel version or architecture** follows the same rules and, as it also goes into command
  lines and is matched by patterns, uses only the characters real kernel releases and
  architectures use: ASCII letters, digits and ``. _ + ~ -`` (``6.1.0-57-amd64``,
  ``5.14.0-362.8.1.el9_3.x86_64``, ``6.6.31+rpt-rpi-v8``, ``x86_64``, ``ppc64le``), not starting
  with ``-`` (it would read as an option to depmod or modprobe).

A bad name from the command line is an error with one line naming it: exit 3 for a module or
version (upstream's code for "not located in the DKMS tree", which such a name can never be) and
exit 2 for a kernel or architecture (a bad command-line value, like an unknown option). Empty values
keep upstream's codes (1 for a missing module/version, 16 for an empty kernel or arch), which the
callers check first. A bad name found on disk is skipped with a warning naming its path.
"""

from __future__ import annotations

import string
from functools import lru_cache
from typing import Optional

from .errors import DkmsError

#: exit status for an invalid module name or version
BAD_MODULE_NAME_EXIT = 3
#: exit status for an invalid kernel version or architecture
BAD_KERNEL_NAME_EXIT = 2

#: the longest file name (in bytes) Linux file systems allow
NAME_MAX = 255

#: the characters of a kernel version or architecture
KERNEL_NAME_CHARS = frozenset(string.ascii_letters + string.digits + "._+~-")

MODULE_NAME_RULE = (
    "a module name or version must be a plain directory name (not empty, no '/', no line break, "
    "no NUL byte, not '.' or '..')"
)
KERNEL_NAME_RULE = (
    "a kernel version or architecture may only contain letters, digits and '.', '_', '+', '~', '-', "
    "and may not start with '-' or be '.' or '..'"
)


def printable(value: str) -> str:
    """``value`` for a message: control characters and undecodable bytes as ``\\xNN`` escapes."""
    out = []
    for c in value:
        o = ord(c)
        if c.isprintable():
            out.append(c)
        elif 0xDC80 <= o <= 0xDCFF:  # a byte that was not UTF-8 (surrogateescape)
            out.append(f"\\x{o - 0xDC00:02x}")
        elif o < 0x100:
            out.append(f"\\x{o:02x}")
        elif o < 0x10000:
            out.append(f"\\u{o:04x}")
        else:
            out.append(f"\\U{o:08x}")
    return "".join(out)


@lru_cache(maxsize=4096)  # status asks for the same few names on every line
def name_problem(value: str) -> Optional[str]:
    """Why ``value`` cannot be a module name or version (or a file name in the trees), or None."""
    if not value:
        return "it is empty"
    if value in (".", ".."):
        return f"it is '{value}'"
    if "/" in value:
        return "it contains '/'"
    if "\0" in value:
        return "it contains a NUL byte"
    if "\n" in value or "\r" in value:
        return "it contains a line break"
    try:
        size = len(value.encode("utf-8", "surrogateescape"))
    except UnicodeEncodeError:
        return "it is not a valid file name (a lone surrogate character)"
    if size > NAME_MAX:
        return f"it is longer than {NAME_MAX} bytes"
    return None


@lru_cache(maxsize=4096)
def kernel_name_problem(value: str) -> Optional[str]:
    """Why ``value`` cannot be a kernel version or architecture, or None."""
    problem = name_problem(value)
    if problem is not None:
        return problem
    bad = next((c for c in value if c not in KERNEL_NAME_CHARS), None)
    if bad is not None:
        return f"it contains '{printable(bad)}'"
    if value.startswith("-"):
        return "it starts with '-'"
    return None


#: the characters a kernel or arch filter of ``status`` may add: it is a shell glob pattern
GLOB_CHARS = frozenset("*?[]!^")


@lru_cache(maxsize=256)
def kernel_pattern_problem(value: str) -> Optional[str]:
    """Why ``value`` cannot be a glob pattern for kernel versions or architectures, or None."""
    problem = name_problem(value)
    if problem is not None:
        return problem
    bad = next((c for c in value if c not in KERNEL_NAME_CHARS and c not in GLOB_CHARS), None)
    if bad is not None:
        return f"it contains '{printable(bad)}'"
    return None


def check_module_name(value: str, what: str = "module name") -> None:
    """Raise DkmsError(3) naming ``value`` if it cannot be a module name or version."""
    problem = name_problem(value)
    if problem is not None:
        raise DkmsError(
            BAD_MODULE_NAME_EXIT,
            f"Invalid {what} '{printable(value)}': {problem}; {MODULE_NAME_RULE}.",
        )


def check_module_version(module: Optional[str], version: Optional[str]) -> None:
    """:func:`check_module_name` for a module and a version, each only when given (not empty)."""
    if module:
        check_module_name(module, "module name")
    if version:
        check_module_name(version, "module version")


def check_kernel_name(value: str, what: str = "kernel version") -> None:
    """Raise DkmsError(2) naming ``value`` if it cannot be a kernel version or architecture."""
    problem = kernel_name_problem(value)
    if problem is not None:
        raise DkmsError(
            BAD_KERNEL_NAME_EXIT, f"Invalid {what} '{printable(value)}': {problem}; {KERNEL_NAME_RULE}."
        )


def check_kernel_pattern(value: str, what: str = "kernel version") -> None:
    """Raise DkmsError(2) if ``value`` cannot be a pattern for a kernel version or architecture."""
    problem = kernel_pattern_problem(value)
    if problem is not None:
        raise DkmsError(
            BAD_KERNEL_NAME_EXIT,
            f"Invalid {what} '{printable(value)}': {problem}; {KERNEL_NAME_RULE} (a filter may also "
            "use the glob characters '*?[]!^').",
        )


def check_target(kernel: str, arch: str) -> None:
    """:func:`check_kernel_name` for a kernel version and its architecture."""
    check_kernel_name(kernel, "kernel version")
    check_kernel_name(arch, "architecture")
