"""The DKMS tree on disk (spec/tree.md): paths, state predicates, enumeration.

This is the only module that knows where things live under ``$dkms_tree``, ``$source_tree`` and
``$install_tree``. Every state question is answered from the filesystem, tolerating concurrent
modification: a path that vanishes between two checks counts as absent.
"""

from __future__ import annotations

import fnmatch
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, List, Optional, Tuple

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

    # ---- paths -------------------------------------------------------------------------------
    def module_dir(self, m: str) -> Path:
        return self.dkms_tree / m

    def version_dir(self, m: str, v: str) -> Path:
        return self.dkms_tree / m / v

    def source_link(self, m: str, v: str) -> Path:
        return self.dkms_tree / m / v / "source"

    def build_dir(self, m: str, v: str) -> Path:
        return self.dkms_tree / m / v / "build"

    def private_build_dir(self, m: str, v: str, k: str, a: str) -> Path:
        """Build dir of one of several concurrent builds of m/v (hidden: listings skip it)."""
        return self.version_dir(m, v) / f".build-{k}-{a}"

    def kernel_dir(self, m: str, v: str, k: str) -> Path:
        return self.dkms_tree / m / v / k

    def target_dir(self, m: str, v: str, k: str, a: str) -> Path:
        return self.dkms_tree / m / v / k / a

    def built_module_dir(self, m: str, v: str, k: str, a: str) -> Path:
        return self.target_dir(m, v, k, a) / "module"

    def kernel_link(self, m: str, k: str, a: str) -> Path:
        return self.dkms_tree / m / f"kernel-{k}-{a}"

    def kernel_link_target(self, v: str, k: str, a: str) -> str:
        """The relative target of kernel-K-A (tree.md §5)."""
        return f"{v}/{k}/{a}"

    def original_module_root(self, m: str) -> Path:
        return self.dkms_tree / m / "original_module"

    def original_module_dir(self, m: str, k: str, a: str) -> Path:
        return self.dkms_tree / m / "original_module" / k / a

    def source_dir(self, m: str, v: str) -> Path:
        """``$source_tree/m-v``, where add expects the sources."""
        return self.source_tree / f"{m}-{v}"

    def install_dir(self, k: str) -> Path:
        return self.install_tree / k

    def lock_file(self) -> Path:
        return self.dkms_tree / LOCK_FILE

    def depmod_pending(self, k: str, a: str) -> Path:
        return self.dkms_tree / f"depmod-pending-{k}-{a}"

    def post_transaction_log(self) -> Path:
        return self.dkms_tree / "post_transaction.log"

    # ---- predicates (tree.md §4) -------------------------------------------------------------
    # Written with os.path on strings: status asks these for every line, and pathlib is slow.
    def _v(self, m: str, v: str) -> str:
        return os.path.join(self.dkms_tree, m, v)

    def is_added(self, m: str, v: str) -> bool:
        vdir = self._v(m, v)
        link = os.path.join(vdir, "source")
        return os.path.isdir(vdir) and os.path.islink(link) and os.path.isdir(link)

    def is_broken(self, m: str, v: str) -> bool:
        vdir = self._v(m, v)
        if not os.path.isdir(vdir):
            return False
        link = os.path.join(vdir, "source")
        if os.path.islink(link):
            return not os.path.isdir(link)
        return os.path.isdir(os.path.join(self.source_tree, f"{m}-{v}"))

    def is_built(self, m: str, v: str, k: str, a: str) -> bool:
        return os.path.isdir(os.path.join(self.dkms_tree, m, v, k, a, "module"))

    def installed_version(self, m: str, k: str, a: str) -> Optional[str]:
        """The version whose build the kernel-K-A link resolves to, if any."""
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
        return os.path.isdir(os.path.join(self.dkms_tree, m, "original_module", k, a))

    def is_binaries_only_stub(self, m: str, v: str) -> bool:
        return (self.source_dir(m, v) / BINARIES_ONLY_MARKER).exists()

    # ---- enumeration -------------------------------------------------------------------------
    def modules(self, pattern: Optional[str] = None) -> List[str]:
        names = [
            n
            for n in _listdir(self.dkms_tree)
            if not n.startswith(".")
            and (not pattern or fnmatch.fnmatchcase(n, pattern))
            and _is_dir(self.dkms_tree / n)
        ]
        return _sorted_bytes(names)

    def versions(self, m: str, pattern: Optional[str] = None) -> List[str]:
        mdir = self.module_dir(m)
        names = [
            n
            for n in _listdir(mdir)
            if n != "original_module"
            and not n.startswith(".")  # as upstream's globs; also remove's half-deleted trash
            and not fnmatch.fnmatchcase(n, "kernel-*-*")
            and (not pattern or fnmatch.fnmatchcase(n, pattern))
            and _is_dir(mdir / n)
        ]
        return _sorted_bytes(names)

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
        vdir = os.path.join(self.dkms_tree, m, v)
        out: List[Target] = []
        for k in _sorted_bytes(_listdir(vdir)):
            if k.startswith(".") or k in RESERVED_VERSION_ENTRIES:
                continue
            if k_pattern and not fnmatch.fnmatchcase(k, k_pattern):
                continue
            kdir = os.path.join(vdir, k)
            for a in _sorted_bytes(_listdir(kdir)):
                if a.startswith("."):
                    continue
                if a_pattern and not fnmatch.fnmatchcase(a, a_pattern):
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
        vdir = self.version_dir(m, v)
        return [
            n
            for n in _sorted_bytes(_listdir(vdir))
            if not n.startswith(".") and n not in RESERVED_VERSION_ENTRIES and _is_dir(vdir / n)
        ]

    def source_entries(self, m: str, v: str) -> List[str]:
        """Non-hidden entries of the added source dir (the binaries-only guard)."""
        return [n for n in _listdir(self.source_link(m, v)) if not n.startswith(".")]
