"""The compressions of DKMS archives: recognising them, and streaming data through them.

Reading recognises the compression from the first bytes of the file, never from its name: gzip,
bzip2, xz and lzma are decoded in-process by the standard library; zstd and lz4 have no standard
module and are streamed through the ``zstd``/``lz4`` programs (started by :mod:`pydkms.runner`).
Writing picks the compression from the file name suffix, as GNU ``tar --auto-compress`` does.

Everything streams: nothing holds a whole archive in memory, and the xz/lzma and zstd decoders
are given a memory limit, so a crafted header cannot make them allocate gigabytes.
"""

from __future__ import annotations

import bz2
import contextlib
import enum
import gzip
import io
import lzma
import os
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, TYPE_CHECKING, BinaryIO, Optional, cast

from .. import runner
from ..errors import DkmsError

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer

#: how much compressed input is read at a time
_CHUNK = 1 << 16
#: xz/lzma encoder preset of written archives (see the writer for why not 6)
_XZ_PRESET = 4


class Compression(enum.Enum):
    """A compression of a tar stream; the value is the name used in messages."""

    NONE = "uncompressed"
    GZIP = "gzip"
    BZIP2 = "bzip2"
    XZ = "xz"
    LZMA = "lzma"
    ZSTD = "zstd"
    LZ4 = "lz4"


#: compressions run through an external program: program and the Debian package providing it
TOOLS = {Compression.ZSTD: ("zstd", "zstd"), Compression.LZ4: ("lz4", "lz4")}

#: file name suffixes, as GNU tar --auto-compress knows them (plus .lz4)
_SUFFIXES = {
    ".gz": Compression.GZIP,
    ".tgz": Compression.GZIP,
    ".taz": Compression.GZIP,
    ".bz2": Compression.BZIP2,
    ".tbz": Compression.BZIP2,
    ".tbz2": Compression.BZIP2,
    ".tz2": Compression.BZIP2,
    ".xz": Compression.XZ,
    ".txz": Compression.XZ,
    ".lzma": Compression.LZMA,
    ".tlz": Compression.LZMA,
    ".zst": Compression.ZSTD,
    ".tzst": Compression.ZSTD,
    ".lz4": Compression.LZ4,
}


def for_name(name: str) -> Compression:
    """The compression GNU ``tar --auto-compress`` would use for an archive called ``name``.

    Suffixes it does not know (``.tar``, none, or anything else) mean an uncompressed archive.
    """
    for suffix, compression in _SUFFIXES.items():
        if name.endswith(suffix):
            return compression
    return Compression.NONE


def _tar_checksum_ok(block: bytes) -> bool:
    """Whether ``block`` is a tar header whose checksum matches (recognises pre-POSIX v7 tars)."""
    if len(block) < 512:
        return False
    field = block[148:156].split(b"\0", 1)[0].strip()
    try:
        stored = int(field, 8)
    except ValueError:
        return False
    unsigned = sum(block[:148]) + 8 * 0x20 + sum(block[156:512])
    return stored == unsigned


def detect(head: bytes) -> Optional[Compression]:
    """The compression of a file starting with ``head`` (its first 512 bytes), or None.

    None means the content is none of the supported kinds: not an archive for pydkms.
    """
    if head.startswith(b"\x1f\x8b"):
        return Compression.GZIP
    if head[:3] == b"BZh" and head[3:4].isdigit() and head[3:4] != b"0":
        return Compression.BZIP2
    if head.startswith(b"\xfd7zXZ\x00"):
        return Compression.XZ
    if head.startswith(b"\x28\xb5\x2f\xfd"):
        return Compression.ZSTD
    if head.startswith((b"\x04\x22\x4d\x18", b"\x02\x21\x4c\x18")):
        return Compression.LZ4
    if head[257:262] == b"ustar" or _tar_checksum_ok(head):
        return Compression.NONE
    # LZMA-alone has no magic number: properties byte 0x5d (the only one xz and lzma write) and a
    # dictionary size of at least 64 KiB, so the next two bytes are zero
    if head.startswith(b"\x5d\x00\x00"):
        return Compression.LZMA
    return None


def require_tool(compression: Compression, purpose: str) -> str:
    """The program that handles ``compression``; DkmsError(1) naming its package if it is missing."""
    program, package = TOOLS[compression]
    found = runner.which(program)
    if found is None:
        raise DkmsError(
            1,
            f"The program {program} is needed to {purpose}, but it is not installed.",
            hint=f"Install the package that provides it: apt-get install {package}",
        )
    return found


class CorruptInput(DkmsError):
    """The archive's data is truncated or corrupt (exit 7)."""

    def __init__(self, message: str) -> None:
        super().__init__(7, message)


class DecoderMemoryLimit(Exception):
    """Decompressing the data needs more memory than the limit allows."""


