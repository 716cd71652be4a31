"""Signing and compression logic without building modules: plans, key selection, options, trailers."""

from __future__ import annotations

import os
import struct
from pathlib import Path
from typing import List

import pytest

from pydkms import compress, signing
from pydkms.distro import Distro
from pydkms.framework import Settings
from pydkms.kernel import Kernel
from pydkms.modinfo import SIGNATURE_MAGIC, parse_signature, split_signature
from tests.support.kmod import executable


class Recorder:
    """A console that remembers what was said, by channel."""

    def __init__(self) -> None:
        self.lines: List[str] = []

    def info(self, text: str = "") -> None:
        self.lines.append(f"info: {text}")

    def warn(self, text: str) -> None:
        self.lines.append(f"warn: {text}")

    def notice(self, text: str) -> None:
        self.lines.append(f"notice: {text}")

    @property
    def text(self) -> str:
        return "\n".join(self.lines)


def kernel_with_config(tmp_path: Path, text: str) -> Kernel:
    config = tmp_path / "config"
    config.write_text(text)
    return Kernel("6.1.0-13-amd64", "x86_64", tmp_path / "build", config)


def settings(**raw: str) -> Settings:
    return Settings(install_tree=Path("/nonexistent/lib/modules"), raw=raw)


# ---- compression options ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("opts", "expected", "warned"),
    [
        ("--check=crc32 --lzma2=dict=1MiB", ["--check=crc32", "--lzma2=dict=1MiB"], False),
        ("-6", ["-6", "--check=crc32"], True),
        ("", ["--check=crc32"], True),
        ("-C none -6", ["-C", "none", "-6"], False),
        ("-Ccrc64", ["-Ccrc64", "--check=crc32"], True),
        ("--check sha256 -T0", ["--check", "sha256", "-T0", "--check=crc32"], True),
        ("--check=sha256 --check=crc32", ["--check=sha256", "--check=crc32"], False),
    ],
)
def test_xz_options_always_loadable(opts: str, expected: List[str], warned: bool) -> None:
    words, warning = compress.xz_options(opts)
    assert words == expected
    assert (warning is not None) == warned


def test_compress_commands_append_force() -> None:
    s = Settings(compress_gzip_opts="-9 -n", compress_xz_opts="-6", compress_zstd_opts="-q --rm -T0")
    assert compress.command(s, ".gz") == (["gzip", "-9", "-n", "-f"], None)
    assert compress.command(s, ".xz")[0] == ["xz", "-6", "--check=crc32", "-f"]
    assert compress.command(s, ".zst") == (["zstd", "-q", "--rm", "-T0", "-f"], None)


def test_compressor_warns_once_per_suffix() -> None:
    c = compress.Compressor(Settings(compress_xz_opts="-6"))
    said: List[str] = []
    c.argv(".xz", said.append)
    c.argv(".xz", said.append)
    assert len(said) == 1 and "--check=crc32" in said[0]


def test_suffix_of() -> None:
    assert compress.suffix_of(Path("a.ko.zst")) == ".zst"
    assert compress.suffix_of(Path("a.ko.gz")) == ".gz"
    assert compress.suffix_of(Path("a.ko")) == ""
    assert compress.suffix_of(Path("a.xz")) == ""


def test_failing_compressor_keeps_the_module(tmp_path: Path) -> None:
    ko = tmp_path / "m.ko"
    ko.write_bytes(b"\x7fELF module")
    result = compress.compress_file(ko, ".gz", ["gzip", "--no-such-option", "-f"])
    assert result.path == ko and result.error and "status" in result.error
    assert ko.read_bytes() == b"\x7fELF module" and not (tmp_path / "m.ko.gz").exists()


def test_compressor_leaving_the_input_removes_it(tmp_path: Path) -> None:
    ko = tmp_path / "m.ko"
    ko.write_bytes(b"data")
    result = compress.compress_file(ko, ".zst", ["zstd", "-q", "-f"])  # no --rm
    assert result == compress.CompressResult(tmp_path / "m.ko.zst")
    assert not ko.exists()
    out = tmp_path / "back.ko"
    compress.decompress_to(result.path, out)
    assert out.read_bytes() == b"data"


# ---- the appended signature --------------------------------------------------------------------------
def test_split_signature_of_unsigned_and_truncated_data() -> None:
    assert split_signature(b"\x7fELF") == (b"\x7fELF", None)
    bogus = b"x" + struct.pack(">BBBBB3xI", 0, 0, 2, 0, 0, 1000) + SIGNATURE_MAGIC
    assert split_signature(bogus) == (bogus, None)


def test_legacy_signature_with_embedded_signer_and_key() -> None:
    body = b"\x7fELF body"
    block = b"Signer" + b"\x01\xab" + b"SIG"
    data = body + block + struct.pack(">BBBBB3xI", 1, 4, 1, 6, 2, 3) + SIGNATURE_MAGIC
    assert split_signature(data)[0] == body
    info = parse_signature(data)
    assert info is not None and info.signer == "Signer" and info.sig_key == "01:AB"


