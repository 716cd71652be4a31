"""The DKMS tree on disk (spec/tree.md): paths, state predicates, enumeration.

This is the only module that knows where things live under ``$dkms_tree``, ``$source_tree`` and
``$install_tree``. Every state question is answered from the filesystem, tolerating concurrent
modification: a path that vanishes between two checks counts as absent.

Names never lead out of the trees (:mod:`pydkms.names`): a path method given an invalid module,
version, kernel or arch raises DkmsError, a predicate answers "no", a listing of an invalid
module or version is empty, and the listings skip a directory whose name is invalid, reporting
its path through ``report``.
"""

from __future__ import annotations

import fnmatch
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, List, Optional, Tuple

from .names import (
    check_kernel_name,
    check_module_name,
    check_target,
    kernel_name_problem,
    name_problem,
    printable,
)
from .version import version_sort_key

#: directories under $dkms_tree/m/v that are never kernel builds (tree.md §4)
RESERVED_VERSION_ENTRIES = frozenset(
    {"source", "build", "tarball", "driver_disk", "rpm", "deb", "dsc", "bmdeb"}
)

INSTALL_FINGERPRINT = ".pydkms-install.json"
BINARIES_ONLY_MARKER = ".pydkms-binaries-only"
LOCK_FILE = ".lock"


def _sorted_bytes(names: List[str]) -> List[str]:
    return sorted(names, key=os.fsencode)


def _listdir(path: Path | str) -> List[str]:
    try:
        return os.listdir(path)
    except OSError:
        return []


def _valid_mv(m: str, v: str) -> bool:
    return name_problem(m) is None and name_problem(v) is None


def _valid_target(k: str, a: str) -> bool:
    return kernel_name_problem(k) is None and kernel_name_problem(a) is None


def _is_dir(path: Path) -> bool:
    try:
        return path.is_dir()
    except OSError:
        return False


@dataclass(frozen=True)
class Target:
    """One (kernel, arch) pair."""

    kernel: str
    arch: str

    def __str__(self) -> str:
        return f"{self.kernel} ({self.arch})"