class _LzmaReader(io.RawIOBase):
    """A streaming reader of .xz and .lzma data (concatenated streams too) with a memory limit.

    ``lzma.LZMAFile`` takes no memory limit; a crafted header could ask for a 1.5 GiB dictionary.
    """

    def __init__(self, raw: BinaryIO, memlimit: int) -> None:
        super().__init__()
        self._raw = raw
        self._memlimit = memlimit
        self._decoder = self._new_decoder()
        self._done = False

    def _new_decoder(self) -> lzma.LZMADecompressor:
        return lzma.LZMADecompressor(format=lzma.FORMAT_AUTO, memlimit=self._memlimit)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: WriteableBuffer) -> int:
        with memoryview(buffer) as view, view.cast("B") as out:
            while not self._done:
                if self._decoder.eof:
                    data = self._decoder.unused_data or self._raw.read(_CHUNK)
                    if not data:
                        self._done = True
                        break
                    self._decoder = self._new_decoder()
                elif self._decoder.needs_input:
                    data = self._raw.read(_CHUNK)
                    if not data:
                        raise EOFError("the compressed data ends before the end of its stream")
                else:
                    data = b""
                try:
                    chunk = self._decoder.decompress(data, max_length=len(out))
                except lzma.LZMAError as exc:
                    if "memory" in str(exc).lower():
                        raise DecoderMemoryLimit() from None
                    raise
                if chunk:
                    out[: len(chunk)] = chunk
                    return len(chunk)
            return 0


def _first_line(stream: IO[bytes]) -> str:
    stream.seek(0)
    text = stream.read(4096).decode("utf-8", "replace").strip()
    return " ".join(text.splitlines()[0].split()) if text else ""


@contextlib.contextmanager
def reader(raw: BinaryIO, compression: Compression, archive: Path, memlimit: int) -> Iterator[IO[bytes]]:
    """The decompressed content of ``raw`` (positioned at the start of the archive), streamed.

    A failing decompressor program gives DkmsError(7) with its message; when the body raises,
    the program is killed. The caller reads the stream to its end, so the whole input is checked.
    """
    if compression is Compression.NONE:
        yield raw
    elif compression is Compression.GZIP:
        with gzip.GzipFile(fileobj=raw, mode="rb") as stream:
            yield cast(IO[bytes], stream)
    elif compression is Compression.BZIP2:
        with bz2.BZ2File(raw, "rb") as bz:
            yield bz
    elif compression in (Compression.XZ, Compression.LZMA):
        with io.BufferedReader(_LzmaReader(raw, memlimit), buffer_size=_CHUNK) as xz:
            yield xz
    else:
        program = require_tool(compression, f"read {archive}")
        name = TOOLS[compression][0]
        argv = [program, "-d", "-c", "-q"]
        if compression is Compression.ZSTD:
            argv.append(f"--memory={max(1, memlimit >> 20)}MB")
        with tempfile.TemporaryFile() as errors:
            proc = runner.start(argv, stdin=raw, stdout=subprocess.PIPE, stderr=errors)
            assert proc.stdout is not None

            def failed(rc: int) -> DkmsError:
                detail = _first_line(errors) or f"exit status {rc}"
                return CorruptInput(
                    f"Cannot read archive {archive}: it is truncated or corrupt ({name}: {detail})."
                )

            try:
                yield proc.stdout
            except CorruptInput:
                # the data ended or broke because the program failed: its own message says why
                proc.stdout.close()
                rc = proc.wait()
                if rc > 0:
                    raise failed(rc) from None
                raise
            except BaseException:
                proc.kill()
                raise
            finally:
                proc.stdout.close()
                rc = proc.wait()
            if rc != 0:
                raise failed(rc)


@contextlib.contextmanager
def writer(raw: BinaryIO, compression: Compression, archive: Path) -> Iterator[IO[bytes]]:
    """A stream whose data ends up in ``raw`` compressed with ``compression``.

    Closing (leaving the block) flushes everything into ``raw``. A failing compressor program
    gives DkmsError(6) with its message; when the body raises, the program is killed.
    """
    if compression is Compression.NONE:
        yield raw
    elif compression is Compression.GZIP:
        # no file name and no time stamp in the gzip header: the same tree gives the same bytes
        with gzip.GzipFile(filename="", mode="wb", fileobj=raw, compresslevel=6, mtime=0) as gz:
            yield cast(IO[bytes], gz)
    elif compression is Compression.BZIP2:
        with bz2.BZ2File(raw, "wb", compresslevel=9) as bz:
            yield bz
    elif compression is Compression.XZ:
        # preset 4 (48 MiB of encoder memory) rather than tar -J's 6 (94 MiB): the archive of a
        # 100 MiB module must be written in under 64 MiB; the output is a few percent larger
        with lzma.LZMAFile(raw, "wb", format=lzma.FORMAT_XZ, check=lzma.CHECK_CRC64, preset=_XZ_PRESET) as xz:
            yield xz
    elif compression is Compression.LZMA:
        with lzma.LZMAFile(raw, "wb", format=lzma.FORMAT_ALONE, preset=_XZ_PRESET) as alone:
            yield alone
    else:
        program = require_tool(compression, f"write {archive}")
        name = TOOLS[compression][0]
        raw.flush()
        with tempfile.TemporaryFile() as errors:
            proc = runner.start([program, "-q", "-c"], stdin=subprocess.PIPE, stdout=raw, stderr=errors)
            assert proc.stdin is not None
            try:
                yield proc.stdin
                proc.stdin.close()
            except BrokenPipeError:
                proc.wait()
                detail = _first_line(errors) or "it stopped reading its input"
                raise DkmsError(6, f"Cannot write archive {archive}: {name} failed: {detail}.") from None
            except BaseException:
                proc.kill()
                raise
            finally:
                rc = proc.wait()
            if rc != 0:
                detail = _first_line(errors) or f"exit status {rc}"
                raise DkmsError(6, f"Cannot write archive {archive}: {name} failed: {detail}.")


def fsync(raw: BinaryIO) -> None:
    """Flush ``raw`` and its data to the disk."""
    raw.flush()
    os.fsync(raw.fileno())
