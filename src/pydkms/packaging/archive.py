"""DKMS archives: load hostile ones safely, write ones upstream dkms and GNU tar load.

This module knows the archive side of ``mktarball``, ``ldtarball`` and ``add FILE``; the actions
own the tree (what to put in, where to copy what came out). It uses nothing of pydkms but
:class:`~pydkms.errors.DkmsError` and the subprocess wrapper :mod:`pydkms.runner`.

Loading (ldtarball, add FILE, build/install FILE)::

    staging = Path(tempfile.mkdtemp(prefix="dkms.", dir=tmp_location))
    try:
        got = archive.extract(Path(file), staging)      # DkmsError(7) for a bad archive
        if got.layout is archive.Layout.SOURCE:         # a generic source tarball
            if got.dkms_conf is None: -> exit 3
            add like `add DIR` from got.source_dir
        else:                                           # upstream's mktarball layout
            if got.dkms_conf is None: -> exit 7
            copy got.source_tree (or make the binaries-only stub if it is None)
            for build in got.builds: copy build.path to $dkms_tree/m/v/<build.kernel>/<build.arch>
    finally:
        shutil.rmtree(staging)

Writing (mktarball)::

    with archive.ArchiveWriter(path) as out:            # nothing appears at ``path`` on error
        out.add_dir("dkms_main_tree")
        for K, A in kernels:
            out.add_tree(f"dkms_main_tree/{K}/{A}", T, exclude=is_private)
        out.add_tree("dkms_source_tree", source_link, exclude=is_private)   # link resolved
        # or, --binaries-only: out.add_bytes("dkms_binaries_only/PACKAGE_NAME", b"m\\n"), ...

``write(path, staging_root)`` archives a prepared staging directory the same way.

What extraction accepts, and why
--------------------------------
An archive is refused as a whole (DkmsError 7, one line naming the archive and the member) when a
member

- has an absolute name, a ``..`` component, or a NUL byte; or a name longer than 3840 bytes (it
  must still fit into PATH_MAX once copied under /usr/src) or deeper than 128 components;
- is a device, a FIFO, a contiguous file, a GNU sparse file (old GNU or PAX format), or of any
  type but file, directory, symbolic link and hard link (tar has no type for sockets: GNU tar
  leaves them out);
- has the setuid or setgid bit (on any member, directories too). The sticky bit grants nothing
  and is dropped; every other permission bit is kept;
- is a symbolic link whose target is absolute or, resolved from the link's directory through the
  archive's own symbolic links, leaves the archive. A link below ``dkms_source_tree/``,
  ``dkms_binaries_only/`` or ``dkms_main_tree/<K>/<A>/`` (of a generic tarball: below the
  directory of its dkms.conf) must stay below it, as that directory is copied elsewhere on its own;
  a chain of more than 40 links is refused too;
- is a hard link whose target is not an earlier regular file of the archive;
- would be written through a symbolic link (``a/b`` after a symlink ``a``), or needs an earlier
  file to be a directory;
- replaces an earlier member of another kind. Directories may repeat (the last one's mode and time
  win, as in GNU tar); a file or hard link may replace an earlier file or hard link (the later one
  wins, as in GNU tar); a symbolic link never replaces anything and is never replaced;
- goes beyond :class:`Limits` (zip bombs; the defaults, overridable for tests: 100 000 members,
  4 GiB of file data, 4.5 GiB of uncompressed tar stream, 1 MiB of PAX/GNU extended headers per
  member, 128 MiB of decoder memory, 5 000 000 steps to follow all symlinks).

A truncated or corrupt archive (also a bad header in the middle, a missing end-of-archive block,
or damage of the compressed data after the last member), a file that is not an archive and an
empty file are refused with exit 7 too. GNU and PAX long names and links are read.

Extraction never writes outside ``staging``: every file is created relative to a directory file
descriptor with ``O_NOFOLLOW``/``O_EXCL``, directories are opened without following symlinks, and
a member is never written through a symlink. Modes are applied with the setuid/setgid/sticky bits
cleared; modification times are kept. Owners in the archive are ignored: everything belongs to
the user extracting (root, for dkms). Upstream's archives, written by root, hold root anyway, and
restoring the owners of an archive from the network would hand files under /usr/src to whatever
uids it names. Directories that appear only as parents of members get mode 0755. After a refusal the caller removes
``staging``; nothing was written anywhere else.
"""

from __future__ import annotations

import contextlib
import contextvars
import enum
import lzma
import os
import re
import stat
import tarfile
import tempfile
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Callable, Dict, List, Optional, Tuple, Type, cast

from ..errors import DkmsError
from . import compression
from .compression import Compression

if TYPE_CHECKING:
    from typing_extensions import Self

KiB = 1 << 10
MiB = 1 << 20
GiB = 1 << 30

#: exit code of an archive that cannot or must not be loaded
EXIT_BAD_ARCHIVE = 7
#: exit code of an archive that cannot be written (mktarball)
EXIT_WRITE_FAILED = 6

#: longest member name accepted, in bytes (below PATH_MAX with room for /usr/src/<m>-<v>/)
MAX_NAME_BYTES = 3840
#: symbolic links followed at most while resolving one target, as the kernel does
MAX_SYMLINK_HOPS = 40
#: path components a member name may have (deeper trees make every member cost more to place)
MAX_DEPTH = 128
#: extended headers (PAX, GNU long name/link) allowed in front of one member
_MAX_HEADER_CHAIN = 16
#: bytes copied at a time
_CHUNK = 1 << 20

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_NEW_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