@dataclass(frozen=True)
class Tree:
    """The three roots and every path and predicate derived from them."""

    dkms_tree: Path
    source_tree: Path
    install_tree: Path
    #: where the listings report a directory they skip because its name is invalid (a warning)
    report: Optional[Callable[[str], None]] = field(default=None, compare=False, repr=False)

    # ---- paths (every name checked first) -----------------------------------------------------
    def module_dir(self, m: str) -> Path:
        check_module_name(m, "module name")
        return self.dkms_tree / m

    def version_dir(self, m: str, v: str) -> Path:
        check_module_name(v, "module version")
        return self.module_dir(m) / v

    def source_link(self, m: str, v: str) -> Path:
        return self.version_dir(m, v) / "source"

    def build_dir(self, m: str, v: str) -> Path:
        return self.version_dir(m, v) / "build"

    def private_build_dir(self, m: str, v: str, k: str, a: str) -> Path:
        """Build dir of one of several concurrent builds of m/v (hidden: listings skip it)."""
        check_target(k, a)
        return self.version_dir(m, v) / f".build-{k}-{a}"

    def kernel_dir(self, m: str, v: str, k: str) -> Path:
        check_kernel_name(k, "kernel version")
        return self.version_dir(m, v) / k

    def target_dir(self, m: str, v: str, k: str, a: str) -> Path:
        check_kernel_name(a, "architecture")
        return self.kernel_dir(m, v, k) / a

    def built_module_dir(self, m: str, v: str, k: str, a: str) -> Path:
        return self.target_dir(m, v, k, a) / "module"

    def kernel_link(self, m: str, k: str, a: str) -> Path:
        check_target(k, a)
        return self.module_dir(m) / f"kernel-{k}-{a}"

    def kernel_link_target(self, v: str, k: str, a: str) -> str:
        """The relative target of kernel-K-A (tree.md §5)."""
        check_module_name(v, "module version")
        check_target(k, a)
        return f"{v}/{k}/{a}"

    def original_module_root(self, m: str) -> Path:
        return self.module_dir(m) / "original_module"

    def original_module_dir(self, m: str, k: str, a: str) -> Path:
        check_target(k, a)
        return self.original_module_root(m) / k / a

    def source_dir(self, m: str, v: str) -> Path:
        """``$source_tree/m-v``, where add expects the sources."""
        check_module_name(m, "module name")
        check_module_name(v, "module version")
        return self.source_tree / f"{m}-{v}"

    def install_dir(self, k: str) -> Path:
        check_kernel_name(k, "kernel version")
        return self.install_tree / k

    def lock_file(self) -> Path:
        return self.dkms_tree / LOCK_FILE

    def depmod_pending(self, k: str, a: str) -> Path:
        check_target(k, a)
        return self.dkms_tree / f"depmod-pending-{k}-{a}"

    def post_transaction_log(self) -> Path:
        return self.dkms_tree / "post_transaction.log"

    # ---- predicates (tree.md §4) -------------------------------------------------------------
    # Written with os.path on strings: status asks these for every line, and pathlib is slow.
    # An invalid name is never in the tree: the answer is "no" without looking.
    def _v(self, m: str, v: str) -> str:
        return os.path.join(self.dkms_tree, m, v)

    def is_added(self, m: str, v: str) -> bool:
        if not _valid_mv(m, v):
            return False
        vdir = self._v(m, v)
        link = os.path.join(vdir, "source")
        return os.path.isdir(vdir) and os.path.islink(link) and os.path.isdir(link)

    def is_broken(self, m: str, v: str) -> bool:
        if not _valid_mv(m, v):
            return False
        vdir = self._v(m, v)
        if not os.path.isdir(vdir):
            return False
        link = os.path.join(vdir, "source")
        if os.path.islink(link):
            return not os.path.isdir(link)
        return os.path.isdir(os.path.join(self.source_tree, f"{m}-{v}"))

    def is_built(self, m: str, v: str, k: str, a: str) -> bool:
        if not (_valid_mv(m, v) and _valid_target(k, a)):
            return False
        return os.path.isdir(os.path.join(self.dkms_tree, m, v, k, a, "module"))

    def installed_version(self, m: str, k: str, a: str) -> Optional[str]:
        """The version whose build the kernel-K-A link resolves to, if any."""
        if name_problem(m) is not None or not _valid_target(k, a):
            return None
        link = os.path.join(self.dkms_tree, m, f"kernel-{k}-{a}")
        try:
            target = os.readlink(link)
        except OSError:
            return None
        parts = target.split("/")
        # Fast path: the relative form v/K/A written by dkms and by us.
        if len(parts) == 3 and parts[1] == k and parts[2] == a and parts[0] not in ("", ".", ".."):
            v = parts[0]
            return v if self.is_built(m, v, k, a) else None
        resolved = os.path.realpath(link)
        mdir = os.path.realpath(os.path.join(self.dkms_tree, m))
        rel = os.path.relpath(resolved, mdir).split(os.sep)
        if (
            len(rel) == 3
            and rel[0] not in ("..", ".")
            and rel[1] == k
            and rel[2] == a
            and self.is_built(m, rel[0], k, a)
        ):
            return rel[0]
        return None

    def is_installed(self, m: str, v: str, k: str, a: str) -> bool:
        return self.is_built(m, v, k, a) and self.installed_version(m, k, a) == v

    def has_original_modules(self, m: str, k: str, a: str) -> bool:
        if name_problem(m) is not None or not _valid_target(k, a):
            return False
        return os.path.isdir(os.path.join(self.dkms_tree, m, "original_module", k, a))

    def is_binaries_only_stub(self, m: str, v: str) -> bool:
        if not _valid_mv(m, v):
            return False
        return (self.source_dir(m, v) / BINARIES_ONLY_MARKER).exists()

    # ---- enumeration -------------------------------------------------------------------------
    def _usable(self, parent: str, name: str, what: str, problem: Optional[str]) -> bool:
        """False (after reporting the directory) if a listed name cannot be used."""
        if problem is None:
            return True
        path = os.path.join(parent, name)
        if self.report is not None and os.path.isdir(path):
            self.report(f"{printable(path)}: skipped, not a valid {what} ({problem}).")
        return False

    def modules(self, pattern: Optional[str] = None) -> List[str]:
        root = str(self.dkms_tree)
        names = [
            n
            for n in _sorted_bytes(_listdir(self.dkms_tree))
            if not n.startswith(".")
            and (not pattern or fnmatch.fnmatchcase(n, pattern))
            and _is_dir(self.dkms_tree / n)
            and self._usable(root, n, "module name", name_problem(n))
        ]
        return names

    def versions(self, m: str, pattern: Optional[str] = None) -> List[str]:
        if name_problem(m) is not None:
            return []
        mdir = self.module_dir(m)
        names = [
            n
            for n in _sorted_bytes(_listdir(mdir))
            if n != "original_module"
            and not n.startswith(".")  # as upstream's globs; also remove's half-deleted trash
            and not fnmatch.fnmatchcase(n, "kernel-*-*")
            and (not pattern or fnmatch.fnmatchcase(n, pattern))
            and _is_dir(mdir / n)
            and self._usable(str(mdir), n, "module version", name_problem(n))
        ]
        return names

    def module_versions(
        self, m_pattern: Optional[str] = None, v_pattern: Optional[str] = None
    ) -> Iterator[Tuple[str, str]]:
        """Every (m, v) directory, in byte order of m then v (tree.md §4)."""
        for m in self.modules(m_pattern):
            for v in self.versions(m, v_pattern):
                yield m, v

    def builds(
        self, m: str, v: str, k_pattern: Optional[str] = None, a_pattern: Optional[str] = None
    ) -> List[Target]:
        """Every built (K, A) of m/v in byte order of K then A [fix D-21]."""
        if not _valid_mv(m, v):
            return []
        vdir = str(self.version_dir(m, v))
        out: List[Target] = []
        for k in _sorted_bytes(_listdir(vdir)):
            if k.startswith(".") or k in RESERVED_VERSION_ENTRIES:
                continue
            if k_pattern and not fnmatch.fnmatchcase(k, k_pattern):
                continue
            if not self._usable(vdir, k, "kernel version", kernel_name_problem(k)):
                continue
            kdir = os.path.join(vdir, k)
            for a in _sorted_bytes(_listdir(kdir)):
                if a.startswith("."):
                    continue
                if a_pattern and not fnmatch.fnmatchcase(a, a_pattern):
                    continue
                if not self._usable(kdir, a, "architecture", kernel_name_problem(a)):
                    continue
                if os.path.isdir(os.path.join(kdir, a, "module")):
                    out.append(Target(k, a))
        return out

    def all_targets(self, m: str, v: str) -> List[Target]:
        """Targets for ``--all``: not installed first, then installed, each in version-sort order of K/A."""
        builds = self.builds(m, v)
        installed = {t for t in builds if self.installed_version(m, t.kernel, t.arch) == v}

        def key(t: Target) -> List[Tuple[int, object]]:
            return version_sort_key(f"{t.kernel}/{t.arch}")  # type: ignore[return-value]

        first = sorted((t for t in builds if t not in installed), key=key)
        last = sorted((t for t in builds if t in installed), key=key)
        return first + last

    def kernel_entries(self, m: str, v: str) -> List[str]:
        """Names of every non-reserved directory under $dkms_tree/m/v (hidden ones excluded)."""
        if not _valid_mv(m, v):
            return []
        vdir = self.version_dir(m, v)
        return [
            n
            for n in _sorted_bytes(_listdir(vdir))
            if not n.startswith(".") and n not in RESERVED_VERSION_ENTRIES and _is_dir(vdir / n)
        ]

    def source_entries(self, m: str, v: str) -> List[str]:
        """Non-hidden entries of the added source dir (the binaries-only guard)."""
        return [n for n in _listdir(self.source_link(m, v)) if not n.startswith(".")]
