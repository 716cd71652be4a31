"""The archive library: benign archives round-trip, upstream's layout is recognised, and archives
cross with real GNU tar in both directions (upstream's mktarball/ldtarball are tar calls)."""

from __future__ import annotations

import io
import os
import shutil
import stat
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pydkms.errors import DkmsError
from pydkms.packaging import archive as archive_mod
from pydkms.packaging.archive import ArchiveWriter, Layout, extract, write
from pydkms.packaging.compression import Compression, detect, for_name
from tests.support.tarballs import (
    ALL_COMPRESSIONS,
    GNU_TAR_FLAGS,
    SUFFIX,
    directory,
    file,
    hardlink,
    listing,
    snapshot,
    symlink,
    tar_bytes,
)

REPO = Path(__file__).resolve().parents[2]
#: made-up kernel releases: the archive code only handles their names
K1, K2 = "1.2.3-test-amd64", "1.2.4-test-amd64"
IDS = {"ids": lambda c: c.value}


def set_times(root: Path, base: int = 1_600_000_000) -> None:
    """Distinct modification times everywhere, directories last (their contents change them)."""
    paths = sorted(root.rglob("*"), key=lambda p: (-len(p.parts), str(p)))
    for i, p in enumerate(paths):
        os.utime(p, (base + i * 3600, base + i * 3600), follow_symlinks=False)


def upstream_staging(root: Path) -> Path:
    """A staging dir like upstream's mktarball builds: two kernels' builds and the full source."""
    st_dir = root / "staging-in"
    for k in (K1, K2):
        build = st_dir / "dkms_main_tree" / k / "x86_64"
        (build / "module").mkdir(parents=True)
        (build / "log").mkdir()
        (build / "module" / "hello.ko").write_bytes(os.urandom(20_000))
        (build / "module" / "Module.symvers").write_text("0x0\thello_sym\t/x/hello\tEXPORT_SYMBOL\t\n")
        (build / "log" / "make.log").write_text("make ok\n" * 40)
    src = st_dir / "dkms_source_tree"
    (src / "sub" / "deep").mkdir(parents=True)
    (src / "dkms.conf").write_text(
        'PACKAGE_NAME="hello"\nPACKAGE_VERSION="1.0"\nBUILT_MODULE_NAME[0]=hello\n'
    )
    (src / "hello.c").write_text("int hello;\n" * 100)
    (src / "Makefile").write_text("obj-m := hello.o\n")
    (src / "configure").write_text("#!/bin/sh\nexit 0\n")
    (src / "configure").chmod(0o755)
    (src / "private.key").write_text("secret\n")
    (src / "private.key").chmod(0o600)
    (src / "sub" / "deep" / "data.bin").write_bytes(bytes(range(256)) * 8)
    (src / "sub").chmod(0o750)
    long_dir = src / ("a" * 90) / ("b" * 90)
    long_dir.mkdir(parents=True)
    (long_dir / ("long-name-" + "c" * 140)).write_text("long\n")  # beyond ustar: GNU/PAX long names
    (src / "link-to-hello.c").symlink_to("hello.c")
    (src / "link-to-sub").symlink_to("sub/deep")
    (src / "long-link").symlink_to(os.path.relpath(next(long_dir.iterdir()), src))
    (src / "sub" / "deep" / "up").symlink_to("../../hello.c")
    os.link(src / "hello.c", src / "sub" / "hardlinked.c")
    (src / "ünïcödé file.txt").write_text("names are bytes\n")
    set_times(st_dir)
    return st_dir


