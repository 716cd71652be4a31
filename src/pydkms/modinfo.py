"""Read a kernel module's ``.modinfo`` section without starting ``modinfo``.

Handles plain, gzip- and xz-compressed ELF objects with the standard library; anything else
(zstd, a non-ELF file) falls back to the ``modinfo`` tool through the runner.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
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


# ---- appended module signature ----------------------------------------------------------------
#: the kernel's marker at the very end of a signed module
SIGNATURE_MAGIC = b"~Module signature appended~\n"
#: struct module_signature: algo, hash, id_type, signer_len, key_id_len, pad[3], be32 sig_len
_SIG_STRUCT = struct.Struct(">BBBBB3xI")
_PKEY_ID_PKCS7 = 2

_HASH_OIDS = {
    bytes.fromhex("2b0e03021a"): "sha1",
    bytes.fromhex("608648016503040204"): "sha224",
    bytes.fromhex("608648016503040201"): "sha256",
    bytes.fromhex("608648016503040202"): "sha384",
    bytes.fromhex("608648016503040203"): "sha512",
    bytes.fromhex("608648016503040208"): "sha3-256",
    bytes.fromhex("608648016503040209"): "sha3-384",
    bytes.fromhex("60864801650304020a"): "sha3-512",
}
_OID_COMMON_NAME = bytes.fromhex("550403")


@dataclass(frozen=True)
class SignatureInfo:
    """What ``modinfo`` calls ``signer``, ``sig_key`` and ``sig_hashalgo`` ('' when unknown)."""

    signer: str
    sig_key: str  # upper-case hex bytes joined by ':' (modinfo's form)
    sig_hashalgo: str


def split_signature(data: bytes) -> Tuple[bytes, Optional[bytes]]:
    """(module without its appended signature, the appended block) — (data, None) if unsigned.

    Layout: [module][signer][key id][signature][struct module_signature][magic].
    """
    end = len(data) - len(SIGNATURE_MAGIC)
    if end < _SIG_STRUCT.size or data[end:] != SIGNATURE_MAGIC:
        return data, None
    _algo, _hash, _id, signer_len, key_id_len, sig_len = _SIG_STRUCT.unpack_from(data, end - _SIG_STRUCT.size)
    start = end - _SIG_STRUCT.size - sig_len - signer_len - key_id_len
    if start < 0:
        return data, None
    return data[:start], data[start:]


def _der(data: bytes, pos: int, limit: int) -> Tuple[int, int, int]:
    """(tag, content start, content end) of the DER element at ``pos``."""
    if pos + 2 > limit:
        raise ValueError("truncated")
    tag = data[pos]
    length = data[pos + 1]
    pos += 2
    if length & 0x80:
        n = length & 0x7F
        if n == 0 or n > 4 or pos + n > limit:
            raise ValueError("bad length")
        length = int.from_bytes(data[pos : pos + n], "big")
        pos += n
    if pos + length > limit:
        raise ValueError("truncated")
    return tag, pos, pos + length


def _children(data: bytes, start: int, end: int) -> List[Tuple[int, int, int]]:
    out = []
    pos = start
    while pos < end:
        item = _der(data, pos, end)
        out.append(item)
        pos = item[2]
    return out


def _pkcs7_signer(data: bytes) -> SignatureInfo:
    """Signer CN, serial and digest of the first SignerInfo of a PKCS#7 SignedData (as kmod reads it)."""
    _t, s, e = _der(data, 0, len(data))  # ContentInfo
    content = _children(data, s, e)[1]  # [0] EXPLICIT
    _t, s, e = _der(data, content[1], content[2])  # SignedData
    signer_infos = [c for c in _children(data, s, e) if c[0] == 0x31][-1]
    _t, s, e = _children(data, signer_infos[1], signer_infos[2])[0]  # SignerInfo
    parts = _children(data, s, e)
    issuer_serial, digest = parts[1], parts[2]
    issuer, serial = _children(data, issuer_serial[1], issuer_serial[2])[:2]
    signer = ""
    for rdn in _children(data, issuer[1], issuer[2]):
        for atv in _children(data, rdn[1], rdn[2]):
            oid, value = _children(data, atv[1], atv[2])[:2]
            signer = data[value[1] : value[2]].decode(errors="replace")
            if data[oid[1] : oid[2]] == _OID_COMMON_NAME:
                break
        else:
            continue
        break
    number = data[serial[1] : serial[2]].lstrip(b"\0") or b"\0"
    oid = _children(data, digest[1], digest[2])[0]
    algo = _HASH_OIDS.get(data[oid[1] : oid[2]], "unknown")
    return SignatureInfo(signer, ":".join(f"{b:02X}" for b in number), algo)


def parse_signature(data: bytes) -> Optional[SignatureInfo]:
    """The appended signature of a module image, or None when it carries none."""
    _body, block = split_signature(data)
    if block is None:
        return None
    _algo, _hash, id_type, signer_len, key_id_len, sig_len = _SIG_STRUCT.unpack_from(
        data, len(data) - len(SIGNATURE_MAGIC) - _SIG_STRUCT.size
    )
    if id_type != _PKEY_ID_PKCS7:
        signer = block[:signer_len].decode(errors="replace")
        key = block[signer_len : signer_len + key_id_len]
        return SignatureInfo(signer, ":".join(f"{b:02X}" for b in key), "")
    sig = block[: signer_len + key_id_len + sig_len]
    try:
        return _pkcs7_signer(sig)
    except (ValueError, IndexError):
        return SignatureInfo("", "", "")


def signature_info(path: Path) -> Optional[SignatureInfo]:
    """Signature of a (possibly compressed) module file; the ``modinfo`` tool reads what we cannot."""
    data = _read(path)
    if data is not None:
        return parse_signature(data)
    info: Dict[str, str] = {}
    for key, value in fields(path):
        info.setdefault(key, value)
    if "sig_id" not in info and "signer" not in info:
        return None
    return SignatureInfo(info.get("signer", ""), info.get("sig_key", ""), info.get("sig_hashalgo", ""))
