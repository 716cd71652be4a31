"""Reading built modules and certificates in tests: modinfo fields, ELF sections, serials."""

from __future__ import annotations

import subprocess
from pathlib import Path


def modinfo(path: Path, field: str) -> str:
    """One field of ``modinfo -F`` (empty when the module has none)."""
    return subprocess.run(
        ["modinfo", "-F", field, str(path)], capture_output=True, text=True, check=True
    ).stdout.strip()


def sections(path: Path) -> str:
    """``readelf -S -W`` of a module (to check what strip removed)."""
    return subprocess.run(
        ["readelf", "-S", "-W", str(path)], capture_output=True, text=True, check=True
    ).stdout


def certificate_serial(cert: Path, *, colons: bool = False) -> str:
    """A DER certificate's serial in upper-case hex; ``colons`` gives modinfo's ``AB:CD:…`` form."""
    out = subprocess.run(
        ["openssl", "x509", "-inform", "DER", "-in", str(cert), "-noout", "-serial"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    digits = out.strip().split("=", 1)[1].upper()
    return ":".join(digits[i : i + 2] for i in range(0, len(digits), 2)) if colons else digits


def executable(path: Path, body: str) -> Path:
    """A ``#!/bin/sh`` script at ``path`` (a stand-in tool placed first in PATH)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755)
    return path