@dataclass(frozen=True)
class Limits:
    """How much one archive may make extraction do; beyond that it is refused (zip bombs).

    ``max_total_size`` counts the bytes of all regular files; ``max_stream_size`` the whole
    uncompressed tar stream (headers and padding too); ``max_header_size`` the extended headers
    in front of one member, and all global PAX headers together; ``max_decoder_memory`` what the
    xz/lzma/zstd decoders may allocate (xz -9 needs 65 MiB); ``max_symlink_steps`` the path
    components followed to check all symbolic links (so crafted chains of long targets cannot
    make the check run for hours).
    """

    max_members: int = 100_000
    max_total_size: int = 4 * GiB
    max_stream_size: int = 4 * GiB + 512 * MiB
    max_header_size: int = 1 * MiB
    max_decoder_memory: int = 128 * MiB
    max_symlink_steps: int = 5_000_000


DEFAULT_LIMITS = Limits()


class Layout(enum.Enum):
    """What an archive holds."""

    #: upstream's mktarball layout: a top-level ``dkms_main_tree/`` directory
    DKMS = "dkms"
    #: anything else: a generic source tarball (a directory with a dkms.conf somewhere)
    SOURCE = "source"


@dataclass(frozen=True)
class KernelBuild:
    """One ``dkms_main_tree/<kernel>/<arch>/`` directory of a DKMS archive."""

    kernel: str
    arch: str
    path: Path


@dataclass(frozen=True)
class ExtractedArchive:
    """What :func:`extract` put into the staging directory ``root``.

    For :attr:`Layout.DKMS`: ``builds`` in byte order of (kernel, arch); ``source_tree`` and
    ``binaries_only`` are the top-level directories when present; ``dkms_conf`` is
    ``dkms_source_tree/dkms.conf`` if it is a regular file, else ``dkms_binaries_only/dkms.conf``,
    else None. For :attr:`Layout.SOURCE`: ``dkms_conf`` is the shallowest regular file named
    dkms.conf (byte order among equals), or None; ``source_dir`` is its directory.
    """

    root: Path
    layout: Layout
    compression: Compression
    members: int
    total_size: int
    builds: Tuple[KernelBuild, ...] = ()
    source_tree: Optional[Path] = None
    binaries_only: Optional[Path] = None
    dkms_conf: Optional[Path] = None

    @property
    def source_dir(self) -> Optional[Path]:
        """The directory to add from: the one holding ``dkms_conf``, or None without one."""
        return self.dkms_conf.parent if self.dkms_conf is not None else None


# --- names -----------------------------------------------------------------------------------

#: kernel releases and architectures: what real ones use (6.1.0-56-amd64, 4.18.0-477.el8_8.x86_64,
#: 5.10.0+, x86_64), nothing a shell or a path would interpret
_RELEASE_NAME = re.compile(r"[A-Za-z0-9._+~-]+")


def _valid_release_name(name: str) -> bool:
    """A kernel release or architecture name safe to use as one path component and argument."""
    return (
        len(name) <= 255
        and _RELEASE_NAME.fullmatch(name) is not None
        and name not in (".", "..")
        and not name.startswith("-")
    )


def _shown(name: str, limit: int = 200) -> str:
    """``name`` quoted for a one-line message: undecodable bytes and control characters escaped."""
    try:
        text = name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:
        text = name.encode("utf-8", "backslashreplace").decode("ascii")
    text = "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)
    if len(text) > limit:
        text = text[:limit] + "…"
    return f"'{text}'"


def _size_text(n: int) -> str:
    for unit, size in (("GiB", GiB), ("MiB", MiB), ("KiB", KiB)):
        if n >= size and n % size == 0:
            return f"{n // size} {unit}"
    return f"{n} bytes"


# --- hooks into tarfile's reader ---------------------------------------------------------------


class _Refusal(Exception):
    """Raised from inside tarfile: the member must not be extracted."""

    def __init__(self, problem: str, member: Optional[str] = None) -> None:
        super().__init__(problem)
        self.problem = problem
        self.member = member


class _Ended(Exception):
    """Raised from inside tarfile: the tar stream ends wrongly (``kind`` says how)."""

    def __init__(self, kind: str) -> None:
        super().__init__(kind)
        self.kind = kind


@dataclass
class _ParseState:
    limits: Limits
    chain_count: int = 0
    chain_bytes: int = 0
    global_bytes: int = 0


_STATE: contextvars.ContextVar[_ParseState] = contextvars.ContextVar("pydkms_archive_state")

_EXTENDED_TYPES = (
    tarfile.GNUTYPE_LONGNAME,
    tarfile.GNUTYPE_LONGLINK,
    tarfile.XHDTYPE,
    tarfile.XGLTYPE,
    tarfile.SOLARIS_XHDTYPE,
)


# the header errors of tarfile that its type stubs do not list
_EOF_HEADER: Type[Exception] = vars(tarfile)["EOFHeaderError"]
_EMPTY_HEADER: Type[Exception] = vars(tarfile)["EmptyHeaderError"]
_TRUNCATED_HEADER: Type[Exception] = vars(tarfile)["TruncatedHeaderError"]


