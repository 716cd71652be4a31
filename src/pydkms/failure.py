"""Unexpected failures in words: what went wrong, and on which path.

Two uses. The CLI's edge turns an ``OSError`` nothing expected into one line saying which
operation failed on which path (not Python's "[Errno 2] …" text). And where one module must not
stop the others (status, autoinstall, kernel_prerm, match, the planner's jobs), any exception
from that module's work becomes a :class:`~pydkms.errors.DkmsError` naming the module, which is
reported like every other failure of one module.
"""

from __future__ import annotations

import linecache
import os
import re
from pathlib import Path
from types import FrameType, TracebackType
from typing import Dict, List, Optional, Tuple

from .errors import DkmsError

#: the functions that touch the filesystem, by name, and what they were doing
_OPERATIONS: Dict[str, str] = {
    "mkdtemp": "create a temporary directory",
    "mkstemp": "create a temporary file",
    "_mkstemp_inner": "create a temporary file",
    "NamedTemporaryFile": "create a temporary file",
    "TemporaryDirectory": "create a temporary directory",
    "rmtree": "delete",
    "_rmtree_safe_fd": "delete",
    "_rmtree_unsafe": "delete",
    "copyfile": "copy",
    "copy": "copy",
    "copy2": "copy",
    "copytree": "copy",
    "_copytree": "copy",
    "copystat": "copy the attributes of",
    "copymode": "copy the mode of",
    "move": "move",
    "mkdir": "create the directory",
    "makedirs": "create the directory",
    "rename": "rename",
    "replace": "rename",
    "renames": "rename",
    "unlink": "delete",
    "remove": "delete",
    "rmdir": "delete the directory",
    "removedirs": "delete the directory",
    "symlink_to": "create the symbolic link",
    "symlink": "create the symbolic link",
    "hardlink_to": "create the hard link",
    "link": "create the hard link",
    "readlink": "read the symbolic link",
    "open": "open",
    "read_text": "read",
    "read_bytes": "read",
    "write_text": "write",
    "write_bytes": "write",
    "touch": "create",
    "iterdir": "list the directory",
    "listdir": "list the directory",
    "scandir": "list the directory",
    "walk": "list the directory",
    "glob": "list the directory",
    "stat": "look at",
    "lstat": "look at",
    "chmod": "change the mode of",
    "chown": "change the owner of",
    "utime": "set the times of",
    "truncate": "truncate",
    "access": "look at",
}

_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))
_CALL = re.compile(r"\b(\w+)\(")


def _frames(tb: Optional[TracebackType]) -> List[FrameType]:
    out: List[FrameType] = []
    while tb is not None:
        out.append(tb.tb_frame)
        tb = tb.tb_next
    return out


def _ours(frame: FrameType) -> bool:
    return os.path.abspath(frame.f_code.co_filename).startswith(_PACKAGE_DIR + os.sep)


def _operation(exc: BaseException) -> Tuple[Optional[str], Optional[FrameType]]:
    """What the failing call was doing, and the library frame that did it (if any)."""
    frames = _frames(exc.__traceback__)
    for frame in reversed(frames):  # innermost first: a library function that touches files
        if not _ours(frame) and frame.f_code.co_name in _OPERATIONS:
            return _OPERATIONS[frame.f_code.co_name], frame
    if frames:  # a builtin (os.mkdir, open, …): the call on the line that failed
        frame = frames[-1]
        line = linecache.getline(frame.f_code.co_filename, frame.f_lineno)
        names = {n for n in _CALL.findall(line) if n in _OPERATIONS}
        if len(names) == 1:
            return _OPERATIONS[names.pop()], None
    return None, None


def _path_text(value: object) -> Optional[str]:
    if isinstance(value, (str, Path)):
        return str(value)
    if isinstance(value, bytes):
        return os.fsdecode(value)
    return None


def describe_os_error(exc: OSError) -> str:
    """One sentence: the operation, the path (and the second path) and the system's reason."""
    operation, frame = _operation(exc)
    path = _path_text(exc.filename)
    if path is None and frame is not None:  # e.g. shutil's "Cannot call rmtree on a symbolic link"
        path = _path_text(frame.f_locals.get("path"))
    second = _path_text(exc.filename2)
    reason = exc.strerror or str(exc.args[0] if exc.args else "") or type(exc).__name__
    if "on a symbolic link" in reason:
        reason = "it is a symbolic link"
    elif reason[1:2].islower():
        reason = reason[0].lower() + reason[1:]
    target = f"{path} to {second}" if path and second else path or ""
    if operation and target:
        return f"Could not {operation} {target}: {reason}."
    if operation:
        return f"Could not {operation}: {reason}."
    if target:
        return f"{target}: {reason}."
    return f"{reason[:1].upper()}{reason[1:]}."


def describe(exc: BaseException) -> str:
    """What an unexpected exception means, for a message (no traceback)."""
    if isinstance(exc, DkmsError):
        return exc.message
    if isinstance(exc, OSError):
        return describe_os_error(exc)
    if isinstance(exc, RecursionError):
        return "its input is nested too deeply to be processed (the Python recursion limit was reached)."
    if isinstance(exc, MemoryError):
        return "dkms ran out of memory."
    if isinstance(exc, UnicodeDecodeError):
        return f"text that is not valid {exc.encoding}: {exc.reason} at byte {exc.start}."
    text = str(exc)
    return f"internal error: {type(exc).__name__}{': ' + text if text else ''}."


def contained(exc: BaseException, subject: str) -> DkmsError:
    """An unexpected exception from the work on ``subject`` (e.g. ``m/v``), as a failure of it (exit 1)."""
    if isinstance(exc, DkmsError):
        return exc
    return DkmsError(1, f"{subject}: {describe(exc)}", hint="(run with --debug for a traceback)")
