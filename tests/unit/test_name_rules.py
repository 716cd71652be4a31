"""The name rules of pydkms.names: what may become a directory name of the trees."""

from __future__ import annotations

import posixpath
import shlex

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pydkms.errors import DkmsError
from pydkms.names import (
    KERNEL_NAME_CHARS,
    check_kernel_name,
    check_kernel_pattern,
    check_module_name,
    kernel_name_problem,
    name_problem,
    printable,
)

REAL_KERNELS = (
    "6.1.0-57-amd64",
    "6.1.0-57-cloud-amd64",
    "6.1.0-57-rt-amd64",
    "6.8.0-31-generic",
    "6.8.0-1008-azure",
    "5.14.0-362.8.1.el9_3.x86_64",
    "6.9.7-200.fc40.x86_64",
    "6.6.31+rpt-rpi-v8",
    "6.10.0-rc4-00123-gabcdef012345",
    "4.19.0-26-686-pae",
    "6.5.0-1~bpo12+1-amd64",
)
REAL_ARCHES = ("x86_64", "i686", "aarch64", "armv7l", "ppc64le", "s390x", "riscv64", "ia32e", "loongarch64")


@pytest.mark.parametrize("name", [*REAL_KERNELS, *REAL_ARCHES])
def test_real_kernel_and_arch_names_are_valid(name: str) -> None:
    assert kernel_name_problem(name) is None
    check_kernel_name(name)


@pytest.mark.parametrize(
    ("name", "problem"),
    [
        ("", "it is empty"),
        (".", "it is '.'"),
        ("..", "it is '..'"),
        ("../6.1.0-57-amd64", "it contains '/'"),
        ("6.1.0-57-amd64;id>f;#", "it contains ';'"),
        ("6.1.0 57", "it contains ' '"),
        ("$(id)", "it contains '$'"),
        ("6.1.0\n", "it contains a line break"),
        ("6.1\x1b", "it contains '\\x1b'"),
        ("6.1.0-\udce9", "it contains '\\xe9'"),
        ("-k", "it starts with '-'"),
        ("a" * 256, "it is longer than 255 bytes"),
    ],
)
def test_bad_kernel_names(name: str, problem: str) -> None:
    assert kernel_name_problem(name) == problem
    with pytest.raises(DkmsError) as info:
        check_kernel_name(name, "architecture")
    assert info.value.code == 2
    assert info.value.message.startswith(f"Invalid architecture '{printable(name)}': {problem}; ")
    assert "\n" not in info.value.message


@pytest.mark.parametrize(
    ("name", "ok"),
    [
        ("hello", True),
        ("nvidia-current", True),
        ("with space", True),
        ("b\udce9d", True),  # not UTF-8: allowed, as upstream allows it
        ("550.54.14", True),
        ("x;y", True),  # modules are not kernel names: only path rules apply
        ("", False),
        (".", False),
        ("..", False),
        ("../../victim", False),
        ("a/b", False),
        ("a\0b", False),
        ("1.0\r", False),
        ("é" * 128, False),  # 256 bytes
    ],
)
def test_module_names(name: str, ok: bool) -> None:
    assert (name_problem(name) is None) is ok
    if ok:
        check_module_name(name, "module version")
    else:
        with pytest.raises(DkmsError) as info:
            check_module_name(name, "module version")
        assert info.value.code == 3 and "\n" not in info.value.message


def test_kernel_patterns_may_use_globs() -> None:
    check_kernel_pattern("6.1.0-*")
    check_kernel_pattern("x86_6?")
    check_kernel_pattern("[!5]*")
    for bad in (".", "..", "6.1;x", "a b"):
        with pytest.raises(DkmsError):
            check_kernel_pattern(bad)


def test_printable() -> None:
    assert printable("hello") == "hello"
    assert printable("a\nb\tc") == "a\\x0ab\\x09c"
    assert printable("b\udce9d") == "b\\xe9d"
    assert printable("é") == "é"
    assert printable("\u2028") == "\\u2028"
    assert printable("\U000e0001") == "\\U000e0001"


@given(st.text(alphabet=sorted(KERNEL_NAME_CHARS), min_size=1, max_size=80))
def test_a_valid_kernel_name_is_one_shell_word(name: str) -> None:
    """What passes the kernel rule cannot change the meaning of a command line it is put in."""
    if kernel_name_problem(name) is not None:
        assert name in (".", "..") or name.startswith("-")
        return
    assert name_problem(name) is None
    # a leading '~' would be a tilde expansion; nowhere else is a valid name special to bash
    if not name.startswith("~"):
        assert shlex.split(f"make KERNELRELEASE={name} -C /lib/modules/{name}/build") == [
            "make",
            f"KERNELRELEASE={name}",
            "-C",
            f"/lib/modules/{name}/build",
        ]


@given(st.text(max_size=40))
def test_invalid_module_names_never_leave_a_directory(name: str) -> None:
    """A name that passes is exactly one path component that is not '.' or '..'."""
    if name_problem(name) is None:
        assert posixpath.normpath(posixpath.join("/t", name, "x")) == f"/t/{name}/x"
        assert "\0" not in name and "\n" not in name
