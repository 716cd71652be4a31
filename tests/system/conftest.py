"""Fixtures of the system tests: the cached bookworm base and a fresh chroot per test."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import List

import pytest

from tests.support import chroot


@pytest.fixture(scope="session")
def chroot_base() -> chroot.Base:
    """The debootstrapped base, built once into the test cache (about 50 s the first time)."""
    why = chroot.unavailable()
    if why:
        # tools/test installs debootstrap: in CI a missing tool is a failure, not a skip
        if os.environ.get("CI") == "true":
            pytest.fail(f"cannot make a chroot: {why}")
        pytest.skip(f"cannot make a chroot: {why}")
    return chroot.base_chroot()


@pytest.fixture
def debian_chroot(chroot_base: chroot.Base) -> Iterator[chroot.Chroot]:
    """A fresh copy of the base for one test; unmounted and deleted afterwards, whatever happens."""
    with chroot.Chroot(chroot_base) as c:
        yield c


@pytest.fixture(scope="session")
def host_header_packages(kernels: List[str]) -> List[str]:
    """``linux-headers-<K>`` of the host's generic kernels, newest first (to install in a chroot)."""
    return chroot.header_packages(kernels)
