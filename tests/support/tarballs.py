"""Making tar archives byte by byte for the archive tests, and comparing extracted trees.

Kept free of pytest and hypothesis so that ``archive_selfcheck`` can use it on every Python.
"""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import os
import stat
import subprocess
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from pydkms.packaging.compression import Compression

ALL_COMPRESSIONS = list(Compression)
#: a file name for each compression (what mktarball would call it)
SUFFIX = {
    Compression.NONE: ".tar",
    Compression.GZIP: ".tar.gz",
    Compression.BZIP2: ".tar.bz2",
    Compression.XZ: ".tar.xz",
    Compression.LZMA: ".tar.lzma",
    Compression.ZSTD: ".tar.zst",
    Compression.LZ4: ".tar.lz4",
}
#: how GNU tar is told to use each compression
GNU_TAR_FLAGS = {
    Compression.NONE: [],
    Compression.GZIP: ["-z"],
    Compression.BZIP2: ["-j"],
    Compression.XZ: ["-J"],
    # (--lzma runs "lzma", which Debian's alternatives may point to plain xz)
    Compression.LZMA: ["-I", "xz --format=lzma"],
    Compression.ZSTD: ["--zstd"],
    Compression.LZ4: ["-I", "lz4"],
}
MTIME = 1_700_000_000


@dataclass
class M:
    """One member of a hand-made archive."""

    name: str
    type: bytes = tarfile.REGTYPE
    data: bytes = b""
    linkname: str = ""
    mode: int = 0o644
    mtime: float = MTIME
    pax: Dict[str, str] = field(default_factory=dict)
    size: Optional[int] = None


def file(name: str, data: bytes = b"data\n", mode: int = 0o644) -> M:
    return M(name, tarfile.REGTYPE, data, mode=mode)


def directory(name: str, mode: int = 0o755) -> M:
    return M(name, tarfile.DIRTYPE, mode=mode)


def symlink(name: str, target: str) -> M:
    return M(name, tarfile.SYMTYPE, linkname=target, mode=0o777)


def hardlink(name: str, target: str) -> M:
    return M(name, tarfile.LNKTYPE, linkname=target)


def tar_bytes(members: Sequence[M], fmt: int = tarfile.PAX_FORMAT) -> bytes:
    """An uncompressed tar of ``members``, written exactly as given (no checks, any names)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt, encoding="utf-8", errors="surrogateescape") as tar:
        for m in members:
            info = tarfile.TarInfo(m.name)
            info.type, info.mode, info.mtime, info.linkname = m.type, m.mode, m.mtime, m.linkname
            info.pax_headers = dict(m.pax)
            if m.type in (tarfile.REGTYPE, tarfile.AREGTYPE, tarfile.CONTTYPE) or m.size is not None:
                info.size = len(m.data) if m.size is None else m.size
                tar.addfile(info, io.BytesIO(m.data))
            else:
                tar.addfile(info)
    return buf.getvalue()


def compress(data: bytes, compression: Compression) -> bytes:
    """``data`` compressed like the real tools do."""
    if compression is Compression.NONE:
        return data
    if compression is Compression.GZIP:
        return gzip.compress(data)
    if compression is Compression.BZIP2:
        return bz2.compress(data)
    if compression is Compression.XZ:
        return lzma.compress(data, format=lzma.FORMAT_XZ)
    if compression is Compression.LZMA:
        return lzma.compress(data, format=lzma.FORMAT_ALONE)
    program = "zstd" if compression is Compression.ZSTD else "lz4"
    return subprocess.run([program, "-q", "-c"], input=data, capture_output=True, check=True).stdout


def archive_file(directory_: Path, members: Sequence[M], compression: Compression, stem: str = "a") -> Path:
    path = directory_ / (stem + SUFFIX[compression])
    path.write_bytes(compress(tar_bytes(members), compression))
    return path


Entry = Tuple[object, ...]


def snapshot(root: Path) -> Dict[str, Entry]:
    """Everything below ``root``: kind, mode, mtime and content (files), target (symlinks)."""
    out: Dict[str, Entry] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            rel = path.relative_to(root).as_posix()
            st = path.lstat()
            if stat.S_ISLNK(st.st_mode):
                out[rel] = ("symlink", os.readlink(path))
            elif stat.S_ISDIR(st.st_mode):
                out[rel] = ("dir", stat.S_IMODE(st.st_mode), int(st.st_mtime))
            else:
                kind = "file" if stat.S_ISREG(st.st_mode) else f"special {stat.S_IFMT(st.st_mode):o}"
                data = path.read_bytes() if stat.S_ISREG(st.st_mode) else b""
                out[rel] = (kind, stat.S_IMODE(st.st_mode), int(st.st_mtime), st.st_nlink, data)
    return out


def listing(root: Path) -> List[str]:
    """Every path below ``root`` (for "nothing else appeared" checks)."""
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*"))