def test_garbage_pkcs7_is_still_signed() -> None:
    data = b"\x7fELF" + b"\x30\x03abc" + struct.pack(">BBBBB3xI", 0, 0, 2, 0, 0, 5) + SIGNATURE_MAGIC
    info = parse_signature(data)
    assert info is not None and info.signer == ""


def test_strip_signature(tmp_path: Path) -> None:
    f = tmp_path / "m.ko"
    f.write_bytes(b"body" + b"SIG" + struct.pack(">BBBBB3xI", 0, 0, 2, 0, 0, 3) + SIGNATURE_MAGIC)
    assert signing.strip_signature(f)
    assert f.read_bytes() == b"body"
    assert not signing.strip_signature(f)


# ---- where the sign tool and the keys are ---------------------------------------------------------
def test_default_sign_tool_by_family(tmp_path: Path) -> None:
    it = tmp_path / "lib" / "modules"
    fallback = f"{it}/6.1.0-13-amd64/build/scripts/sign-file"
    # the family's location is used only when it is a file
    assert signing.default_sign_tool(Distro("debian"), "6.1.0-13-amd64", it) in (
        "/usr/lib/linux-kbuild-6.1/scripts/sign-file",
        fallback,
    )
    assert signing.default_sign_tool(Distro("gentoo"), "6.1.0-13-amd64", it) == fallback
    assert signing.default_sign_tool(Distro("fedora"), "6.1.0-13-amd64", it) == fallback


def test_debian_sign_tool_drops_the_last_dot_component(tmp_path: Path) -> None:
    tool = signing.default_sign_tool(Distro("debian"), "6.1.0-56-amd64", tmp_path)
    if Path("/usr/lib/linux-kbuild-6.1/scripts/sign-file").is_file():
        assert tool == "/usr/lib/linux-kbuild-6.1/scripts/sign-file"


def test_gentoo_keys_from_environment_make_conf_and_kernel_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    kernel = kernel_with_config(tmp_path, 'CONFIG_MODULE_SIG_KEY="certs/signing_key.pem"\n')
    gentoo = Distro("gentoo")
    monkeypatch.setattr(signing, "GENTOO_MAKE_CONF", tmp_path / "make.conf")
    monkeypatch.delenv("MODULES_SIGN_KEY", raising=False)
    monkeypatch.delenv("MODULES_SIGN_CERT", raising=False)
    pair, _ = signing.select_keys({}, gentoo, kernel)
    assert pair == signing.KeyPair("certs/signing_key.pem", "certs/signing_key.pem")
    (tmp_path / "make.conf").write_text('MODULES_SIGN_KEY="/k.pem"\nMODULES_SIGN_CERT=/c.pem\n')
    assert signing.select_keys({}, gentoo, kernel)[0] == signing.KeyPair("/k.pem", "/c.pem")
    monkeypatch.setenv("MODULES_SIGN_KEY", "/env.pem")
    assert signing.select_keys({}, gentoo, kernel)[0].key == "/env.pem"


def test_default_keys_and_configured_ones(tmp_path: Path) -> None:
    kernel = kernel_with_config(tmp_path, "")
    pair, _ = signing.select_keys({}, Distro("debian"), kernel)
    assert pair == signing.KeyPair("/var/lib/dkms/mok.key", "/var/lib/dkms/mok.pub")
    pair, _ = signing.select_keys({"mok_signing_key": "pkcs11:id=1"}, Distro("debian"), kernel)
    assert pair == signing.KeyPair("pkcs11:id=1", "/var/lib/dkms/mok.pub")


