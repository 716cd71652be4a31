"""Distribution family from os-release (spec/tree.md §6.1) and what it decides."""

from __future__ import annotations

import fnmatch
import os
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Optional

from .errors import DkmsError

OS_RELEASE_FILES = (Path("/etc/os-release"), Path("/usr/lib/os-release"))


def _parse_os_release(text: str) -> Dict[str, str]:
    values: Dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, _, raw = line.partition("=")
        try:
            parts = shlex.split(raw, comments=False, posix=True)
        except ValueError:
            parts = [raw.strip("\"'")]
        values[key.strip()] = " ".join(parts)
    return values


@dataclass(frozen=True)
class Distro:
    """The distribution family string and the rules derived from it."""

    family: str

    def matches(self, *globs: str) -> bool:
        return any(fnmatch.fnmatchcase(self.family, g) for g in globs)

    def dest_dir(self, dest_module_location: str, addon_modules_dir: str = "") -> str:
        """Install directory under $install_tree/K for a record (tree.md §6.1)."""
        if addon_modules_dir:
            return "/" + addon_modules_dir.strip("/")
        if self.matches("fedora*", "rhel*", "ovm*"):
            return "/extra"
        if self.matches("sles*", "suse*", "opensuse*"):
            return "/updates"
        if self.matches("debian*", "ubuntu*", "arch*"):
            return "/updates/dkms"
        return dest_module_location

    @property
    def uses_uname_arch(self) -> bool:
        return self.matches("debian*", "ubuntu*", "arch*", "gentoo*")


def detect(os_release: Optional[Path] = None) -> Distro:
    """Read the family from os-release; neither file present -> exit 4.

    ``PYDKMS_OS_RELEASE`` (tests) names an alternative os-release file.
    """
    candidates = (os_release,) if os_release else ()
    override = os.environ.get("PYDKMS_OS_RELEASE")
    if override:
        candidates = (Path(override),)
    for path in candidates or OS_RELEASE_FILES:
        try:
            text = path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            continue
        values = _parse_os_release(text)
        os_id = values.get("ID", "")
        if os_id == "ubuntu":
            return Distro(os_id)
        if "ID_LIKE" in values:
            return Distro(values["ID_LIKE"])
        return Distro(os_id)
    raise DkmsError(4, "System is unsupported: neither /etc/os-release nor /usr/lib/os-release exists.")
