"""Hostile, broken and oversized archives: every one is refused with exit 7 naming the member,
and nothing appears outside the staging directory (a canary directory next to it stays as it was).

Hypothesis mixes each refusal class with benign members before and after it, in every
compression; a second family truncates, corrupts and replaces valid archives.
"""

from __future__ import annotations

import io
import lzma
import os
import random
import shutil
import subprocess
import tarfile
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pydkms.errors import DkmsError
from pydkms.packaging.archive import DEFAULT_LIMITS, Layout, Limits, extract
from pydkms.packaging.compression import Compression
from tests.support.tarballs import (
    ALL_COMPRESSIONS,
    SUFFIX,
    M,
    compress,
    directory,
    file,
    hardlink,
    listing,
    snapshot,
    symlink,
    tar_bytes,
)

PROPERTY = settings(
    max_examples=120,
    derandomize=True,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@dataclass
class Site:
    """A scratch directory with the staging dir, a canary dir next to it, and the archive."""

    root: Path

    @property
    def staging(self) -> Path:
        return self.root / "staging"

    @property
    def canary(self) -> Path:
        return self.root / "canary"

    def outside(self) -> List[str]:
        """Everything in ``root`` that is not in staging."""
        return [p for p in listing(self.root) if p != "staging" and not p.startswith("staging/")]


@contextmanager
def site() -> Iterator[Site]:
    with tempfile.TemporaryDirectory(prefix="pydkms-archive-") as tmp:
        s = Site(Path(tmp))
        s.staging.mkdir()
        s.canary.mkdir()
        (s.canary / "keep").write_text("canary\n")
        yield s


def refused(
    s: Site, members: Sequence[M], compression: Compression, limits: Limits = DEFAULT_LIMITS
) -> DkmsError:
    """Extract ``members`` and return the refusal, checking that nothing escaped."""
    archive = s.root / ("a" + SUFFIX[compression])
    archive.write_bytes(compress(tar_bytes(members), compression))
    before = snapshot(s.canary)
    with pytest.raises(DkmsError) as caught:
        extract(archive, s.staging, limits)
    assert caught.value.code == 7, caught.value
    assert str(archive) in caught.value.message
    assert "\n" not in caught.value.message
    assert snapshot(s.canary) == before
    assert s.outside() == ["a" + SUFFIX[compression], "canary", "canary/keep"]
    return caught.value


def names_member(error: DkmsError, names: Sequence[str]) -> bool:
    return any(f"member '{n}'" in error.message or f"member './{n}'" in error.message for n in names)


# --- the refusal classes -----------------------------------------------------------------------

#: canary path -> (hostile members, names of which one must be named, limits or None)
Case = Callable[[str], Tuple[List[M], List[str]]]

CASES: Dict[str, Case] = {
    "absolute file": lambda c: ([file(f"{c}/pwned")], [f"{c}/pwned"]),
    "absolute dir": lambda c: ([directory(f"{c}/pwned")], [f"{c}/pwned"]),
    "dotdot file": lambda c: ([file("../canary/pwned")], ["../canary/pwned"]),
    "dotdot inside": lambda c: ([file("x/../../canary/pwned")], ["x/../../canary/pwned"]),
    "dotdot dir": lambda c: ([directory("..")], [".."]),
    "symlink absolute": lambda c: ([symlink("l", c)], ["l"]),
    "symlink up": lambda c: ([symlink("l", "../canary")], ["l"]),
    "symlink deep up": lambda c: ([directory("a/b"), symlink("a/b/l", "../../../canary/keep")], ["a/b/l"]),
    # lexically inside, but a -> . makes a/.. the parent of the archive
    "symlink chain": lambda c: ([symlink("a", "."), symlink("b", "a/../canary")], ["b"]),
    "symlink chain reversed": lambda c: ([symlink("b", "a/../canary"), symlink("a", ".")], ["b"]),
    "symlink loop": lambda c: ([symlink("p", "q/x"), symlink("q", "p/x")], ["p", "q"]),
    "through inner symlink": lambda c: ([directory("sub"), symlink("l", "sub"), file("l/x")], ["l/x"]),
    "through symlink later": lambda c: ([symlink("l", "sub"), directory("l/deeper")], ["l/deeper"]),
    "hardlink absolute": lambda c: ([hardlink("h", f"{c}/keep")], ["h"]),
    "hardlink up": lambda c: ([hardlink("h", "../canary/keep")], ["h"]),
    "hardlink missing": lambda c: ([hardlink("h", "nothere")], ["h"]),
    "hardlink to symlink": lambda c: ([symlink("s", "x"), hardlink("h", "s")], ["h"]),
    "hardlink to dir": lambda c: ([directory("d"), hardlink("h", "d")], ["h"]),
    "hardlink to itself": lambda c: ([file("h"), hardlink("h", "h")], ["h"]),
    "char device": lambda c: ([M("dev/null", tarfile.CHRTYPE)], ["dev/null"]),
    "block device": lambda c: ([M("dev/sda", tarfile.BLKTYPE)], ["dev/sda"]),
    "fifo": lambda c: ([M("fifo", tarfile.FIFOTYPE)], ["fifo"]),
    "contiguous": lambda c: ([M("cont", tarfile.CONTTYPE, b"xx")], ["cont"]),
    "unknown type": lambda c: ([M("odd", b"Z", size=0)], ["odd"]),
    "gnu sparse": lambda c: ([M("sparse", tarfile.GNUTYPE_SPARSE, size=0)], ["sparse"]),
    "setuid": lambda c: ([file("su", mode=0o4755)], ["su"]),
    "setgid": lambda c: ([file("sg", mode=0o2755)], ["sg"]),
    "setgid dir": lambda c: ([directory("sgd", mode=0o2775)], ["sgd"]),
    "file then dir": lambda c: ([file("x"), directory("x")], ["x"]),
    "dir then file": lambda c: ([directory("x"), file("x")], ["x"]),
    "symlink then file": lambda c: ([symlink("x", "y"), file("x")], ["x"]),
    "file then symlink": lambda c: ([file("x"), symlink("x", "y")], ["x"]),
    "symlink then symlink": lambda c: ([symlink("x", "y"), symlink("x", "z")], ["x"]),
    "dir then hardlink": lambda c: ([file("y"), directory("x"), hardlink("x", "y")], ["x"]),
    "file as parent": lambda c: ([file("x"), file("x/y")], ["x/y"]),
    "root as file": lambda c: ([file("./")], ["./", ""]),
    "dkms_source_tree escape": lambda c: (
        [
            directory("dkms_main_tree"),
            file("dkms_source_tree/dkms.conf"),
            symlink("dkms_source_tree/l", "../dkms_main_tree"),
        ],
        ["dkms_source_tree/l"],
    ),
    "dkms_main_tree build escape": lambda c: (
        [
            file("dkms_main_tree/1.2.3-test/x86_64/log/make.log"),
            symlink("dkms_main_tree/1.2.3-test/x86_64/up", ".."),
        ],
        ["dkms_main_tree/1.2.3-test/x86_64/up"],
    ),
    "source tarball escape": lambda c: ([file("src/dkms.conf"), symlink("src/l", "../other")], ["src/l"]),
    "bad kernel name": lambda c: ([directory("dkms_main_tree/6.1;rm -rf")], ["dkms_main_tree/6.1;rm -rf"]),
    "bad arch name": lambda c: (
        [directory("dkms_main_tree/1.2.3-test/-x")],
        ["dkms_main_tree/1.2.3-test/-x"],
    ),
    "kernel dir is a symlink": lambda c: (
        [symlink("dkms_main_tree/k", "../dkms_source_tree")],
        ["dkms_main_tree/k"],
    ),
    "main tree is a file": lambda c: ([file("dkms_main_tree")], ["dkms_main_tree"]),
    "source tree is a symlink": lambda c: (
        [directory("dkms_main_tree"), symlink("dkms_source_tree", "x")],
        ["dkms_source_tree"],
    ),
}


@st.composite
def benign(draw: st.DrawFn, tag: str) -> List[M]:
    """Harmless members below ``ok<tag>/``: files f*, directories d*, symlinks l* staying inside."""
    members: List[M] = []
    for i in range(draw(st.integers(0, 5))):
        dirs = draw(st.lists(st.sampled_from(["d0", "d1", "d2"]), max_size=2))
        base = "/".join([f"ok{tag}", *dirs])
        kind = draw(st.sampled_from(["file", "dir", "link"]))
        if kind == "file":
            members.append(
                file(f"{base}/{draw(st.sampled_from(['f0', 'f1']))}", draw(st.binary(max_size=300)))
            )
        elif kind == "dir":
            members.append(directory(f"{base}/{draw(st.sampled_from(['d0', 'd1']))}"))
        else:
            up = "../" * draw(st.integers(0, len(dirs) + 1))
            members.append(
                symlink(f"{base}/l{i}", up + draw(st.sampled_from(["f0", "d1/f1", ".", "nothere"])))
            )
    return members


def dotted(members: List[M], dot: bool) -> List[M]:
    if dot:
        for m in members:
            if not m.name.startswith("/") and m.name != "./":
                m.name = "./" + m.name
    return members


@given(
    case=st.sampled_from(sorted(CASES)),
    compression=st.sampled_from(ALL_COMPRESSIONS),
    before=benign("a"),
    after=benign("b"),
    dot=st.booleans(),
)
@PROPERTY
def test_hostile_members_are_refused(
    case: str, compression: Compression, before: List[M], after: List[M], dot: bool
) -> None:
    with site() as s:
        hostile, named = CASES[case](str(s.canary))
        members = dotted(before + hostile + after, dot)
        error = refused(s, members, compression)
        assert names_member(error, named), (case, error.message)


@pytest.mark.parametrize("compression", ALL_COMPRESSIONS, ids=lambda c: c.value)
def test_every_case_is_refused_alone(compression: Compression) -> None:
    """Each class on its own in each compression (hypothesis samples the combinations)."""
    for case, build in sorted(CASES.items()):
        with site() as s:
            hostile, named = build(str(s.canary))
            error = refused(s, hostile, compression)
            assert names_member(error, named), (case, error.message)


@given(
    compression=st.sampled_from(ALL_COMPRESSIONS),
    before=benign("a"),
    after=benign("b"),
    which=st.sampled_from(["members", "size", "stream", "header"]),
)
@PROPERTY
def test_limits_are_enforced(compression: Compression, before: List[M], after: List[M], which: str) -> None:
    with site() as s:
        members = [*before, file("big", b"x" * 2000), *after]
        sizes = [len(m.data) for m in members if m.type == tarfile.REGTYPE]
        if which == "members":
            error = refused(s, members, compression, Limits(max_members=len(members) - 1))
            assert names_member(error, [members[-1].name]) and "members" in error.message
        elif which == "size":
            limit = sum(sizes) - 1
            total, culprit = 0, ""
            for m in members:
                if m.type == tarfile.REGTYPE:
                    total += len(m.data)
                    if total > limit:
                        culprit = m.name
                        break
            error = refused(s, members, compression, Limits(max_total_size=limit))
            assert names_member(error, [culprit]) and "add up to more than" in error.message
        elif which == "stream":
            error = refused(s, members, compression, Limits(max_stream_size=2048))
            assert "longer than the limit of 2 KiB" in error.message
        else:
            members.insert(len(before), M("long", tarfile.REGTYPE, b"", pax={"comment": "c" * 3000}))
            error = refused(s, members, compression, Limits(max_header_size=2048))
            assert "extended header" in error.message


def test_pax_header_bomb_is_refused_before_reading_it() -> None:
    """A 64 MiB PAX header is refused by its size, not read into memory (the stream stays small)."""
    header = tar_bytes([M("x", tarfile.REGTYPE, b"", pax={"comment": "c" * 1000})])
    with site() as s:
        # rewrite the size field of the PAX header to 64 MiB, fixing the checksum
        block = bytearray(header[:512])
        block[124:136] = b"%011o\0" % (64 << 20)
        block[148:156] = b" " * 8
        block[148:156] = b"%06o\0 " % sum(block)
        archive = s.root / "a.tar.gz"
        archive.write_bytes(compress(bytes(block) + header[512:], Compression.GZIP))
        with pytest.raises(DkmsError) as caught:
            extract(archive, s.staging)
        assert caught.value.code == 7 and "extended header" in caught.value.message


def test_gnu_tar_sparse_files_are_refused() -> None:
    """Sparse files as GNU tar writes them, old GNU format ('S') and PAX (GNU.sparse.* 1.0)."""
    for fmt in ("gnu", "posix"):
        with site() as s:
            src = s.root / "src"
            src.mkdir()
            with open(src / "holes", "wb") as fh:
                fh.truncate(1 << 20)
                fh.seek(512 << 10)
                fh.write(b"data")
            archive = s.root / "a.tar"
            subprocess.run(
                ["tar", "-C", str(src), f"--format={fmt}", "-S", "-cf", str(archive), "."], check=True
            )
            shutil.rmtree(src)
            with pytest.raises(DkmsError) as caught:
                extract(archive, s.staging)
            assert caught.value.code == 7 and "sparse" in caught.value.message, caught.value.message
            assert "holes" in caught.value.message
            assert s.outside() == ["a.tar", "canary", "canary/keep"]


def test_deep_names_and_long_symlink_chains_are_bounded() -> None:
    with site() as s:
        error = refused(s, [file("d/" * 128 + "f")], Compression.NONE)
        assert "more than 128 components" in error.message
    chain = [symlink(f"l{i}", "./" * 50 + f"l{i + 1}") for i in range(30)] + [file("l30")]
    with site() as s:
        error = refused(s, chain, Compression.NONE, Limits(max_symlink_steps=1000))
        assert "limit of 1000 steps" in error.message
    with site() as s:  # the same chain is fine within the default budget
        archive = s.root / "a.tar"
        archive.write_bytes(tar_bytes(chain))
        assert extract(archive, s.staging).members == 31


def test_decoder_memory_is_limited() -> None:
    """xz -9 needs a 64 MiB dictionary to decode: beyond the limit, the archive is refused."""
    data = tar_bytes([file("f", b"x" * 5000)])
    for compression, packed in [
        (Compression.XZ, lzma.compress(data, preset=9)),
        (Compression.LZMA, lzma.compress(data, format=lzma.FORMAT_ALONE, preset=9)),
        (Compression.ZSTD, subprocess.run(["zstd", "-q", "-c", "--ultra", "-22", "--long=27"], input=data,
                                          capture_output=True, check=True).stdout),
    ]:  # fmt: skip
        with site() as s:
            archive = s.root / ("a" + SUFFIX[compression])
            archive.write_bytes(packed)
            with pytest.raises(DkmsError) as caught:
                extract(archive, s.staging, Limits(max_decoder_memory=16 << 20))
            assert caught.value.code == 7 and "memory" in caught.value.message, caught.value.message
            assert extract(archive, s.staging).members == 1  # within the default limit


def test_escaped_names_in_messages() -> None:
    """A member name with control characters and undecodable bytes is shown escaped, on one line."""
    with site() as s:
        error = refused(s, [M("evil\n\x1b[31m\udcff", tarfile.FIFOTYPE)], Compression.NONE)
        assert "evil\\n\\x1b[31m\\xff" in error.message


def test_zstd_is_stopped_when_the_archive_is_refused() -> None:
    with site() as s:
        members = [M("fifo", tarfile.FIFOTYPE), *[file(f"f{i}", os.urandom(4096)) for i in range(64)]]
        refused(s, members, Compression.ZSTD)
        children = Path(f"/proc/{os.getpid()}/task/{os.getpid()}/children").read_text().split()
        names = [
            Path(f"/proc/{pid}/comm").read_text().strip() for pid in children if Path(f"/proc/{pid}").exists()
        ]
        assert "zstd" not in names


# --- broken input ------------------------------------------------------------------------------

GOOD = [
    directory("dkms_main_tree/1.2.3-test/x86_64/module"),
    file("dkms_main_tree/1.2.3-test/x86_64/module/m.ko", bytes(range(256)) * 12),
    file("dkms_source_tree/dkms.conf", b"PACKAGE_NAME=m\nPACKAGE_VERSION=1\n"),
    symlink("dkms_source_tree/link", "dkms.conf"),
    file("dkms_source_tree/m.c", b"int x;\n" * 300),
]


def good_archive(compression: Compression) -> bytes:
    return compress(tar_bytes(GOOD), compression)


def load_or_refuse(data: bytes, compression: Compression, complete: bool = False) -> Optional[DkmsError]:
    """Extract ``data``: a DkmsError(7) or success (``complete``: with the whole good tree);
    nothing ever escapes."""
    with site() as s:
        archive = s.root / ("a" + SUFFIX[compression])
        archive.write_bytes(data)
        try:
            got = extract(archive, s.staging)
        except DkmsError as error:
            assert error.code == 7, error
            assert str(archive) in error.message and "\n" not in error.message
            assert s.outside() == [archive.name, "canary", "canary/keep"]
            return error
        assert s.outside() == [archive.name, "canary", "canary/keep"]
        assert got.layout is Layout.DKMS
        if complete:
            assert _explicit_times(snapshot(s.staging)) == _explicit_times(good_tree())
        return None


def _explicit_times(tree: Dict[str, object]) -> Dict[str, object]:
    """``tree`` without the times of directories the archive does not list: they are made, as by
    GNU tar, at extraction time, so two extractions a second apart differ there."""
    listed = {m.name for m in GOOD}
    return {
        path: entry[:2] if isinstance(entry, tuple) and entry[0] == "dir" and path not in listed else entry
        for path, entry in tree.items()
    }


_GOOD_TREE: List[Dict[str, object]] = []


def good_tree() -> Dict[str, object]:
    if not _GOOD_TREE:
        with site() as s:
            archive = s.root / "a.tar"
            archive.write_bytes(good_archive(Compression.NONE))
            extract(archive, s.staging)
            _GOOD_TREE.append(dict(snapshot(s.staging)))
    return _GOOD_TREE[0]


@given(compression=st.sampled_from(ALL_COMPRESSIONS), cut=st.floats(0, 1, exclude_max=True))
@PROPERTY
def test_truncated_archives_are_refused(compression: Compression, cut: float) -> None:
    data = good_archive(compression)
    at = int(len(data) * cut)
    error = load_or_refuse(data[:at], compression, complete=True)
    if compression is Compression.NONE:
        # the end of an uncompressed tar is padding after the end-of-archive block: cutting that
        # off loses nothing, cutting anything before it must be refused
        assert error is not None or at >= _end_of_members() + 512
    else:
        assert error is not None, f"{compression} cut at {at} of {len(data)} was accepted"


def _end_of_members() -> int:
    """Offset of the end-of-archive block in tar_bytes(GOOD)."""
    data = tar_bytes(GOOD)
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        last = tar.getmembers()[-1]
    return last.offset_data + ((last.size + 511) // 512) * 512


@given(
    compression=st.sampled_from(ALL_COMPRESSIONS),
    flips=st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.integers(1, 255)), min_size=1, max_size=4),
)
@PROPERTY
def test_corrupted_archives_never_escape(compression: Compression, flips: List[Tuple[float, int]]) -> None:
    data = bytearray(good_archive(compression))
    for where, xor in flips:
        data[int(len(data) * where)] ^= xor
    load_or_refuse(bytes(data), compression)