class _Member(tarfile.TarInfo):
    """A TarInfo that bounds what tarfile reads into memory and reports every bad header.

    tarfile reads a PAX or GNU long-name header wholly into memory and, in the middle of an
    archive, takes a damaged header for the end of it; these hooks refuse both.
    """

    @classmethod
    def frombuf(cls, buf: bytes | bytearray, encoding: str, errors: str) -> Self:
        try:
            return super().frombuf(buf, encoding, errors)
        except _EOF_HEADER:
            raise  # a block of zeros: the regular end of the archive
        except _EMPTY_HEADER:
            raise _Ended("no-end") from None
        except _TRUNCATED_HEADER:
            raise _Ended("truncated-header") from None
        except tarfile.HeaderError:
            raise _Ended("bad-header") from None

    def _proc_member(self, tar: tarfile.TarFile) -> tarfile.TarInfo:
        state = _STATE.get()
        limit = state.limits.max_header_size
        if self.type in _EXTENDED_TYPES:
            state.chain_count += 1
            state.chain_bytes += self.size
            if self.type == tarfile.XGLTYPE:
                state.global_bytes += self.size
            if (
                self.size < 0
                or state.chain_bytes > limit
                or state.global_bytes > limit
                or state.chain_count > _MAX_HEADER_CHAIN
            ):
                raise _Refusal(
                    f"is an extended header (PAX or GNU long name) beyond the limit of {_size_text(limit)}",
                    self.name,
                )
        elif self.type == tarfile.GNUTYPE_SPARSE:
            raise _Refusal("is a sparse file, which pydkms does not extract", self.name)
        else:
            state.chain_count = 0
            state.chain_bytes = 0
        return super()._proc_member(tar)  # type: ignore[misc, no-any-return]

    # GNU sparse files described in PAX headers (formats 0.0, 0.1 and 1.0)
    def _proc_gnusparse_00(self, next: tarfile.TarInfo, *args: object) -> None:
        raise _Refusal("is a sparse file, which pydkms does not extract", next.name)

    def _proc_gnusparse_01(self, next: tarfile.TarInfo, *args: object) -> None:
        raise _Refusal("is a sparse file, which pydkms does not extract", next.name)

    def _proc_gnusparse_10(self, next: tarfile.TarInfo, *args: object) -> None:
        raise _Refusal("is a sparse file, which pydkms does not extract", next.name)


class _StreamTooLong(Exception):
    """The uncompressed stream is longer than the limit."""


class _Meter:
    """Counts the uncompressed bytes tarfile reads and stops at the limit."""

    def __init__(self, stream: IO[bytes], limit: int) -> None:
        self._stream = stream
        self.limit = limit
        self.count = 0

    def read(self, size: int = _CHUNK) -> bytes:
        data = self._stream.read(size if size >= 0 else _CHUNK)
        self.count += len(data)
        if self.count > self.limit:
            raise _StreamTooLong()
        return data


#: what reading a broken archive can raise from tarfile and the decompressors
_READ_ERRORS = (
    tarfile.TarError,
    OSError,
    EOFError,
    zlib.error,
    lzma.LZMAError,
    ValueError,
    OverflowError,
    RecursionError,
    UnicodeError,
)

_REFUSED_TYPES = {
    tarfile.CHRTYPE: "is a character device",
    tarfile.BLKTYPE: "is a block device",
    tarfile.FIFOTYPE: "is a FIFO",
    tarfile.CONTTYPE: "is a contiguous file (type 7), which pydkms does not extract",
}


# --- extraction --------------------------------------------------------------------------------


class _Kind(enum.Enum):
    DIR = "directory"
    FILE = "file"
    SYMLINK = "symbolic link"


@dataclass
class _Node:
    kind: _Kind
    target: str = ""


def _join(comps: List[str]) -> str:
    return "/".join(comps)


def _set_times(path: Any, mtime: Optional[float], **kw: Any) -> None:
    """Set the modification time (access time: now); an impossible time in the archive is ignored."""
    if mtime is None:
        return
    try:
        os.utime(path, ns=(time.time_ns(), int(mtime * 1_000_000_000)), **kw)
    except (OverflowError, ValueError, OSError):
        pass


