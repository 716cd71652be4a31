"""Checks of the archive library's hooks into tarfile, runnable on any Python from 3.9.

``python -m tests.support.archive_selfcheck`` (with src/ and the repository on PYTHONPATH)
prints "ok", or fails with the first check that did not hold. tests/unit/test_archive.py runs it
on every interpreter the machine has, as the hooks rely on tarfile internals.
"""

from __future__ import annotations

import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path
from typing import Callable, List

from pydkms.errors import DkmsError
from pydkms.packaging.archive import DEFAULT_LIMITS, Layout, Limits, extract, write
from pydkms.packaging.compression import Compression
from tests.support.tarballs import SUFFIX, M, compress, directory, file, snapshot, symlink, tar_bytes


def _refused(data: bytes, expected: str, limits: Limits = DEFAULT_LIMITS) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        archive = Path(tmp) / "a.tar"
        archive.write_bytes(data)
        (Path(tmp) / "out").mkdir()
        try:
            extract(archive, Path(tmp) / "out", limits)
        except DkmsError as error:
            if error.code != 7 or expected not in error.message:
                raise AssertionError(f"wrong refusal: {error.code} {error.message}") from None
            return
        raise AssertionError(f"not refused (expected {expected!r})")


def round_trip() -> None:
    for compression in (Compression.GZIP, Compression.XZ, Compression.ZSTD, Compression.NONE):
        with tempfile.TemporaryDirectory() as tmp:
            src = Path(tmp) / "src"
            (src / "dkms_main_tree" / "1.2-x" / "x86_64").mkdir(parents=True)
            (src / "dkms_source_tree").mkdir()
            (src / "dkms_source_tree" / "dkms.conf").write_text("PACKAGE_NAME=m\n")
            (src / "dkms_source_tree" / ("n" * 150)).write_text("long name\n")
            (src / "dkms_source_tree" / "l").symlink_to("dkms.conf")
            archive = Path(tmp) / ("a" + SUFFIX[compression])
            write(archive, src)
            (Path(tmp) / "out").mkdir()
            got = extract(archive, Path(tmp) / "out")
            assert got.layout is Layout.DKMS and snapshot(Path(tmp) / "out") == snapshot(src)


def extended_header_limit() -> None:
    _refused(
        tar_bytes([M("x", pax={"comment": "c" * 5000})]), "extended header", Limits(max_header_size=4096)
    )
    _refused(
        tar_bytes([file("n" * 5000)], fmt=tarfile.GNU_FORMAT), "extended header", Limits(max_header_size=4096)
    )


def sparse() -> None:
    _refused(tar_bytes([M("s", tarfile.GNUTYPE_SPARSE, size=0)]), "sparse")
    with tempfile.TemporaryDirectory() as tmp:
        with open(Path(tmp) / "holes", "wb") as fh:
            fh.truncate(1 << 20)
            fh.write(b"x")
        for fmt in ("gnu", "posix"):
            out = subprocess.run(
                ["tar", "-C", tmp, f"--format={fmt}", "-S", "-cf", "-", "holes"],
                capture_output=True,
                check=True,
            ).stdout
            _refused(out, "sparse")


def bad_headers() -> None:
    data = bytearray(tar_bytes([file("a"), file("b"), file("c")]))
    data[1024 + 3] ^= 0x20  # the header of b
    _refused(bytes(data), "invalid header")
    whole = tar_bytes([file("a", b"x" * 700)])
    _refused(whole[:1536], "end-of-archive")
    _refused(whole[:1000], "unexpected end of data")
    _refused(compress(whole, Compression.GZIP)[:-3], "truncated or corrupt")


def symlinks() -> None:
    _refused(tar_bytes([symlink("a", "."), symlink("b", "a/../x")]), "outside the archive")
    _refused(tar_bytes([directory("d"), symlink("l", "d"), file("l/x")]), "through the symbolic link")


CHECKS: List[Callable[[], None]] = [round_trip, extended_header_limit, sparse, bad_headers, symlinks]


def main() -> int:
    for check in CHECKS:
        try:
            check()
        except AssertionError as failure:
            print(f"{check.__name__}: {failure}")
            return 1
    print("ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