def test_ubuntu_without_update_secureboot_policy_is_off(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(signing, "UBUNTU_KEY", str(tmp_path / "MOK.priv"))
    _pair, reason = signing.select_keys({}, Distro("ubuntu"), kernel_with_config(tmp_path, ""))
    assert "update-secureboot-policy not found" in reason


# ---- the plan --------------------------------------------------------------------------------------
def test_plan_reasons(tmp_path: Path) -> None:
    debian = Distro("debian")
    with_hash = kernel_with_config(tmp_path, 'CONFIG_MODULE_SIG=y\nCONFIG_MODULE_SIG_HASH="sha512"\n')
    off = signing.plan_for(settings(try_sign_modules="false"), debian, with_hash, Recorder())
    assert not off.enabled and "try_sign_modules=false" in off.reason and not off.problem
    missing = Kernel("6.1.0-13-amd64", "x86_64", tmp_path, tmp_path / "nope")
    assert "not found" in signing.plan_for(settings(), debian, missing, Recorder()).reason
    (tmp_path / "n").mkdir()
    no_hash = kernel_with_config(tmp_path / "n", "CONFIG_MODULE_SIG=y\n")
    plan = signing.plan_for(settings(), debian, no_hash, Recorder())
    assert "without module signing facility" in plan.reason and not plan.problem
    said = Recorder()
    plan = signing.plan_for(settings(sign_file=str(tmp_path / "no-tool")), debian, with_hash, said)
    assert plan.problem and "not found" in plan.reason and f"Sign command: {tmp_path}/no-tool" in said.text


def test_plan_with_pkcs11_key_needs_only_the_certificate(tmp_path: Path) -> None:
    tool = executable(tmp_path / "sign", "exit 0\n")
    cert = tmp_path / "cert.der"
    kernel = kernel_with_config(tmp_path, 'CONFIG_MODULE_SIG_HASH="sha512"\n')
    s = settings(sign_file=str(tool), mok_signing_key="pkcs11:token=t;object=o", mok_certificate=str(cert))
    plan = signing.plan_for(s, Distro("debian"), kernel, Recorder(), signing.SecureBoot())
    assert plan.problem and "Certificate file" in plan.reason
    cert.write_bytes(b"der")
    plan = signing.plan_for(s, Distro("debian"), kernel, Recorder(), signing.SecureBoot())
    assert plan == signing.SigningPlan("sha512", str(tool), "pkcs11:token=t;object=o", str(cert))


def test_sign_module_reports_tool_failures(tmp_path: Path) -> None:
    ko = tmp_path / "m.ko"
    ko.write_bytes(b"\x7fELF")
    failing = executable(tmp_path / "fail", "echo 'token locked'; exit 3\n")
    plan = signing.SigningPlan("sha256", str(failing), "k", "c")
    assert signing.sign_module(plan, ko) == "token locked"
    silent = executable(tmp_path / "silent", "exit 0\n")
    problem = signing.sign_module(signing.SigningPlan("sha256", str(silent), "k", "c"), ko)
    assert problem and "appended no signature" in problem
    gone = signing.sign_module(signing.SigningPlan("sha256", str(tmp_path / "gone"), "k", "c"), ko)
    assert gone and "not found" in gone


def test_in_chroot_honours_fakechroot(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKECHROOT", "true")
    assert signing.in_chroot()


# ---- Secure Boot ---------------------------------------------------------------------------------
def fake_mokutil(tmp_path: Path, sb: str, test_key: str) -> Path:
    log = tmp_path / "mokutil.log"
    executable(
        tmp_path / "bin" / "mokutil",
        f'echo "$@" >> {log}\ncase "$1" in\n--sb-state) echo "{sb}";;\n--test-key) echo "$2 {test_key}";;\n'
        "*) exit 9;;\nesac\n",
    )
    return log


@pytest.fixture
def efi(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    d = tmp_path / "efi"
    d.mkdir()
    monkeypatch.setenv(signing.EFI_DIR_ENV, str(d))
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}:{os.environ['PATH']}")
    return d


def test_secure_boot_enabled_not_enrolled_gives_the_import_command(tmp_path: Path, efi: Path) -> None:
    log = fake_mokutil(tmp_path, "SecureBoot enabled", "is not enrolled")
    sb = signing.SecureBoot()
    said = Recorder()
    sb.report("/k/mok.pub", said)
    sb.report("/k/mok.pub", said)
    assert "notice: To enroll it, run: mokutil --import /k/mok.pub" in said.lines[1]
    assert said.lines[0].startswith(
        "warn: Secure Boot is enabled and the certificate /k/mok.pub is not enrolled"
    )
    # one state check per process, one test per certificate; never an import
    assert log.read_text().splitlines() == ["--sb-state", "--test-key /k/mok.pub"]


@pytest.mark.parametrize(
    ("sb", "answer", "expected"),
    [
        ("SecureBoot enabled", "is already enrolled", "is enrolled"),
        ("SecureBoot enabled", "is already in the enrollment request", "queued for enrollment"),
        ("SecureBoot disabled", "is not enrolled", "Secure Boot is disabled"),
    ],
)
def test_secure_boot_other_answers(tmp_path: Path, efi: Path, sb: str, answer: str, expected: str) -> None:
    fake_mokutil(tmp_path, sb, answer)
    said = Recorder()
    signing.SecureBoot().report("/k/mok.pub", said)
    assert len(said.lines) == 1 and said.lines[0].startswith("info: ") and expected in said.text


def test_secure_boot_silent_without_efi(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    log = fake_mokutil(tmp_path, "SecureBoot enabled", "is not enrolled")
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}:{os.environ['PATH']}")
    monkeypatch.setenv(signing.EFI_DIR_ENV, str(tmp_path / "no-efi"))
    said = Recorder()
    signing.SecureBoot().report("/k/mok.pub", said)
    assert said.lines == [] and not log.exists()


def test_secure_boot_silent_when_efi_variables_are_unsupported(tmp_path: Path, efi: Path) -> None:
    fake_mokutil(tmp_path, "EFI variables are not supported on this system", "is not enrolled")
    said = Recorder()
    signing.SecureBoot().report("/k/mok.pub", said)
    assert said.lines == []
