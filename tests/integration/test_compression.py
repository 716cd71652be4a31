"""Compressed modules on real builds: the kernel's suffix, signed contents intact, xz CRC32, failures."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Dict, List

import pytest

from pydkms.modinfo import signature_info, split_signature
from tests.conftest import ARCH, Scratch

pytestmark = pytest.mark.integration

DECOMPRESS = {".gz": ["gzip", "-dc"], ".xz": ["xz", "-dc"], ".zst": ["zstd", "-dc"]}
#: the kmod feature that reads each suffix (Debian 12's kmod is built without zlib: -ZLIB)
KMOD_FEATURE = {".gz": "+ZLIB", ".xz": "+XZ", ".zst": "+ZSTD"}


def kmod_reads(suffix: str) -> bool:
    features = subprocess.run(["kmod", "--version"], capture_output=True, text=True).stdout.split()
    return KMOD_FEATURE[suffix] in features


def configure(scratch: Scratch, extra: str = "") -> Dict[str, Path]:
    keys = scratch.root / "keys"
    (scratch.etc / "framework.conf").write_text(
        f"mok_signing_key={keys}/mok.key\nmok_certificate={keys}/mok.pub\n{extra}"
    )
    return {"key": keys / "mok.key", "cert": keys / "mok.pub"}


def make_compressed(scratch: Scratch, kernel: str, suffix: str) -> None:
    """One ``*.ko<suffix>`` under $install_tree/K makes the suffix scan pick ``suffix``."""
    marker = scratch.install_tree / kernel / "kernel" / "drivers" / "misc" / f"dummy.ko{suffix}"
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_bytes(b"")


def decompressed(path: Path, suffix: str) -> bytes:
    return subprocess.run([*DECOMPRESS[suffix], str(path)], capture_output=True, check=True).stdout


def verify_signature(module: bytes, cert: Path, work: Path) -> None:
    """The appended PKCS#7 signature verifies against the module body with our certificate."""
    body, block = split_signature(module)
    assert block is not None, "no signature appended"
    (work / "body").write_bytes(body)
    (work / "sig.p7").write_bytes(block[: -(12 + len(b"~Module signature appended~\n"))])
    subprocess.run(
        ["openssl", "x509", "-inform", "DER", "-in", str(cert), "-out", str(work / "cert.pem")], check=True
    )
    argv = ["openssl", "cms", "-verify", "-binary", "-inform", "DER", "-in", str(work / "sig.p7")]
    argv += [
        "-content",
        str(work / "body"),
        "-certfile",
        str(work / "cert.pem"),
        "-noverify",
        "-out",
        "/dev/null",
    ]
    subprocess.run(argv, check=True, capture_output=True)


@pytest.mark.parametrize("suffix", [".gz", ".xz", ".zst"])
def test_compressed_signed_module_is_built_installed_and_indexed(
    scratch: Scratch, kernel: str, suffix: str
) -> None:
    paths = configure(scratch)
    make_compressed(scratch, kernel, suffix)
    scratch.add_source("hello")
    r = scratch.ok("install", "hello/1.0", "-k", kernel)
    assert r.err == ""
    module_dir = scratch.dkms_tree / "hello" / "1.0" / kernel / ARCH / "module"
    assert sorted(p.name for p in module_dir.iterdir()) == ["Module.symvers", f"hello.ko{suffix}"]
    built = module_dir / f"hello.ko{suffix}"
    dest = scratch.install_tree / kernel / "updates" / "dkms" / f"hello.ko{suffix}"
    assert dest.read_bytes() == built.read_bytes()
    assert not dest.with_name("hello.ko").exists()
    # compressed after signing: the decompressed file is the signed module, byte for byte
    plain = decompressed(dest, suffix)
    assert plain.startswith(b"\x7fELF") and plain.endswith(b"~Module signature appended~\n")
    verify_signature(plain, paths["cert"], scratch.root)
    # depmod runs on it (install ran depmod -b on the scratch root; run it again explicitly)
    subprocess.run(["depmod", "-b", str(scratch.root), kernel], check=True, capture_output=True)
    if kmod_reads(suffix):
        info = subprocess.run(["modinfo", str(dest)], capture_output=True, text=True, check=True).stdout
        assert "signer:         DKMS module signing key" in info and "name:           hello" in info
        dep = (scratch.install_tree / kernel / "modules.dep").read_text().splitlines()
        assert f"updates/dkms/hello.ko{suffix}:" in dep
    else:  # this kmod cannot read the format at all; our own reader must still see the signature
        sig = signature_info(dest)
        assert sig is not None and sig.signer == "DKMS module signing key"
    assert scratch.status() == [f"hello/1.0, {kernel}, {ARCH}: installed"]


def test_xz_gets_crc32_even_when_the_user_options_set_no_check(scratch: Scratch, kernel: str) -> None:
    configure(scratch, 'compress_xz_opts="-6"\n')
    make_compressed(scratch, kernel, ".xz")
    scratch.add_source("hello")
    r = scratch.ok("build", "hello/1.0", "-k", kernel)
    assert "--check=crc32" in r.err and r.err.count("Warning:") == 1
    built = scratch.dkms_tree / "hello" / "1.0" / kernel / ARCH / "module" / "hello.ko.xz"
    listing = subprocess.run(
        ["xz", "--robot", "--list", str(built)], capture_output=True, text=True, check=True
    )
    file_line = next(line for line in listing.stdout.splitlines() if line.startswith("file"))
    assert file_line.split("\t")[6] == "CRC32"


def test_default_xz_options_are_crc32_and_quiet(scratch: Scratch, kernel: str) -> None:
    configure(scratch)
    make_compressed(scratch, kernel, ".xz")
    scratch.add_source("hello")
    r = scratch.ok("build", "hello/1.0", "-k", kernel)
    assert r.err == ""
    built = scratch.dkms_tree / "hello" / "1.0" / kernel / ARCH / "module" / "hello.ko.xz"
    listing = subprocess.run(
        ["xz", "--robot", "--list", str(built)], capture_output=True, text=True, check=True
    )
    assert "\tCRC32\t" in listing.stdout


def test_failing_compressor_stages_the_uncompressed_module(scratch: Scratch, kernel: str) -> None:
    paths = configure(scratch, 'compress_gzip_opts="--no-such-option"\n')
    make_compressed(scratch, kernel, ".gz")
    scratch.add_source("hello")
    r = scratch.ok("install", "hello/1.0", "-k", kernel)
    assert "Compressing hello.ko failed" in r.err and "staging it uncompressed" in r.err
    module_dir = scratch.dkms_tree / "hello" / "1.0" / kernel / ARCH / "module"
    assert sorted(p.name for p in module_dir.iterdir()) == ["Module.symvers", "hello.ko"]
    dest = scratch.install_tree / kernel / "updates" / "dkms" / "hello.ko"
    verify_signature(dest.read_bytes(), paths["cert"], scratch.root)
    assert scratch.status() == [f"hello/1.0, {kernel}, {ARCH}: installed"]


def test_suffix_is_chosen_per_kernel(scratch: Scratch, kernels: List[str]) -> None:
    k1, k2 = kernels[:2]
    configure(scratch)
    make_compressed(scratch, k1, ".zst")
    scratch.add_source("hello")
    scratch.ok("build", "hello/1.0", "-k", k1, "-k", k2)
    assert (scratch.dkms_tree / "hello" / "1.0" / k1 / ARCH / "module" / "hello.ko.zst").is_file()
    assert (scratch.dkms_tree / "hello" / "1.0" / k2 / ARCH / "module" / "hello.ko").is_file()