def gnu_tar(*args: str) -> str:
    r = subprocess.run(["tar", *args], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return r.stdout


# --- upstream / GNU tar interoperability --------------------------------------------------------


@pytest.mark.parametrize("fmt", ["gnu", "posix"])
@pytest.mark.parametrize("compression", ALL_COMPRESSIONS, **IDS)  # type: ignore[arg-type]
def test_gnu_tar_archives_load(tmp_path: Path, compression: Compression, fmt: str) -> None:
    """What upstream's mktarball writes (tar -czf of ./dkms_main_tree ./dkms_source_tree) loads."""
    src = upstream_staging(tmp_path)
    archive = tmp_path / ("hello-1.0-kernels" + SUFFIX[compression])
    gnu_tar("-C", str(src), f"--format={fmt}", *GNU_TAR_FLAGS[compression], "-cf", str(archive),
            "./dkms_main_tree", "./dkms_source_tree")  # fmt: skip
    out = tmp_path / "out"
    out.mkdir()
    got = extract(archive, out)
    assert snapshot(out) == snapshot(src)
    assert got.compression is compression
    assert got.layout is Layout.DKMS
    assert [(b.kernel, b.arch, b.path) for b in got.builds] == [
        (K1, "x86_64", out / "dkms_main_tree" / K1 / "x86_64"),
        (K2, "x86_64", out / "dkms_main_tree" / K2 / "x86_64"),
    ]
    assert got.source_tree == out / "dkms_source_tree"
    assert got.dkms_conf == out / "dkms_source_tree" / "dkms.conf"
    assert got.binaries_only is None
    assert got.members == len(listing(src))
    # the two names of the hard-linked file are one file again
    assert (out / "dkms_source_tree" / "hello.c").stat().st_ino == (
        out / "dkms_source_tree" / "sub" / "hardlinked.c"
    ).stat().st_ino


@pytest.mark.parametrize("compression", ALL_COMPRESSIONS, **IDS)  # type: ignore[arg-type]
def test_our_archives_load_in_gnu_tar(tmp_path: Path, compression: Compression) -> None:
    src = upstream_staging(tmp_path)
    archive = tmp_path / ("hello-1.0-kernels" + SUFFIX[compression])
    assert write(archive, src) == archive
    # GNU tar recognises the compression by itself, except lz4, which it does not know
    extra = ["-I", "lz4"] if compression is Compression.LZ4 else []
    names = gnu_tar(*extra, "-tf", str(archive)).splitlines()
    assert all(n.startswith("./") for n in names)
    assert names[:3] == ["./dkms_main_tree/", f"./dkms_main_tree/{K1}/", f"./dkms_main_tree/{K1}/x86_64/"]
    owners = {line.split()[1] for line in gnu_tar(*extra, "-tvf", str(archive)).splitlines()}
    assert owners == {"root/root"}
    out = tmp_path / "gnu-out"
    out.mkdir()
    gnu_tar(*extra, "-C", str(out), "-xf", str(archive))
    assert snapshot(out) == snapshot(src)
    assert detect(archive.read_bytes()[:512]) is compression


@pytest.mark.parametrize("compression", ALL_COMPRESSIONS, **IDS)  # type: ignore[arg-type]
def test_write_extract_round_trip(tmp_path: Path, compression: Compression) -> None:
    src = upstream_staging(tmp_path)
    archive = tmp_path / ("a" + SUFFIX[compression])
    write(archive, src)
    out = tmp_path / "out"
    out.mkdir()
    got = extract(archive, out)
    assert snapshot(out) == snapshot(src)
    assert got.compression is compression and got.layout is Layout.DKMS
    assert (
        got.total_size
        == sum(p.stat().st_size for p in src.rglob("*") if p.is_file() and not p.is_symlink())
        - (src / "dkms_source_tree" / "hello.c").stat().st_size
    )  # the second name of the hard link holds no data


# --- round trips of generated trees -------------------------------------------------------------

NAMES = st.sampled_from(["a", "b", "Makefile", "x y", "ü", "-dash", ".hidden", "n" * 120, "back\\slash"])


@st.composite
def trees(draw: st.DrawFn) -> List[Tuple[str, str, int, int, bytes, str]]:
    """(kind, path, mode, mtime, data, link target) entries of a tree, parents first."""
    entries: List[Tuple[str, str, int, int, bytes, str]] = []
    dirs = [""]
    files: List[str] = []
    used = set()
    for _ in range(draw(st.integers(1, 14))):
        parent = draw(st.sampled_from(dirs))
        name = draw(NAMES)
        path = f"{parent}/{name}" if parent else name
        if path in used:
            continue
        used.add(path)
        kind = draw(st.sampled_from(["file", "file", "dir", "symlink", "hardlink"]))
        mtime = draw(st.integers(0, 2**33))
        if kind == "dir":
            entries.append(("dir", path, draw(st.sampled_from([0o755, 0o700, 0o750, 0o555])), mtime, b"", ""))
            dirs.append(path)
        elif kind == "file" or (kind == "hardlink" and not files):
            data = draw(st.binary(max_size=3000))
            entries.append(
                ("file", path, draw(st.sampled_from([0o644, 0o600, 0o755, 0o444, 0o777])), mtime, data, "")
            )
            files.append(path)
        elif kind == "hardlink":
            entries.append(("hardlink", path, 0, 0, b"", draw(st.sampled_from(files))))
        else:
            goal = draw(st.sampled_from(files + dirs[1:] + ["missing"]))
            target = os.path.relpath(goal, parent or ".")
            entries.append(("symlink", path, 0, mtime, b"", target))
    return entries


def materialise(root: Path, entries: Sequence[Tuple[str, str, int, int, bytes, str]]) -> None:
    root.mkdir()
    for kind, path, _, _, data, target in entries:
        p = root / path
        if kind == "dir":
            p.mkdir()
        elif kind == "file":
            p.write_bytes(data)
        elif kind == "hardlink":
            os.link(root / target, p)
        else:
            p.symlink_to(target)
    for kind, path, mode, mtime, _, _ in sorted(entries, key=lambda e: -e[1].count("/")):
        p = root / path
        if kind in ("dir", "file"):
            p.chmod(mode)
        if kind != "hardlink":
            os.utime(p, (mtime, mtime), follow_symlinks=False)


@given(entries=trees(), compression=st.sampled_from(ALL_COMPRESSIONS))
@settings(max_examples=60, derandomize=True, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_generated_trees_round_trip(
    entries: List[Tuple[str, str, int, int, bytes, str]], compression: Compression
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "src"
        materialise(src, entries)
        archive = Path(tmp) / ("a" + SUFFIX[compression])
        write(archive, src)
        out = Path(tmp) / "out"
        out.mkdir()
        got = extract(archive, out)
        assert snapshot(out) == snapshot(src)
        assert got.layout is Layout.SOURCE and got.dkms_conf is None
        # and both ways with GNU tar (its archive of "." has a "./" member for the top directory)
        flags = GNU_TAR_FLAGS[compression]
        gnu_out = Path(tmp) / "gnu-out"
        gnu_out.mkdir()
        gnu_tar(*flags, "-C", str(gnu_out), "-xf", str(archive))
        assert snapshot(gnu_out) == snapshot(src)
        gnu_archive = Path(tmp) / ("gnu" + SUFFIX[compression])
        gnu_tar(*flags, "-C", str(src), "-cf", str(gnu_archive), ".")
        ours = Path(tmp) / "ours"
        ours.mkdir()
        extract(gnu_archive, ours)
        assert snapshot(ours) == snapshot(src)


def test_output_is_reproducible(tmp_path: Path) -> None:
    """The same tree gives the same bytes, whatever order its entries were created in."""
    entries = [("dir", d, 0o755, 1000 + i, b"", "") for i, d in enumerate(["b", "a", "a/z", "a/y"])]
    entries += [
        ("file", f, 0o644, 5000 + i, f.encode() * 50, "") for i, f in enumerate(["b/2", "a/z/1", "a/0", "c"])
    ]
    entries += [("symlink", "a/l", 0, 7000, b"", "0")]
    materialise(tmp_path / "one", entries)
    materialise(tmp_path / "two", [entries[i] for i in (1, 0, 3, 2, 7, 6, 5, 4, 8)])
    for compression in ALL_COMPRESSIONS:
        first = write(tmp_path / ("1" + SUFFIX[compression]), tmp_path / "one").read_bytes()
        second = write(tmp_path / ("2" + SUFFIX[compression]), tmp_path / "two").read_bytes()
        assert first == second, compression
    with tarfile.open(tmp_path / "1.tar") as tar:
        assert tar.getnames() == ["./a", "./a/0", "./a/l", "./a/y", "./a/z", "./a/z/1", "./b", "./b/2", "./c"]


# --- the writer API (what mktarball uses) ---------------------------------------------------------


def test_writer_builds_the_mktarball_layouts(tmp_path: Path) -> None:
    src = upstream_staging(tmp_path)
    build = tmp_path / "tree" / K1 / "x86_64"
    shutil.copytree(src / "dkms_main_tree" / K1 / "x86_64", build, symlinks=True)
    (build / ".pydkms-install.json").write_text("{}")
    source_link = tmp_path / "source"
    source_link.symlink_to(src / "dkms_source_tree")
    private = lambda rel: rel.split("/")[-1].startswith(".pydkms-")  # noqa: E731

    full = tmp_path / "full.dkms.tar.gz"
    with ArchiveWriter(full, mtime=1234) as out:
        out.add_dir("dkms_main_tree")
        out.add_tree(f"dkms_main_tree/{K1}/x86_64", build, exclude=private)
        out.add_tree("dkms_source_tree", source_link)
    with tarfile.open(full) as tar:
        names = tar.getnames()
    assert f"./dkms_main_tree/{K1}" in names and "./dkms_source_tree/link-to-hello.c" in names
    assert not any(".pydkms-install.json" in n for n in names)
    (tmp_path / "o1").mkdir()
    got = extract(full, tmp_path / "o1")
    assert got.source_tree is not None and snapshot(got.source_tree) == snapshot(src / "dkms_source_tree")
    assert [b.kernel for b in got.builds] == [K1]
    implied = (tmp_path / "o1" / "dkms_main_tree" / K1).stat()
    assert (stat.S_IMODE(implied.st_mode), int(implied.st_mtime)) == (0o755, 1234)

    binaries = tmp_path / "bin.dkms.tar"
    with ArchiveWriter(binaries) as out:
        out.add_tree(f"dkms_main_tree/{K1}/x86_64", build, exclude=private)
        out.add_bytes("dkms_binaries_only/PACKAGE_NAME", b"hello\n")
        out.add_bytes("dkms_binaries_only/PACKAGE_VERSION", b"1.0\n")
        out.add_tree("dkms_binaries_only/dkms.conf", src / "dkms_source_tree" / "dkms.conf")
    (tmp_path / "o2").mkdir()
    got = extract(binaries, tmp_path / "o2")
    assert got.layout is Layout.DKMS and got.source_tree is None
    assert got.binaries_only == tmp_path / "o2" / "dkms_binaries_only"
    assert got.dkms_conf == tmp_path / "o2" / "dkms_binaries_only" / "dkms.conf"
    assert (got.binaries_only / "PACKAGE_NAME").read_text() == "hello\n"


def test_writer_refuses_misuse(tmp_path: Path) -> None:
    out = ArchiveWriter(tmp_path / "x.tar")
    out.add_bytes("a", b"")
    with pytest.raises(ValueError):
        out.add_bytes("a", b"again")
    for bad in ("/abs", "../up", "", "a/../b"):
        with pytest.raises(ValueError):
            out.add_dir(bad)
    out.add_bytes("a/b", b"")
    with pytest.raises(ValueError):
        out.commit()  # a is a file but has a member below it


def test_failed_write_leaves_the_old_archive(tmp_path: Path) -> None:
    """An error before or while writing: the old archive stays, no temporary file is left."""
    archive = tmp_path / "out" / "m.dkms.tar.gz"
    archive.parent.mkdir()
    archive.write_bytes(b"old")
    tree = tmp_path / "tree"
    tree.mkdir()
    os.mkfifo(tree / "fifo")
    with pytest.raises(DkmsError) as caught:
        write(archive, tree)
    assert caught.value.code == 6 and "fifo" in caught.value.message
    (tree / "fifo").unlink()
    (tree / "gone").write_text("x")
    writer = ArchiveWriter(archive)
    writer.add_tree("tree", tree)
    (tree / "gone").unlink()  # vanishes between collecting and writing
    with pytest.raises(DkmsError) as caught:
        writer.commit()
    assert caught.value.code == 6 and "gone" in caught.value.message
    assert archive.read_bytes() == b"old"
    assert os.listdir(archive.parent) == ["m.dkms.tar.gz"]
    with pytest.raises(DkmsError) as caught:
        write(tmp_path / "missing-dir" / "x.tar", tree)
    assert caught.value.code == 6


def test_missing_compression_programs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    zst = tmp_path / "a.tar.zst"
    zst.write_bytes(
        subprocess.run(["zstd", "-q", "-c"], input=tar_bytes([file("x")]), capture_output=True).stdout
    )
    (tmp_path / "tree").mkdir()
    (tmp_path / "empty-bin").mkdir()
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))
    (tmp_path / "out").mkdir()
    with pytest.raises(DkmsError) as caught:
        extract(zst, tmp_path / "out")
    assert (
        caught.value.code == 1
        and "zstd" in caught.value.message
        and "apt-get install zstd" in str(caught.value)
    )
    with pytest.raises(DkmsError) as caught:
        write(tmp_path / "b.tar.lz4", tmp_path / "tree")
    assert caught.value.code == 1 and "apt-get install lz4" in str(caught.value)
    assert sorted(os.listdir(tmp_path)) == ["a.tar.zst", "empty-bin", "out", "tree"]


# --- layout ----------------------------------------------------------------------------------------


def extracted(tmp_path: Path, members: list) -> archive_mod.ExtractedArchive:  # type: ignore[type-arg]
    archive = tmp_path / "a.tar"
    archive.write_bytes(tar_bytes(members))
    out = tmp_path / "out"
    out.mkdir()
    return extract(archive, out)


def test_generic_source_tarball_takes_the_shallowest_dkms_conf(tmp_path: Path) -> None:
    got = extracted(tmp_path, [
        file("hello-1.0/sub/dkms.conf"), file("zz/dkms.conf"), file("hello-1.0/dkms.conf"),
        file("a b/dkms.conf"), symlink("dkms.conf", "zz/dkms.conf"), file("Ab/dkms.conf"),
    ])  # fmt: skip
    assert got.layout is Layout.SOURCE
    # byte order among equals: "A" (0x41) < "a" (0x61); a symlink called dkms.conf does not count
    assert got.dkms_conf == tmp_path / "out" / "Ab" / "dkms.conf"
    assert got.source_dir == tmp_path / "out" / "Ab"


def test_generic_source_tarball_of_a_directory_content(tmp_path: Path) -> None:
    got = extracted(tmp_path, [directory("./"), file("./dkms.conf"), file("./Makefile")])
    assert got.source_dir == tmp_path / "out" and got.members == 3


def test_generic_tarball_without_dkms_conf(tmp_path: Path) -> None:
    got = extracted(tmp_path, [file("README")])
    assert (got.layout, got.dkms_conf, got.source_dir) == (Layout.SOURCE, None, None)


def test_dkms_archive_builds_and_conf(tmp_path: Path) -> None:
    releases = ["5.10.0+", "4.18.0-477.10.1.el8_8.x86_64", "6.6.7-arch1-1", "1.2.3~rc1", K1]
    members = [directory(f"dkms_main_tree/{k}/{a}") for k in releases for a in ("x86_64", "aarch64")]
    members += [file("dkms_binaries_only/dkms.conf"), symlink("dkms_source_tree/dkms.conf", "x")]
    got = extracted(tmp_path, members)
    assert [(b.kernel, b.arch) for b in got.builds] == sorted(
        ((k, a) for k in releases for a in ("x86_64", "aarch64")),
        key=lambda b: (b[0].encode(), b[1].encode()),
    )
    # dkms_source_tree/dkms.conf is no regular file: the binaries-only copy is the conf
    assert got.dkms_conf == tmp_path / "out" / "dkms_binaries_only" / "dkms.conf"


def test_dkms_archive_without_conf(tmp_path: Path) -> None:
    got = extracted(tmp_path, [directory("dkms_main_tree"), file("dkms_source_tree/Makefile")])
    assert got.layout is Layout.DKMS and got.dkms_conf is None and got.builds == ()


@pytest.mark.parametrize(
    "name,ok",
    [("6.1.0-x-amd64", True), ("4.18.0-477.10.1.el8_8.x86_64", True), ("5.10.0+", True), ("1~rc", True),
     ("", False), (".", False), ("..", False), ("-rf", False), ("a/b", False), ("a b", False), ("a;b", False),
     ("$(x)", False), ("a`b`", False), ("ü", False), ("x" * 256, False)],
)  # fmt: skip
def test_release_names(name: str, ok: bool) -> None:
    assert archive_mod._valid_release_name(name) is ok


# --- what extraction keeps ---------------------------------------------------------------------------


def test_modes_times_and_allowed_duplicates(tmp_path: Path) -> None:
    members = [
        directory("d", 0o700),
        file("d/f", b"first"),
        file("sticky-file", mode=0o1644),
        directory("sticky-dir", 0o1777),
        directory("d", 0o750),  # a repeated directory: the last mode wins
        file("d/f", b"second", 0o600),  # a repeated file: the last one wins
        file("other", b"o"),
        hardlink("d/f", "other"),  # a hard link may replace a file
        symlink("s", "d/f"),
    ]
    for m, t in zip(members, range(len(members))):
        m.mtime = 1_000_000 + t
    got = extracted(tmp_path, members)
    out = got.root
    assert stat.S_IMODE((out / "d").stat().st_mode) == 0o750
    assert (out / "d" / "f").read_bytes() == b"o" and (out / "d" / "f").samefile(out / "other")
    assert stat.S_IMODE((out / "sticky-file").stat().st_mode) == 0o644
    assert stat.S_IMODE((out / "sticky-dir").stat().st_mode) == 0o777
    assert int((out / "d").stat().st_mtime) == 1_000_004
    assert int((out / "s").lstat().st_mtime) == 1_000_008
    assert got.members == 9 and got.total_size == len(b"first") + len(b"data\n") + len(b"second") + len(b"o")


def test_owners_are_not_restored(tmp_path: Path) -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo("f")
        info.uid, info.gid, info.uname, info.gname = 1234, 4321, "nobody", "nogroup"
        tar.addfile(info, io.BytesIO(b""))
    archive = tmp_path / "a.tar"
    archive.write_bytes(buf.getvalue())
    (tmp_path / "out").mkdir()
    extract(archive, tmp_path / "out")
    st_ = (tmp_path / "out" / "f").stat()
    assert (st_.st_uid, st_.st_gid) == (os.getuid(), os.getgid())


def test_staging_must_be_an_empty_directory(tmp_path: Path) -> None:
    archive = tmp_path / "a.tar"
    archive.write_bytes(tar_bytes([file("f")]))
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("")
    (tmp_path / "link").symlink_to("full")
    for staging in (tmp_path / "full", tmp_path / "link", tmp_path / "nowhere"):
        with pytest.raises(DkmsError) as caught:
            extract(archive, staging)
        assert caught.value.code == 1


def test_compression_from_names_and_content() -> None:
    assert [for_name(n) for n in ("m.dkms.tar.gz", "m.tgz", "m.tar.bz2", "m.tar.xz", "m.txz", "m.tar.lzma",
                                  "m.tar.zst", "m.tar.lz4", "m.tar", "m.tar.Z", "m")] == [
        Compression.GZIP, Compression.GZIP, Compression.BZIP2, Compression.XZ, Compression.XZ,
        Compression.LZMA, Compression.ZSTD, Compression.LZ4, Compression.NONE, Compression.NONE, Compression.NONE,
    ]  # fmt: skip
    assert detect(b"") is None and detect(b"hello") is None and detect(b"\x1f\x9d" + bytes(600)) is None
    v7 = bytearray(tar_bytes([file("f")], fmt=tarfile.USTAR_FORMAT)[:512])
    v7[257:265] = bytes(8)  # drop the ustar magic: a pre-POSIX header, recognised by its checksum
    v7[148:156] = b" " * 8
    v7[148:156] = b"%06o\0 " % sum(v7)
    assert detect(bytes(v7)) is Compression.NONE


# --- streaming ------------------------------------------------------------------------------------

# VmHWM, not ru_maxrss: a child started with vfork inherits the test process's peak in ru_maxrss
_CHILD = """
import sys
from pathlib import Path
from pydkms.packaging.archive import extract, write
if sys.argv[1] == "write":
    write(Path(sys.argv[2]), Path(sys.argv[3]))
else:
    extract(Path(sys.argv[2]), Path(sys.argv[3]))
status = Path("/proc/self/status").read_text()
print(next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM:")))
"""


def _peak_kib(*args: str) -> int:
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"))
    r = subprocess.run([sys.executable, "-c", _CHILD, *args], capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr
    return int(r.stdout)


def test_a_large_member_streams(tmp_path: Path) -> None:
    """Writing and loading a 96 MiB module keeps the process far below the size of the data."""
    tree = tmp_path / "tree"
    tree.mkdir()
    with open(tree / "big.ko", "wb") as fh:
        fh.truncate(96 << 20)  # holes read as zeros: fast to make and to compress
    archive = tmp_path / "big.tar.gz"
    assert _peak_kib("write", str(archive), str(tree)) < 48 << 10
    (tree / "big.ko").unlink()
    (tmp_path / "out").mkdir()
    assert _peak_kib("extract", str(archive), str(tmp_path / "out")) < 48 << 10
    assert (tmp_path / "out" / "big.ko").stat().st_size == 96 << 20


# --- every Python the project supports -------------------------------------------------------------


def _interpreters() -> List[str]:
    found: Dict[str, str] = {}
    for minor in range(9, 14):
        for candidate in [
            shutil.which(f"python3.{minor}"),
            *sorted(map(str, Path.home().glob(f".pyenv/versions/3.{minor}.*/bin/python3.{minor}"))),
        ]:
            if candidate and f"3.{minor}" not in found:
                r = subprocess.run([candidate, "-c", "pass"], capture_output=True)
                if r.returncode == 0:
                    found[f"3.{minor}"] = candidate
    return list(found.values())


@pytest.mark.slow
def test_tarfile_hooks_work_on_every_python() -> None:
    """The hooks into tarfile's reader (extended-header limits, sparse files, bad headers) use
    tarfile internals: check them on every interpreter from 3.9 that this machine has."""
    pythons = _interpreters()
    if not pythons:
        pytest.skip("no other Python interpreter on this machine")
    env = dict(os.environ, PYTHONPATH=f"{REPO / 'src'}{os.pathsep}{REPO}")
    for python in pythons:
        r = subprocess.run(
            [python, "-m", "tests.support.archive_selfcheck"],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
        )
        assert (r.returncode, r.stdout.strip()) == (0, "ok"), f"{python}:\n{r.stdout}{r.stderr}"
