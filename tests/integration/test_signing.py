"""Module signing on real builds: sign-file, openssl keys, $kernelver keys, generate_mok, dkms sign, Secure Boot."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Dict, List, Optional

import pytest

from tests.conftest import ARCH, Scratch
from tests.support.kmod import certificate_serial, executable

pytestmark = pytest.mark.integration

SIGNER = "DKMS module signing key"


def configure(scratch: Scratch, extra: str = "") -> Dict[str, Path]:
    """Keys under the scratch root (never the host's /var/lib/dkms), plus ``extra`` lines."""
    keys = scratch.root / "keys"
    (scratch.etc / "framework.conf").write_text(
        f"mok_signing_key={keys}/mok.key\nmok_certificate={keys}/mok.pub\n{extra}"
    )
    return {"key": keys / "mok.key", "cert": keys / "mok.pub"}


def modinfo(path: Path, field: str) -> str:
    return subprocess.run(["modinfo", "-F", field, str(path)], capture_output=True, text=True).stdout.strip()


def key_of(path: Path) -> str:
    """modinfo's sig_key without the colons (openssl's serial form)."""
    return modinfo(path, "sig_key").replace(":", "").upper()


def built(scratch: Scratch, k: str, name: str = "hello.ko", m: str = "hello") -> Path:
    return scratch.dkms_tree / m / "1.0" / k / ARCH / "module" / name


def installed(scratch: Scratch, k: str, name: str = "hello.ko") -> Path:
    return scratch.install_tree / k / "updates" / "dkms" / name


def test_build_signs_with_generated_key(scratch: Scratch, kernel: str) -> None:
    paths = configure(scratch)
    scratch.add_source("hello")
    r = scratch.ok("build", "hello/1.0", "-k", kernel)
    assert "Sign command: /usr/lib/linux-kbuild-6.1/scripts/sign-file" in r.lines
    assert f"Signing key: {paths['key']}" in r.lines
    assert f"Public certificate (MOK): {paths['cert']}" in r.lines
    assert r.lines.count("Signing module hello.ko") == 1
    assert r.err == ""
    assert paths["key"].stat().st_mode & 0o777 == 0o600
    assert paths["cert"].stat().st_mode & 0o777 == 0o644
    ko = built(scratch, kernel)
    assert modinfo(ko, "signer") == SIGNER
    assert modinfo(ko, "sig_hashalgo") == "sha256"  # CONFIG_MODULE_SIG_HASH of the Debian kernels
    assert key_of(ko) == certificate_serial(paths["cert"])
    assert ko.read_bytes().endswith(b"~Module signature appended~\n")


def test_kernelver_in_key_paths_gives_one_key_per_kernel(scratch: Scratch, kernels: List[str]) -> None:
    k1, k2 = kernels[:2]
    keys = scratch.root / "keys"
    (scratch.etc / "framework.conf").write_text(
        f"mok_signing_key={keys}/$kernelver.key\nmok_certificate={keys}/$kernelver.der\n"
    )
    scratch.add_source("hello")
    r = scratch.ok("build", "hello/1.0", "-k", k1, "-k", k2)
    assert r.out.count("Certificate or key are missing") == 2
    assert sorted(p.name for p in keys.iterdir()) == sorted(
        [f"{k1}.key", f"{k1}.der", f"{k2}.key", f"{k2}.der"]
    )
    s1, s2 = certificate_serial(keys / f"{k1}.der"), certificate_serial(keys / f"{k2}.der")
    assert s1 != s2
    assert key_of(built(scratch, k1)) == s1
    assert key_of(built(scratch, k2)) == s2


def test_pkcs11_key_is_passed_through_untouched(scratch: Scratch, kernel: str) -> None:
    args = scratch.root / "sign-args"
    tool = executable(scratch.root / "bin" / "sign-file", f'printf "%s\\n" "$@" > {args}\n')
    cert = scratch.root / "token.der"
    cert.write_bytes(b"certificate from the token")
    uri = "pkcs11:token=dkms;object=mok;type=private?pin-value=1234"
    (scratch.etc / "framework.conf").write_text(
        f"sign_file={tool}\nmok_signing_key='{uri}'\nmok_certificate={cert}\n"
    )
    scratch.add_source("hello")
    r = scratch.ok("build", "hello/1.0", "-k", kernel)
    argv = args.read_text().splitlines()
    assert argv[:3] == ["sha256", uri, str(cert)]
    assert argv[3].endswith("/module/hello.ko") and len(argv) == 4
    assert "Certificate or key are missing" not in r.out  # no key generated for a token
    assert f"Signing key: {uri}" in r.lines
    # the fake tool signs nothing: said, and the build still succeeds
    assert "Failed to sign module 'hello.ko'" in r.err


def test_missing_sign_tool_warns_and_builds_unsigned(scratch: Scratch, kernel: str) -> None:
    paths = configure(scratch, f"sign_file={scratch.root}/no/sign-file\n")
    scratch.add_source("hello")
    r = scratch.ok("build", "hello/1.0", "-k", kernel)
    assert f"Warning: Binary {scratch.root}/no/sign-file not found, modules won't be signed" in r.err
    assert "Signing module" not in r.out
    assert modinfo(built(scratch, kernel), "signer") == ""
    assert not paths["key"].exists()


def test_failing_sign_tool_warns_and_builds_unsigned(scratch: Scratch, kernel: str) -> None:
    tool = executable(scratch.root / "bin" / "sign-file", "echo 'sign-file: token is locked' >&2; exit 2\n")
    configure(scratch, f"sign_file={tool}\n")
    scratch.add_source("hello")
    r = scratch.ok("build", "hello/1.0", "-k", kernel)
    assert "Warning: Failed to sign module 'hello.ko'! It stays unsigned." in r.err
    assert "sign-file: token is locked" in r.err
    assert modinfo(built(scratch, kernel), "signer") == ""
    assert "hello/1.0, " + kernel in "\n".join(scratch.status())


def config_without_signing(scratch: Scratch, kernel: str) -> Path:
    text = Path(f"/lib/modules/{kernel}/build/.config").read_text()
    edited = scratch.root / "config-nosig"
    edited.write_text("".join(line for line in text.splitlines(True) if "CONFIG_MODULE_SIG" not in line))
    return edited


def test_kernel_without_module_signing_is_off(scratch: Scratch, kernel: str) -> None:
    paths = configure(scratch)
    scratch.add_source("hello")
    r = scratch.ok(
        "build", "hello/1.0", "-k", kernel, "--config", str(config_without_signing(scratch, kernel))
    )
    assert "The kernel is built without module signing facility, modules won't be signed" in r.lines
    assert r.err == "" and "Signing module" not in r.out
    assert modinfo(built(scratch, kernel), "signer") == ""
    assert not paths["key"].exists()


def test_try_sign_modules_false_is_off(scratch: Scratch, kernel: str) -> None:
    paths = configure(scratch, "try_sign_modules=false\n")
    scratch.add_source("hello")
    r = scratch.ok("build", "hello/1.0", "-k", kernel)
    assert any("try_sign_modules=false" in line for line in r.lines)
    assert "Sign command" not in r.out and "Signing module" not in r.out
    assert modinfo(built(scratch, kernel), "signer") == ""
    assert not paths["key"].exists()


def test_generate_mok_creates_once(scratch: Scratch, kernel: str) -> None:
    paths = configure(scratch)
    r = scratch.ok("generate_mok", "-k", kernel, trees=False)
    assert "Certificate or key are missing, generating self signed certificate for MOK..." in r.lines
    assert paths["key"].stat().st_mode & 0o777 == 0o600
    assert paths["cert"].stat().st_mode & 0o777 == 0o644
    text = subprocess.run(
        ["openssl", "x509", "-inform", "DER", "-in", str(paths["cert"]), "-noout", "-text"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "CN = DKMS module signing key" in text and "Code Signing" in text and "2048 bit" in text
    before = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in paths.values()}
    r = scratch.ok("generate_mok", "-k", kernel, trees=False)
    assert "generating" not in r.out
    assert r.lines == [f"Signing key: {paths['key']}", f"Public certificate (MOK): {paths['cert']}"]
    assert {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in paths.values()} == before


def test_generate_mok_fails_when_keys_cannot_be_made(scratch: Scratch, kernel: str) -> None:
    blocker = scratch.root / "file"
    blocker.write_text("")
    (scratch.etc / "framework.conf").write_text(
        f"mok_signing_key={blocker}/k.key\nmok_certificate={blocker}/c.der\n"
    )
    r = scratch.dkms("generate_mok", "-k", kernel, trees=False)
    assert r.rc == 1 and "can't be generated" in r.err


def install_with_suffix(scratch: Scratch, kernel: str, suffix: str) -> None:
    """Make the scratch kernel look compressed, then install hello for it."""
    marker = scratch.install_tree / kernel / "kernel" / "drivers" / f"dummy.ko{suffix}"
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_bytes(b"")
    scratch.add_source("hello")
    scratch.ok("install", "hello/1.0", "-k", kernel)


@pytest.mark.parametrize("suffix", ["", ".zst"])
def test_sign_after_key_rotation_updates_built_and_installed(
    scratch: Scratch, kernel: str, suffix: str
) -> None:
    paths = configure(scratch)
    install_with_suffix(scratch, kernel, suffix)
    name = f"hello.ko{suffix}"
    old = certificate_serial(paths["cert"])
    assert key_of(installed(scratch, kernel, name)) == old
    for p in paths.values():
        p.unlink()
    scratch.ok("generate_mok", "-k", kernel, trees=False)
    new = certificate_serial(paths["cert"])
    assert new != old
    r = scratch.ok("sign")
    assert f"Updating {installed(scratch, kernel, name)}" in r.lines
    assert r.out.count("Running depmod") == 1
    for f in (built(scratch, kernel, name), installed(scratch, kernel, name)):
        assert key_of(f) == new, f
        assert modinfo(f, "signer") == SIGNER
    assert built(scratch, kernel, name).read_bytes() == installed(scratch, kernel, name).read_bytes()
    # exactly one signature, not one appended to the old one
    if not suffix:
        data = built(scratch, kernel, name).read_bytes()
        assert data.count(b"~Module signature appended~\n") == 1
    assert scratch.status() == [f"hello/1.0, {kernel}, {ARCH}: installed"]
    # a second run is harmless and restricted forms work
    scratch.ok("sign", "hello/1.0", "-k", kernel)
    scratch.ok("sign", "hello", "--all")
    assert scratch.status() == [f"hello/1.0, {kernel}, {ARCH}: installed"]


def test_sign_reports_kernels_that_cannot_sign(scratch: Scratch, kernel: str) -> None:
    configure(scratch)
    scratch.add_source("hello")
    scratch.ok("build", "hello/1.0", "-k", kernel)
    before = built(scratch, kernel).read_bytes()
    r = scratch.dkms("sign", "-k", kernel, "--config", str(config_without_signing(scratch, kernel)))
    assert r.rc == 1
    assert (
        f"Cannot sign modules for kernel {kernel} ({ARCH}): The kernel is built without module signing"
        in r.err
    )
    assert built(scratch, kernel).read_bytes() == before
    r = scratch.dkms("sign", "nosuch/1.0")
    assert r.rc == 3 and "not located" in r.err


def test_sign_only_touches_the_requested_kernel(scratch: Scratch, kernels: List[str]) -> None:
    k1, k2 = kernels[:2]
    configure(scratch)
    scratch.add_source("hello")
    scratch.ok("build", "hello/1.0", "-k", k1, "-k", k2)
    untouched = built(scratch, k2).read_bytes()
    r = scratch.ok("sign", "-k", k1)
    assert f"Kernel {k1} ({ARCH}):" in r.lines and k2 not in r.out
    assert built(scratch, k2).read_bytes() == untouched


# ---- Secure Boot -----------------------------------------------------------------------------------
def mokutil_env(scratch: Scratch, sb: Optional[str], answer: str = "") -> Dict[str, str]:
    """A fake mokutil first in PATH and a fake EFI dir (this VM boots without EFI)."""
    efi = scratch.root / "efi"
    efi.mkdir(exist_ok=True)
    env = {"PYDKMS_EFI_DIR": str(efi)}
    if sb is not None:
        log = scratch.root / "mokutil.log"
        executable(
            scratch.root / "bin" / "mokutil",
            f'echo "$@" >> {log}\ncase "$1" in\n--sb-state) echo "{sb}";;\n'
            f'--test-key) echo "$2 {answer}";;\n*) exit 9;;\nesac\n',
        )
        env["PATH"] = f"{scratch.root / 'bin'}:{os.environ['PATH']}"
    return env


ALARMING = ("Secure Boot", "mokutil --", "enroll", "refuse", "Warning")


def test_secure_boot_enabled_and_not_enrolled_prints_the_import_command(
    scratch: Scratch, kernel: str
) -> None:
    paths = configure(scratch)
    env = mokutil_env(scratch, "SecureBoot enabled", "is not enrolled")
    r = scratch.ok("generate_mok", "-k", kernel, trees=False, env=env)
    assert f"mokutil --import {paths['cert']}" in r.err
    assert "Secure Boot is enabled and the certificate" in r.err
    scratch.add_source("hello")
    r = scratch.ok("build", "hello/1.0", "-k", kernel, env=env)
    assert f"mokutil --import {paths['cert']}" in r.err
    calls = (scratch.root / "mokutil.log").read_text().splitlines()
    assert not any("--import" in c for c in calls)  # never enrolls
    assert calls.count("--sb-state") == 2  # once per process


def test_secure_boot_enrolled_is_said_quietly(scratch: Scratch, kernel: str) -> None:
    paths = configure(scratch)
    r = scratch.ok(
        "generate_mok",
        "-k",
        kernel,
        trees=False,
        env=mokutil_env(scratch, "SecureBoot enabled", "is already enrolled"),
    )
    assert f"Secure Boot is enabled; the certificate {paths['cert']} is enrolled." in r.lines
    assert r.err == ""


def test_no_mokutil_says_nothing_alarming(scratch: Scratch, kernel: str) -> None:
    configure(scratch)
    env = mokutil_env(scratch, None)  # EFI present, but no mokutil in PATH
    env["PATH"] = "/usr/sbin:/usr/bin:/sbin:/bin"
    scratch.add_source("hello")
    for r in (
        scratch.ok("generate_mok", "-k", kernel, trees=False, env=env),
        scratch.ok("build", "hello/1.0", "-k", kernel, env=env),
    ):
        assert not any(word in r.out + r.err for word in ALARMING), r


# ---- status ------------------------------------------------------------------------------------------
def test_status_verbose_and_json_say_who_signed(scratch: Scratch, kernels: List[str]) -> None:
    k1, k2 = kernels[:2]
    paths = configure(scratch)
    scratch.add_source("hello")
    scratch.ok("install", "hello/1.0", "-k", k1)
    scratch.ok("build", "hello/1.0", "-k", k2, "--config", str(config_without_signing(scratch, k2)))
    plain = scratch.status()
    assert sorted(plain) == sorted([f"hello/1.0, {k1}, {ARCH}: installed", f"hello/1.0, {k2}, {ARCH}: built"])
    key = certificate_serial(paths["cert"], colons=True)
    verbose = scratch.ok("status", "--verbose").lines
    i1 = verbose.index(f"hello/1.0, {k1}, {ARCH}: installed")
    assert verbose[i1 + 1] == f'  hello.ko: signed by "{SIGNER}" (key {key}, sha256)'
    i2 = verbose.index(f"hello/1.0, {k2}, {ARCH}: built")
    assert verbose[i2 + 1] == "  hello.ko: not signed"
    assert [line for line in verbose if not line.startswith("  ")] == plain
    doc = json.loads(scratch.ok("status", "--json").out)
    assert doc["schema_version"] == 1 and len(doc["entries"]) == 2
    by_kernel = {m["kernel"]: m for m in doc["built_modules"]}
    assert by_kernel[k1]["signed"] is True
    assert by_kernel[k1]["signer"] == SIGNER and by_kernel[k1]["sig_key"] == key
    assert by_kernel[k1]["sig_hashalgo"] == "sha256"
    assert by_kernel[k1]["file"] == str(built(scratch, k1))
    assert by_kernel[k2]["signed"] is False and by_kernel[k2]["signer"] is None
    assert {m["module"] for m in doc["built_modules"]} == {"hello"}
