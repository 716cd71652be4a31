"""Debian's ``*-dkms`` packages, downloaded at test time (nothing third-party is committed).

``dkms_sources()`` returns every package's extracted ``/usr/src/<module>-<version>`` directory.
The ``.deb`` files are fetched with ``apt-get download`` into
``${PYDKMS_TEST_CACHE:-~/.cache/pydkms-tests}/debs`` and unpacked with ``dpkg-deb -x`` into
``.../debs/root/<package>``; both are reused by later runs (no network needed then).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional

from .upstream import _locked
from .upstream import default_cache_dir as test_cache

#: Packages whose name ends in -dkms but that ship no module source.
EXCLUDED = frozenset({"dh-dkms"})


class Unavailable(Exception):
    """The packages cannot be obtained (no apt, no network, no package lists)."""


@dataclass(frozen=True)
class DkmsSource:
    package: str  # Debian package name, e.g. "acpi-call-dkms"
    deb: Path
    source_dir: Path  # extracted usr/src/<module>-<version>
    conf: Path  # source_dir / "dkms.conf"


def cache_dir() -> Path:
    return test_cache() / "debs"


def _run(cmd: Sequence[str], cwd: Optional[Path] = None) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(list(cmd), cwd=cwd, capture_output=True, text=True, check=False, timeout=600)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise Unavailable(f"{cmd[0]}: {exc}") from exc


def dkms_package_names() -> List[str]:
    """``apt-cache search --names-only -- '-dkms$'`` without dh-dkms (empty list when apt knows none)."""
    if shutil.which("apt-cache") is None:
        raise Unavailable("apt-cache is not installed")
    proc = _run(["apt-cache", "search", "--names-only", "--", "-dkms$"])
    if proc.returncode != 0:
        raise Unavailable(f"apt-cache search failed: {proc.stderr.strip()}")
    names = {line.split(" - ", 1)[0].strip() for line in proc.stdout.splitlines() if line.strip()}
    return sorted(n for n in names if n.endswith("-dkms") and n not in EXCLUDED)


def _cached_debs(dest: Path) -> dict[str, Path]:
    found: dict[str, Path] = {}
    for deb in sorted(dest.glob("*.deb")):
        found[deb.name.split("_", 1)[0]] = deb
    return found


def fetch_debs(names: Optional[Sequence[str]] = None) -> List[Path]:
    """Download (once) the .deb of every ``*-dkms`` package; returns the cached files."""
    dest = cache_dir()
    dest.mkdir(parents=True, exist_ok=True)
    with _locked(dest / ".lock"):
        cached = _cached_debs(dest)
        if names is None:
            try:
                names = dkms_package_names()
            except Unavailable:
                if cached:
                    return list(cached.values())
                raise
            if not names:
                if cached:
                    return list(cached.values())
                raise Unavailable("apt-cache knows no *-dkms package (run 'apt-get update' once)")
        missing = [n for n in names if n not in cached]
        if missing:
            if shutil.which("apt-get") is None:
                raise Unavailable("apt-get is not installed")
            cmd = ["apt-get", "download", "-o", "APT::Sandbox::User=root"]
            proc = _run([*cmd, *missing], cwd=dest)
            if proc.returncode != 0:
                # one bad name must not lose the others: retry one by one
                for n in missing:
                    if n not in _cached_debs(dest):
                        _run([*cmd, n], cwd=dest)
            cached = _cached_debs(dest)
            still = [n for n in names if n not in cached]
            if still and len(still) == len(names):
                raise Unavailable(f"'apt-get download' failed: {proc.stderr.strip() or proc.stdout.strip()}")
        return [cached[n] for n in names if n in cached]


def extract(deb: Path) -> Path:
    """Unpack ``deb`` (once) and return its root directory."""
    root = deb.parent / "root" / deb.stem
    marker = root / ".extracted"
    if marker.exists():
        return root
    with _locked(deb.parent / ".lock-extract"):
        if marker.exists():
            return root
        if root.exists():
            shutil.rmtree(root)
        root.mkdir(parents=True)
        proc = _run(["dpkg-deb", "-x", str(deb), str(root)])
        if proc.returncode != 0:
            raise Unavailable(f"dpkg-deb -x {deb} failed: {proc.stderr.strip()}")
        marker.write_text("")
    return root


def dkms_sources(names: Optional[Sequence[str]] = None) -> List[DkmsSource]:
    """Every ``*-dkms`` package's ``/usr/src/<module>-<version>`` directory that has a dkms.conf."""
    out: List[DkmsSource] = []
    for deb in fetch_debs(names):
        root = extract(deb)
        package = deb.name.split("_", 1)[0]
        for conf in sorted((root / "usr" / "src").glob("*/dkms.conf")):
            out.append(DkmsSource(package, deb, conf.parent, conf))
    if not out:
        raise Unavailable("no dkms.conf found in the downloaded packages")
    return out


def split_module_version(dirname: str) -> tuple[str, str]:
    """``acpi-call-1.2.2`` -> (``acpi-call``, ``1.2.2``): split before the last '-<digit>'."""
    m = re.match(r"(.+?)-(\d.*)$", dirname)
    if not m:
        return dirname, ""
    return m.group(1), m.group(2)