@given(
    data=st.binary(max_size=2048),
    head=st.sampled_from(
        [
            b"",
            b"\x1f\x8b",
            b"BZh9",
            b"\xfd7zXZ\x00",
            b"\x28\xb5\x2f\xfd",
            b"\x04\x22\x4d\x18",
            b"\x5d\x00\x00",
        ]
    ),
)
@PROPERTY
def test_garbage_is_refused(data: bytes, head: bytes) -> None:
    """Random bytes, also behind the magic number of every compression."""
    assert load_or_refuse(head + data, Compression.NONE) is not None or not (head + data)


def test_empty_and_not_an_archive() -> None:
    with site() as s:
        for name, content, expected in [
            ("empty.tar.gz", b"", "the file is empty"),
            ("text.tar.gz", b"hello, world\n" * 50, "not a tar archive"),
            ("gzipped-text.tar.gz", compress(b"hello, world\n" * 50, Compression.GZIP), "not a tar archive"),
            ("gzipped-nothing.tar.gz", compress(b"", Compression.GZIP), "holds no tar data"),
            ("zstd-text.tar.zst", compress(b"hello\n" * 600, Compression.ZSTD), "not a tar archive"),
        ]:
            archive = s.root / name
            archive.write_bytes(content)
            with pytest.raises(DkmsError) as caught:
                extract(archive, s.staging)
            assert caught.value.code == 7 and expected in caught.value.message, caught.value.message
            assert listing(s.staging) == []
        with pytest.raises(DkmsError) as caught:
            extract(s.root, s.staging)
        assert caught.value.code == 7 and "not a regular file" in caught.value.message


def test_bad_header_in_the_middle_is_not_taken_for_the_end() -> None:
    """tarfile alone stops quietly at a damaged header after the first member; we refuse."""
    data = bytearray(tar_bytes(GOOD))
    with tarfile.open(fileobj=io.BytesIO(bytes(data))) as tar:
        second = tar.getmembers()[2].offset
    data[second + 10] ^= 0x55
    with site() as s:
        archive = s.root / "a.tar"
        archive.write_bytes(bytes(data))
        with pytest.raises(DkmsError) as caught:
            extract(archive, s.staging)
        assert "invalid header" in caught.value.message and "m.ko" in caught.value.message


def test_missing_end_block_is_truncation() -> None:
    data = tar_bytes(GOOD)[: _end_of_members()]
    error = load_or_refuse(data, Compression.NONE)
    assert error is not None and "without an end-of-archive block" in error.message


def test_random_junk_after_the_compressed_stream_is_refused() -> None:
    for compression in (Compression.GZIP, Compression.XZ, Compression.ZSTD):
        error = load_or_refuse(good_archive(compression) + random.Random(1).randbytes(100), compression)
        assert error is not None, compression