class _Extractor:
    """The state of one extraction: what exists in staging, and the counts against the limits."""

    def __init__(self, archive: Path, staging: Path, limits: Limits, root_fd: int) -> None:
        self.archive = archive
        self.staging = staging
        self.limits = limits
        self.root_fd = root_fd
        self.nodes: Dict[str, _Node] = {}
        #: final (mode, mtime) of every directory, applied once all members are in
        self.dir_attrs: Dict[str, Tuple[int, Optional[float]]] = {}
        self.symlinks: List[str] = []
        self.members = 0
        self.total = 0
        #: name of the member being extracted (the last one, after the end)
        self.current: Optional[str] = None
        self._parent: Optional[Tuple[str, int]] = None

    # messages

    def refuse(self, problem: str, member: Optional[str] = None) -> DkmsError:
        name = member if member is not None else self.current
        who = f"member {_shown(name)} " if name is not None else "it "
        return DkmsError(EXIT_BAD_ARCHIVE, f"Refusing archive {self.archive}: {who}{problem}.")

    def corrupt(self, detail: str) -> DkmsError:
        where = f", after member {_shown(self.current)}" if self.current is not None else ""
        return compression.CorruptInput(
            f"Cannot read archive {self.archive}: it is truncated or corrupt ({detail}{where})."
        )

    def ended(self, kind: str) -> DkmsError:
        if self.current is None:
            if kind == "no-end":
                return compression.CorruptInput(f"Cannot read archive {self.archive}: it holds no tar data.")
            return compression.CorruptInput(f"Cannot read archive {self.archive}: it is not a tar archive.")
        detail = {
            "no-end": "it ends without an end-of-archive block",
            "truncated-header": "it ends inside a header",
            "bad-header": "invalid header",
        }[kind]
        return self.corrupt(detail)

    def read(self, call: Callable[..., Any], *args: Any) -> Any:
        """Run a reading step of tarfile or the decompressor, turning its failures into DkmsError(7)."""
        try:
            return call(*args)
        except _Refusal as r:
            raise self.refuse(r.problem, r.member) from None
        except _Ended as e:
            raise self.ended(e.kind) from None
        except compression.DecoderMemoryLimit:
            raise DkmsError(
                EXIT_BAD_ARCHIVE,
                f"Refusing archive {self.archive}: decompressing it needs more than the limit of "
                f"{_size_text(self.limits.max_decoder_memory)} of memory.",
            ) from None
        except _StreamTooLong:
            raise self.refuse(
                f"makes the uncompressed archive longer than the limit of {_size_text(self.limits.max_stream_size)}"
            ) from None
        except EOFError:
            raise self.corrupt("the compressed data ends early") from None
        except _READ_ERRORS as exc:
            detail = " ".join(str(exc).split()) or type(exc).__name__
            raise self.corrupt(detail) from None

    # reading the stream

    def run(self, meter: _Meter) -> None:
        tar: tarfile.TarFile = self.read(
            lambda: tarfile.open(  # noqa: SIM115 (closed with the stream)
                fileobj=cast(IO[bytes], meter),
                mode="r|",
                tarinfo=_Member,
                encoding="utf-8",
                errors="surrogateescape",
            )
        )
        while True:
            member: Optional[tarfile.TarInfo] = self.read(tar.next)
            if member is None:
                break
            # stream mode keeps every TarInfo; the extractor needs only the current one
            cast(Any, tar).members.clear()
            self.current = member.name
            try:
                self.add(tar, member)
            except OSError as exc:
                raise DkmsError(
                    EXIT_BAD_ARCHIVE,
                    f"Cannot extract archive {self.archive}: member {_shown(member.name)}: "
                    f"{exc.strerror or exc}.",
                ) from None
        # the rest (padding, the end of the compressed data) must be intact too
        while self.read(meter.read):
            pass

    def split(self, name: str, link: bool = False) -> List[str]:
        """The components of a member name (``link``: of a hard link's target)."""
        subject = "is a hard link whose target" if link else "has a name that"
        if "\0" in name:
            raise self.refuse(f"{subject} has a NUL byte")
        if not name:
            raise self.refuse(f"{subject} is empty")
        if len(name.encode("utf-8", "surrogateescape")) > MAX_NAME_BYTES:
            raise self.refuse(f"{subject} is longer than {MAX_NAME_BYTES} bytes")
        parts = name.split("/")
        if link and (name.startswith("/") or ".." in parts):
            raise self.refuse(f"is a hard link pointing outside the archive (to {_shown(name)})")
        if name.startswith("/"):
            raise self.refuse("has an absolute path")
        if ".." in parts:
            raise self.refuse("has a '..' component")
        comps = [p for p in parts if p not in ("", ".")]
        if len(comps) > MAX_DEPTH:
            raise self.refuse(f"{subject} has more than {MAX_DEPTH} components")
        return comps

    def add(self, tar: tarfile.TarFile, m: tarfile.TarInfo) -> None:
        self.members += 1
        if self.members > self.limits.max_members:
            raise self.refuse(f"is one too many: the limit is {self.limits.max_members} members")
        comps = self.split(m.name)
        mode = m.mode & 0o7777
        if mode & stat.S_ISUID:
            raise self.refuse(f"has the setuid bit set (mode {mode:04o})")
        if mode & stat.S_ISGID:
            raise self.refuse(f"has the setgid bit set (mode {mode:04o})")
        mode &= 0o777
        kind = m.type
        if kind == tarfile.DIRTYPE:
            self.make_dir(comps, mode, m.mtime)
            return
        if not comps:
            raise self.refuse("names the top directory of the archive but is not a directory")
        if kind in (tarfile.REGTYPE, tarfile.AREGTYPE):
            self.make_file(comps, m, tar, mode)
        elif kind == tarfile.SYMTYPE:
            self.make_symlink(comps, m.linkname, m.mtime)
        elif kind == tarfile.LNKTYPE:
            self.make_hardlink(comps, m.linkname)
        elif kind in _REFUSED_TYPES:
            raise self.refuse(_REFUSED_TYPES[kind])
        else:
            raise self.refuse(f"has the unsupported type {_shown(kind.decode('latin-1'))}")

    # the tree in staging

    def walk(self, comps: List[str], create: bool) -> int:
        """A new descriptor of directory ``comps`` (created as needed), never through a symlink."""
        fd = os.dup(self.root_fd)
        try:
            for i, comp in enumerate(comps):
                key = _join(comps[: i + 1])
                node = self.nodes.get(key)
                if node is None:
                    if not create:
                        raise FileNotFoundError(2, "missing directory", key)
                    os.mkdir(comp, 0o700, dir_fd=fd)
                    self.nodes[key] = _Node(_Kind.DIR)
                    self.dir_attrs[key] = (0o755, None)
                elif node.kind is _Kind.SYMLINK:
                    raise self.refuse(f"would be extracted through the symbolic link {_shown(key)}")
                elif node.kind is not _Kind.DIR:
                    raise self.refuse(
                        f"needs {_shown(key)} to be a directory, but an earlier member is a file"
                    )
                inner = os.open(comp, _DIR_FLAGS, dir_fd=fd)
                os.close(fd)
                fd = inner
        except BaseException:
            os.close(fd)
            raise
        return fd

    def parent_fd(self, comps: List[str]) -> int:
        """The descriptor of the directory holding ``comps`` (kept open for the next member)."""
        key = _join(comps[:-1])
        if self._parent is not None and self._parent[0] == key:
            return self._parent[1]
        fd = self.walk(comps[:-1], create=True)
        self.close()
        self._parent = (key, fd)
        return fd

    def close(self) -> None:
        if self._parent is not None:
            os.close(self._parent[1])
            self._parent = None

    def clash(self, comps: List[str], what: str, allowed: Tuple[_Kind, ...]) -> Optional[_Node]:
        """The node already at ``comps``; refuse if a member that is ``what`` may not replace it."""
        node = self.nodes.get(_join(comps))
        if node is not None and node.kind not in allowed:
            raise self.refuse(f"is {what}, but an earlier member is a {node.kind.value} of that name")
        return node

    def make_dir(self, comps: List[str], mode: int, mtime: float) -> None:
        if not comps:
            return  # the top directory: staging's own mode and time stay
        key = _join(comps)
        if self.clash(comps, "a directory", (_Kind.DIR,)) is None:
            os.mkdir(comps[-1], 0o700, dir_fd=self.parent_fd(comps))
            self.nodes[key] = _Node(_Kind.DIR)
        self.dir_attrs[key] = (mode, mtime)

    def make_file(self, comps: List[str], m: tarfile.TarInfo, tar: tarfile.TarFile, mode: int) -> None:
        if m.size < 0:
            raise self.corrupt(f"member {_shown(m.name)} has a negative size")
        self.total += m.size
        if self.total > self.limits.max_total_size:
            raise self.refuse(
                f"makes the files add up to more than the limit of {_size_text(self.limits.max_total_size)}"
            )
        existing = self.clash(comps, "a file", (_Kind.FILE,))
        parent = self.parent_fd(comps)
        if existing is not None:
            os.unlink(comps[-1], dir_fd=parent)
        fd = os.open(comps[-1], _NEW_FILE_FLAGS, 0o600, dir_fd=parent)
        self.nodes[_join(comps)] = _Node(_Kind.FILE)
        try:
            source = self.read(tar.extractfile, m)
            left = m.size
            while left > 0:
                chunk: bytes = self.read(source.read, min(_CHUNK, left))
                if not chunk:
                    raise self.corrupt("unexpected end of data")
                left -= len(chunk)
                view = memoryview(chunk)
                while view:
                    view = view[os.write(fd, view) :]
            os.fchmod(fd, mode)
            _set_times(fd, m.mtime)
        finally:
            os.close(fd)

    def make_symlink(self, comps: List[str], target: str, mtime: float) -> None:
        if not target:
            raise self.refuse("is a symbolic link with an empty target")
        if "\0" in target:
            raise self.refuse("is a symbolic link whose target has a NUL byte")
        if target.startswith("/"):
            raise self.refuse(
                f"is a symbolic link to the absolute path {_shown(target)}, outside the archive"
            )
        if len(target.encode("utf-8", "surrogateescape")) > MAX_NAME_BYTES:
            raise self.refuse(f"is a symbolic link with a target longer than {MAX_NAME_BYTES} bytes")
        if not _lexically_inside(comps[:-1], target):
            raise self.refuse(f"is a symbolic link pointing outside the archive (to {_shown(target)})")
        self.clash(comps, "a symbolic link", ())
        parent = self.parent_fd(comps)
        os.symlink(target, comps[-1], dir_fd=parent)
        key = _join(comps)
        self.nodes[key] = _Node(_Kind.SYMLINK, target)
        self.symlinks.append(key)
        _set_times(comps[-1], mtime, dir_fd=parent, follow_symlinks=False)

    def make_hardlink(self, comps: List[str], linkname: str) -> None:
        tcomps = self.split(linkname, link=True)
        tkey = _join(tcomps)
        target = self.nodes.get(tkey) if tcomps else _Node(_Kind.DIR)
        if target is None:
            raise self.refuse(
                f"is a hard link to {_shown(linkname)}, which is not an earlier file of the archive"
            )
        if target.kind is not _Kind.FILE:
            raise self.refuse(f"is a hard link to {_shown(linkname)}, which is a {target.kind.value}")
        if tkey == _join(comps):
            raise self.refuse("is a hard link to itself")
        existing = self.clash(comps, "a hard link", (_Kind.FILE,))
        parent = self.parent_fd(comps)
        if existing is not None:
            os.unlink(comps[-1], dir_fd=parent)
        source_dir = self.walk(tcomps[:-1], create=False)
        try:
            os.link(tcomps[-1], comps[-1], src_dir_fd=source_dir, dst_dir_fd=parent, follow_symlinks=False)
        finally:
            os.close(source_dir)
        self.nodes[_join(comps)] = _Node(_Kind.FILE)

    # after the last member

    def finish(self, used: Compression) -> ExtractedArchive:
        self.close()
        self.current = None
        result = self.layout(used)
        self.check_symlinks(result)
        for key in sorted(self.dir_attrs, key=lambda k: -k.count("/")):
            mode, mtime = self.dir_attrs[key]
            fd = self.walk(key.split("/"), create=False)
            try:
                os.fchmod(fd, mode)
                _set_times(fd, mtime)
            finally:
                os.close(fd)
        return result

    def kind_of(self, key: str) -> Optional[_Kind]:
        node = self.nodes.get(key)
        return node.kind if node is not None else None

    def path(self, key: str) -> Path:
        return self.staging.joinpath(*key.split("/"))

    def layout(self, used: Compression) -> ExtractedArchive:
        common: Dict[str, Any] = {
            "root": self.staging,
            "compression": used,
            "members": self.members,
            "total_size": self.total,
        }
        main = self.kind_of("dkms_main_tree")
        if main is None:
            confs = [
                k for k, n in self.nodes.items() if n.kind is _Kind.FILE and k.split("/")[-1] == "dkms.conf"
            ]
            conf = min(
                confs, key=lambda k: (k.count("/"), k.encode("utf-8", "surrogateescape")), default=None
            )
            return ExtractedArchive(
                layout=Layout.SOURCE, dkms_conf=self.path(conf) if conf is not None else None, **common
            )
        for top in ("dkms_main_tree", "dkms_source_tree", "dkms_binaries_only"):
            if self.kind_of(top) not in (None, _Kind.DIR):
                raise self.refuse("is not a directory", top)
        builds: List[KernelBuild] = []
        for key, node in self.nodes.items():
            parts = key.split("/")
            if parts[0] != "dkms_main_tree" or len(parts) not in (2, 3):
                continue
            what = "kernel release" if len(parts) == 2 else "architecture"
            if node.kind is not _Kind.DIR:
                raise self.refuse(
                    "is not a directory (dkms_main_tree/<kernel>/<arch>/ holds the builds)", key
                )
            if not _valid_release_name(parts[-1]):
                raise self.refuse(f"does not have a valid {what} name", key)
            if len(parts) == 3:
                builds.append(KernelBuild(parts[1], parts[2], self.path(key)))
        builds.sort(key=lambda b: (b.kernel.encode(), b.arch.encode()))
        conf_path: Optional[Path] = None
        for candidate in ("dkms_source_tree/dkms.conf", "dkms_binaries_only/dkms.conf"):
            if self.kind_of(candidate) is _Kind.FILE:
                conf_path = self.path(candidate)
                break
        return ExtractedArchive(
            layout=Layout.DKMS,
            builds=tuple(builds),
            source_tree=self.path("dkms_source_tree") if self.kind_of("dkms_source_tree") else None,
            binaries_only=self.path("dkms_binaries_only") if self.kind_of("dkms_binaries_only") else None,
            dkms_conf=conf_path,
            **common,
        )

    def check_symlinks(self, result: ExtractedArchive) -> None:
        """Refuse a symlink that leads out of the archive, or out of the directory it is copied with."""
        graph = _LinkGraph(self.nodes, self.limits.max_symlink_steps)
        source_dir: List[str] = []
        if result.layout is Layout.SOURCE and result.source_dir is not None:
            source_dir = list(result.source_dir.relative_to(self.staging).parts)
        for key in self.symlinks:
            parts = key.split("/")
            floor = 0
            if result.layout is Layout.DKMS:
                if parts[0] in ("dkms_source_tree", "dkms_binaries_only") and len(parts) > 1:
                    floor = 1
                elif parts[0] == "dkms_main_tree" and len(parts) > 3:
                    floor = 3
            elif source_dir and parts[: len(source_dir)] == source_dir and len(parts) > len(source_dir):
                floor = len(source_dir)
            target = self.nodes[key].target
            graph.hops = 0
            try:
                inside = graph.follow(graph.ids[_join(parts[:-1])], 0, target, floor) is not None
            except _TooManySteps:
                raise self.refuse(
                    f"is a symbolic link beyond the limit of {self.limits.max_symlink_steps} steps "
                    "for following the archive's symbolic links",
                    key,
                ) from None
            if not inside:
                if graph.hops > MAX_SYMLINK_HOPS:
                    problem = (
                        f"is a symbolic link that goes through more than {MAX_SYMLINK_HOPS} symbolic links"
                    )
                elif floor:
                    unit = _join(parts[:floor]) + "/"
                    problem = (
                        f"is a symbolic link pointing outside {_shown(unit)}, the directory it is loaded with "
                        f"(to {_shown(target)})"
                    )
                else:
                    problem = f"is a symbolic link pointing outside the archive (to {_shown(target)})"
                raise self.refuse(problem, key)


