"""Finding a record's installed file and comparing it with the built one.

Upstream's rule (status.md §2.3) looks in the family destination dir and the raw
DEST_MODULE_LOCATION for a file whose modinfo ``version`` equals the built copy's, then compares
contents. pydkms writes a fingerprint at install time (``K/A/.pydkms-install.json``, tree.md §12)
so that ``status`` needs only ``stat`` calls while nothing changed [fix D-04].
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from .kernel import compressed_or_uncompressed
from .modinfo import version_info
from .moduleconf import ModuleRecord
from .tree import INSTALL_FINGERPRINT

FINGERPRINT_VERSION = 1

StatTuple = Tuple[int, int, int, int]


def stat_tuple(path: Path) -> Optional[StatTuple]:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def sha256(path: Path) -> str:
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def candidate_dirs(record: ModuleRecord) -> List[str]:
    dirs = [record.install_location]
    if record.dest_location != record.install_location:
        dirs.append(record.dest_location)
    return dirs


def locate_installed(install_dir: Path, record: ModuleRecord, built: Path, suffix: str) -> Optional[Path]:
    """The installed file of ``record`` under ``install_dir`` ($install_tree/K), upstream's rule."""
    built_version: Optional[str] = None
    for d in candidate_dirs(record):
        found = compressed_or_uncompressed(Path(f"{install_dir}{d}"), record.dest_name, suffix)
        if found is None:
            continue
        if built_version is None:
            built_version = version_info(built)[0]
        if version_info(found)[0] == built_version:
            return found
    return None


def fingerprinted_install(target_dir: Path, record: ModuleRecord, install_dir: Path) -> Optional[Path]:
    """The file the install fingerprint of ``target_dir`` names for ``record``, if it is still ours.

    For uninstall when :func:`locate_installed` cannot tell (the built module is gone or unreadable):
    the file must lie under ``install_dir`` and be unchanged since we wrote it (same inode, size and
    mtime, or, for a copy, the same sha256 as the built module had).
    """
    entry = read_fingerprint(target_dir).get(record.dest_name)
    if entry is None:
        return None
    path = Path(entry.installed)
    if install_dir not in path.parents or not path.is_file():
        return None
    if stat_tuple(path) == entry.installed_stat or (entry.identical and sha256(path) == entry.sha256):
        return path
    return None


def installed_file_missing(target_dir: Path) -> Optional[Path]:
    """A file the install fingerprint of ``target_dir`` says we installed and that is gone, if any."""
    for entry in read_fingerprint(target_dir).values():
        path = Path(entry.installed)
        if not os.path.lexists(path):
            return path
    return None


def same_contents(a: Path, b: Path) -> bool:
    import filecmp

    try:
        return filecmp.cmp(a, b, shallow=False)
    except OSError:
        return False


@dataclass(frozen=True)
class FingerprintEntry:
    dest_name: str
    built: str
    installed: str
    sha256: str
    built_stat: StatTuple
    installed_stat: StatTuple
    identical: bool


def write_fingerprint(target_dir: Path, entries: List[FingerprintEntry]) -> None:
    """Atomically write K/A/.pydkms-install.json."""
    data = {
        "schema": "pydkms-install",
        "version": FINGERPRINT_VERSION,
        "modules": [
            {
                "dest_name": e.dest_name,
                "built": e.built,
                "installed": e.installed,
                "sha256": e.sha256,
                "built_stat": list(e.built_stat),
                "installed_stat": list(e.installed_stat),
                "identical": e.identical,
            }
            for e in entries
        ],
    }
    path = target_dir / INSTALL_FINGERPRINT
    tmp = target_dir / f"{INSTALL_FINGERPRINT}.{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(data, fh, sort_keys=True)
        fh.write("\n")
    os.replace(tmp, path)


def read_fingerprint(target_dir: Path) -> Dict[str, FingerprintEntry]:
    try:
        with open(target_dir / INSTALL_FINGERPRINT, encoding="utf-8") as fh:
            data = json.load(fh)
        if data.get("schema") != "pydkms-install" or data.get("version") != FINGERPRINT_VERSION:
            return {}
        out: Dict[str, FingerprintEntry] = {}
        for item in data["modules"]:
            bs = item["built_stat"]
            ist = item["installed_stat"]
            out[item["dest_name"]] = FingerprintEntry(
                dest_name=item["dest_name"],
                built=item["built"],
                installed=item["installed"],
                sha256=item["sha256"],
                built_stat=(bs[0], bs[1], bs[2], bs[3]),
                installed_stat=(ist[0], ist[1], ist[2], ist[3]),
                identical=bool(item["identical"]),
            )
        return out
    except (OSError, ValueError, KeyError, TypeError, IndexError, AttributeError):
        return {}


def fingerprint_for(record: ModuleRecord, built: Path, installed: Path) -> Optional[FingerprintEntry]:
    bst = stat_tuple(built)
    ist = stat_tuple(installed)
    if bst is None or ist is None:
        return None
    digest = sha256(built)
    identical = os.path.realpath(built) == os.path.realpath(installed) or same_contents(built, installed)
    return FingerprintEntry(record.dest_name, str(built), str(installed), digest, bst, ist, identical)


def remove_fingerprint(target_dir: Path) -> None:
    try:
        (target_dir / INSTALL_FINGERPRINT).unlink()
    except OSError:
        pass
