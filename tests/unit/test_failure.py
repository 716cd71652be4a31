"""pydkms.failure: unexpected exceptions in words (the operation, the path, the reason)."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable

import pytest

from pydkms.errors import DkmsError
from pydkms.failure import contained, describe


def failure_of(action: Callable[[], object]) -> BaseException:
    with pytest.raises(BaseException) as info:
        action()
    return info.value


def test_library_operations_are_named(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    link = tmp_path / "link"
    link.symlink_to(tmp_path / "real")
    assert (
        describe(failure_of(lambda: shutil.rmtree(link)))
        == f"Could not delete {link}: it is a symbolic link."
    )
    exc = failure_of(lambda: tempfile.mkdtemp(prefix=".tmp_../../x_", dir=tmp_path))
    assert isinstance(exc, OSError) and exc.filename
    assert (
        describe(exc) == f"Could not create a temporary directory {exc.filename}: no such file or directory."
    )
    missing = tmp_path / "no" / "such"
    assert (
        describe(failure_of(missing.mkdir))
        == f"Could not create the directory {missing}: no such file or directory."
    )
    assert describe(failure_of(missing.read_text)) == f"Could not open {missing}: no such file or directory."


def test_builtin_calls_are_named_from_the_failing_line(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b" / "c"
    assert (
        describe(failure_of(lambda: os.rename(a, b)))
        == f"Could not rename {a} to {b}: no such file or directory."
    )
    assert describe(failure_of(lambda: os.unlink(a))) == f"Could not delete {a}: no such file or directory."
    # no single known call on the line: path and reason only
    assert describe(OSError(28, "No space left on device", "/x")) == "/x: no space left on device."
    assert describe(OSError("odd")) == "Odd."


@pytest.mark.parametrize(
    ("exc", "text"),
    [
        (MemoryError(), "dkms ran out of memory."),
        (
            UnicodeDecodeError("utf-8", b"a\xff", 1, 2, "invalid start byte"),
            "text that is not valid utf-8: invalid start byte at byte 1.",
        ),
        (KeyError("x"), "internal error: KeyError: 'x'."),
        (ValueError(), "internal error: ValueError."),
    ],
)
def test_other_exceptions(exc: BaseException, text: str) -> None:
    assert describe(exc) == text


def test_recursion_error() -> None:
    def deep(n: int) -> int:
        return deep(n + 1)

    assert describe(failure_of(lambda: deep(0))).startswith("its input is nested too deeply")


def test_contained_names_the_module_and_keeps_dkms_errors() -> None:
    error = contained(MemoryError(), "foo/1.0")
    assert (error.code, error.message) == (1, "foo/1.0: dkms ran out of memory.")
    assert error.hint == "(run with --debug for a traceback)"
    own = DkmsError(8, "invalid")
    assert contained(own, "foo/1.0") is own
    assert describe(own) == "invalid"