class _TooManySteps(Exception):
    """Following the archive's symlinks takes more steps than allowed."""


class _LinkGraph:
    """The tree in staging as numbered nodes, to follow symlink targets at O(1) per step.

    Lexical resolution is not enough: with ``a -> .``, the target ``a/..`` is lexically the top
    directory but really its parent. So targets are followed as the kernel would, through the
    archive's own symlinks. A position is a node plus a count of components below it that do not
    exist (followed lexically from there: the kernel would fail on them, so that is safe).
    """

    def __init__(self, nodes: Dict[str, _Node], max_steps: int) -> None:
        self.max_steps = max_steps
        self.ids: Dict[str, int] = {"": 0}
        self.parent = [0]
        self.depth = [0]
        self.link: List[Optional[str]] = [None]
        self.children: Dict[Tuple[int, str], int] = {}
        self.hops = 0
        self.steps = 0
        for key in sorted(nodes, key=lambda k: k.count("/")):
            head, _, name = key.rpartition("/")
            up = self.ids[head]
            me = len(self.parent)
            self.ids[key] = me
            self.parent.append(up)
            self.depth.append(self.depth[up] + 1)
            node = nodes[key]
            self.link.append(node.target if node.kind is _Kind.SYMLINK else None)
            self.children[(up, name)] = me

    def follow(self, here: int, missing: int, target: str, floor: int) -> Optional[Tuple[int, int]]:
        """Where ``target`` leads from position (``here``, ``missing``); None if it leaves the
        top ``floor`` levels (or the archive), is absolute, or goes through too many symlinks."""
        if target.startswith("/"):
            return None
        for comp in target.split("/"):
            self.steps += 1
            if self.steps > self.max_steps:
                raise _TooManySteps()
            if comp in ("", "."):
                continue
            if comp == "..":
                if self.depth[here] + missing <= floor:
                    return None
                if missing:
                    missing -= 1
                else:
                    here = self.parent[here]
                continue
            if missing:
                missing += 1
                continue
            child = self.children.get((here, comp))
            if child is None:
                missing = 1
                continue
            link = self.link[child]
            if link is None:
                here = child
                continue
            self.hops += 1
            if self.hops > MAX_SYMLINK_HOPS:
                return None
            led = self.follow(here, 0, link, floor)
            if led is None:
                return None
            here, missing = led
        return here, missing


