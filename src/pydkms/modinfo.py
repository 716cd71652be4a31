"""Read a kernel module's ``.modinfo`` section without starting ``modinfo``.

Handles plain, gzip- and xz-compressed ELF objects with the standard library; anything else
(zstd, a non-ELF file) falls back to the ``modinfo`` tool through the runner.
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from . import runner
from .errors import DkmsError


def _elf_modinfo(data: bytes) -> Optional[List[Tuple[str, str]]]:
    if len(data) < 64 or data[:4] != b"\x7fELF":
        return None
    is64 = data[4] == 2
    endian = "<" if data[5] == 1 else ">"
    try:
        if is64:
            shoff = struct.unpack_from(endian + "Q", data, 0x28)[0]
            shentsize, shnum, shstrndx = struct.unpack_from(endian + "HHH", data, 0x3A)
        else:
            shoff = struct.unpack_from(endian + "I", data, 0x20)[0]
            shentsize, shnum, shstrndx = struct.unpack_from(endian + "HHH", data, 0x2E)

        def section(i: int) -> Tuple[int, int, int]:
            base = shoff + i * shentsize
            if is64:
                name, _type, _flags, _addr, off, size = struct.unpack_from(endian + "IIQQQQ", data, base)
            else:
                name, _type, _flags, _addr, off, size = struct.unpack_from(endian + "IIIIII", data, base)
            return name, off, size

        _n, str_off, str_size = section(shstrndx)
        strtab = data[str_off : str_off + str_size]
        for i in range(shnum):
            name_off, off, size = section(i)
            end = strtab.find(b"\0", name_off)
            if strtab[name_off:end] == b".modinfo":
                fields = []
                for item in data[off : off + size].split(b"\0"):
                    if b"=" in item:
                        key, _, value = item.partition(b"=")
                        fields.append((key.decode(errors="replace"), value.decode(errors="replace")))
                return fields
        return []
    except struct.error:
        return None


def _read(path: Path) -> Optional[bytes]:
    import gzip
    import lzma

    name = path.name
    try:
        if name.endswith(".gz"):
            with gzip.open(path, "rb") as fh:
                return fh.read()
        if name.endswith(".xz"):
            with lzma.open(path, "rb") as fh:
                return fh.read()
        if name.endswith(".zst"):
            return None
        return path.read_bytes()
    except (OSError, lzma.LZMAError, EOFError):
        return None


def fields(path: Path) -> List[Tuple[str, str]]:
    """All ``key=value`` pairs of the module's .modinfo, in order."""
    data = _read(path)
    parsed = _elf_modinfo(data) if data is not None else None
    if parsed is not None:
        return parsed
    try:
        proc = runner.run(["modinfo", str(path)])
    except DkmsError:
        return []
    out: List[Tuple[str, str]] = []
    for line in proc.stdout.decode(errors="replace").splitlines():
        key, sep, value = line.partition(":")
        if sep:
            out.append((key.strip(), value.strip()))
    return out


def version_info(path: Path) -> Tuple[str, str]:
    """(version, srcversion) as upstream's get_module_verinfo reads them.

    ``version:`` is its first word (a second word is a legacy checksum); ``srcversion`` falls back
    to that checksum.
    """
    info: Dict[str, str] = {}
    for key, value in fields(path):
        info.setdefault(key, value)
    words = info.get("version", "").split()
    ver = words[0] if words else ""
    checksum = words[1] if len(words) > 1 else ""
    src = info.get("srcversion", "").split()
    return ver, (src[0] if src else checksum)