def _lexically_inside(start: List[str], target: str) -> bool:
    depth = len(start)
    for comp in target.split("/"):
        if comp == "..":
            depth -= 1
            if depth < 0:
                return False
        elif comp not in ("", "."):
            depth += 1
    return True


def _open_staging(staging: Path) -> int:
    try:
        fd = os.open(staging, _DIR_FLAGS)
    except OSError as exc:
        raise DkmsError(1, f"Cannot use {staging} to extract an archive: {exc.strerror}.") from None
    if os.listdir(fd):
        os.close(fd)
        raise DkmsError(1, f"Cannot use {staging} to extract an archive: it is not empty.")
    return fd


def _open_archive(archive: Path) -> int:
    try:
        fd = os.open(archive, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise DkmsError(EXIT_BAD_ARCHIVE, f"Cannot read archive {archive}: {exc.strerror}.") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise DkmsError(EXIT_BAD_ARCHIVE, f"Cannot read archive {archive}: it is not a regular file.")
    return fd


def extract(archive: Path, staging: Path, limits: Limits = DEFAULT_LIMITS) -> ExtractedArchive:
    """Extract ``archive`` into the empty directory ``staging``, in one streaming pass.

    The compression is recognised from the content. A hostile, broken or oversized archive gives
    DkmsError(7) naming it and the member (see the module docstring); the caller then removes
    ``staging``. A missing zstd/lz4 program gives DkmsError(1) naming its package.
    """
    archive = Path(archive)
    staging = Path(staging)
    root_fd = _open_staging(staging)
    try:
        with open(_open_archive(archive), "rb") as raw:
            head = os.pread(raw.fileno(), 512, 0)
            if not head:
                raise DkmsError(EXIT_BAD_ARCHIVE, f"Cannot read archive {archive}: the file is empty.")
            used = compression.detect(head)
            if used is None:
                raise DkmsError(
                    EXIT_BAD_ARCHIVE,
                    f"Cannot read archive {archive}: it is not a tar archive (pydkms reads tar archives, "
                    "uncompressed or compressed with gzip, bzip2, xz, lzma, zstd or lz4).",
                )
            extractor = _Extractor(archive, staging, limits, root_fd)
            token = _STATE.set(_ParseState(limits))
            try:
                with compression.reader(raw, used, archive, limits.max_decoder_memory) as stream:
                    extractor.run(_Meter(stream, limits.max_stream_size))
            finally:
                _STATE.reset(token)
                extractor.close()
            return extractor.finish(used)
    finally:
        os.close(root_fd)


# --- writing -----------------------------------------------------------------------------------


@dataclass
class _Entry:
    kind: _Kind
    mode: int
    mtime: int
    path: Optional[str] = None
    data: Optional[bytes] = None
    target: str = ""


def _arcname(name: str) -> Tuple[str, ...]:
    parts = tuple(p for p in name.split("/") if p not in ("", "."))
    if not parts or name.startswith("/") or ".." in parts or "\0" in name:
        raise ValueError(f"not a relative member name: {name!r}")
    return parts


@dataclass
class ArchiveWriter:
    """Collects trees and files, then writes them as one archive in a single atomic step.

    Members are named ``./<name>``, sorted by name component by component (the output depends
    only on the trees); modes (without setuid/setgid/sticky, which the loader refuses) and
    modification times are kept, owners are recorded as root:root (0:0), inner symlinks stay
    symlinks and hard links stay hard links. The format is PAX, which GNU tar and upstream dkms
    read; the compression follows the file name (:func:`compression.for_name`). The archive is
    written to a temporary file next to ``archive``, synced and renamed into place when the
    ``with`` block ends without an error (or on :meth:`commit`); write failures give
    DkmsError(6), a missing zstd/lz4 program DkmsError(1).
    """

    archive: Path
    #: time stamp of the parent directories that were not added explicitly
    mtime: int = field(default_factory=lambda: int(time.time()))
    _entries: Dict[Tuple[str, ...], _Entry] = field(default_factory=dict, init=False)

    def __post_init__(self) -> None:
        self.archive = Path(self.archive)

    def __enter__(self) -> ArchiveWriter:
        return self

    def __exit__(
        self, kind: Optional[Type[BaseException]], value: Optional[BaseException], tb: object
    ) -> None:
        if kind is None:
            self.commit()

    def _failed(self, what: object, exc: OSError) -> DkmsError:
        return DkmsError(
            EXIT_WRITE_FAILED, f"Cannot write archive {self.archive}: {what}: {exc.strerror or exc}."
        )

    def _put(self, name: Tuple[str, ...], entry: _Entry) -> None:
        if name in self._entries:
            raise ValueError(f"{'/'.join(name)} is added twice to {self.archive}")
        self._entries[name] = entry

    def add_dir(self, name: str, mode: int = 0o755, mtime: Optional[int] = None) -> None:
        """Add an (empty) directory ``name``."""
        self._put(_arcname(name), _Entry(_Kind.DIR, mode & 0o777, self.mtime if mtime is None else mtime))

    def add_bytes(self, name: str, data: bytes, mode: int = 0o644, mtime: Optional[int] = None) -> None:
        """Add a regular file ``name`` holding ``data``."""
        self._put(
            _arcname(name),
            _Entry(_Kind.FILE, mode & 0o777, self.mtime if mtime is None else mtime, data=data),
        )

    def add_tree(
        self,
        name: str,
        source: Path,
        *,
        follow: bool = True,
        exclude: Optional[Callable[[str], bool]] = None,
    ) -> None:
        """Add ``source`` (a directory with everything below it, or a file) as ``name``.

        ``follow`` resolves ``source`` itself if it is a symlink (symlinks inside stay links).
        ``exclude`` gets each path relative to ``source`` ("a/b") and skips it when true.
        """
        top = _arcname(name)
        try:
            st = os.stat(source) if follow else os.lstat(source)
        except OSError as exc:
            raise self._failed(source, exc) from None
        pending: List[Tuple[Tuple[str, ...], str, os.stat_result, str]] = [(top, os.fspath(source), st, "")]
        while pending:
            arc, path, st, rel = pending.pop()
            if stat.S_ISDIR(st.st_mode):
                self._put(arc, _Entry(_Kind.DIR, st.st_mode & 0o777, int(st.st_mtime)))
                try:
                    with os.scandir(path) as entries:
                        children = [(e.name, e.path, e.stat(follow_symlinks=False)) for e in entries]
                except OSError as exc:
                    raise self._failed(path, exc) from None
                for child, child_path, child_st in children:
                    child_rel = f"{rel}/{child}" if rel else child
                    if exclude is None or not exclude(child_rel):
                        pending.append(((*arc, child), child_path, child_st, child_rel))
            elif stat.S_ISREG(st.st_mode):
                self._put(arc, _Entry(_Kind.FILE, st.st_mode & 0o777, int(st.st_mtime), path=path))
            elif stat.S_ISLNK(st.st_mode):
                try:
                    target = os.readlink(path)
                except OSError as exc:
                    raise self._failed(path, exc) from None
                self._put(arc, _Entry(_Kind.SYMLINK, 0o777, int(st.st_mtime), target=target))
            else:
                raise DkmsError(
                    EXIT_WRITE_FAILED,
                    f"Cannot write archive {self.archive}: {path} is not a file, directory or symbolic link.",
                )

    def _complete(self) -> List[Tuple[Tuple[str, ...], _Entry]]:
        """Every entry with its parent directories, sorted; a non-directory parent is an error."""
        for name in list(self._entries):
            for depth in range(1, len(name)):
                parent = name[:depth]
                entry = self._entries.get(parent)
                if entry is None:
                    self._entries[parent] = _Entry(_Kind.DIR, 0o755, self.mtime)
                elif entry.kind is not _Kind.DIR:
                    raise ValueError(
                        f"{'/'.join(parent)} is not a directory but has members in {self.archive}"
                    )
        return sorted(
            self._entries.items(), key=lambda item: [c.encode("utf-8", "surrogateescape") for c in item[0]]
        )

    def commit(self) -> Path:
        """Write the archive now (atomically) and return its path."""
        entries = self._complete()
        used = compression.for_name(self.archive.name)
        directory = self.archive.parent
        try:
            fd, temp = tempfile.mkstemp(prefix=f".{self.archive.name}.", suffix=".part", dir=directory)
        except OSError as exc:
            raise self._failed(directory, exc) from None
        done = False
        try:
            with open(fd, "wb") as raw:
                with compression.writer(raw, used, self.archive) as stream:
                    self._write_tar(stream, entries)
                os.fchmod(raw.fileno(), 0o644)
                compression.fsync(raw)
            os.replace(temp, self.archive)
            done = True
            _fsync_dir(directory)
        except OSError as exc:
            raise self._failed(self.archive, exc) from None
        finally:
            if not done:
                with contextlib.suppress(OSError):
                    os.unlink(temp)
        return self.archive

    def _write_tar(self, stream: IO[bytes], entries: List[Tuple[Tuple[str, ...], _Entry]]) -> None:
        links: Dict[Tuple[int, int], str] = {}
        with tarfile.open(
            fileobj=stream, mode="w|", format=tarfile.PAX_FORMAT, encoding="utf-8", errors="surrogateescape"
        ) as tar:
            for name, entry in entries:
                info = tarfile.TarInfo("./" + "/".join(name))
                info.mode, info.mtime = entry.mode, entry.mtime
                info.uid = info.gid = 0
                info.uname = info.gname = "root"
                if entry.kind is _Kind.DIR:
                    info.type = tarfile.DIRTYPE
                    tar.addfile(info)
                elif entry.kind is _Kind.SYMLINK:
                    info.type, info.linkname = tarfile.SYMTYPE, entry.target
                    tar.addfile(info)
                elif entry.data is not None:
                    info.size = len(entry.data)
                    tar.addfile(info, _BytesReader(entry.data))
                else:
                    assert entry.path is not None
                    self._write_file(tar, info, entry.path, links)

    def _write_file(
        self, tar: tarfile.TarFile, info: tarfile.TarInfo, path: str, links: Dict[Any, str]
    ) -> None:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError as exc:
            raise self._failed(path, exc) from None
        with open(fd, "rb") as source:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise DkmsError(
                    EXIT_WRITE_FAILED,
                    f"Cannot write archive {self.archive}: {path} changed while being archived.",
                )
            info.mode, info.mtime = st.st_mode & 0o777, int(st.st_mtime)
            if st.st_nlink > 1:
                inode = (st.st_dev, st.st_ino)
                if inode in links:
                    info.type, info.linkname = tarfile.LNKTYPE, links[inode]
                    tar.addfile(info)
                    return
                links[inode] = info.name
            info.size = st.st_size
            tar.addfile(info, source)


class _BytesReader:
    """The minimal file object tarfile.addfile reads from."""

    def __init__(self, data: bytes) -> None:
        self._view = memoryview(data)

    def read(self, size: int = -1) -> bytes:
        chunk = self._view[:size] if size >= 0 else self._view
        self._view = self._view[len(chunk) :]
        return bytes(chunk)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write(archive: Path, staging_root: Path) -> Path:
    """Archive everything in ``staging_root`` as ``./<name>`` members (see :class:`ArchiveWriter`)."""
    writer = ArchiveWriter(Path(archive))
    try:
        names = sorted(os.listdir(staging_root))
    except OSError as exc:
        raise DkmsError(
            EXIT_WRITE_FAILED, f"Cannot write archive {archive}: {staging_root}: {exc.strerror}."
        ) from None
    for name in names:
        writer.add_tree(name, Path(staging_root) / name, follow=False)
    return writer.commit()
