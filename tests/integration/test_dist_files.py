"""The distribution integration files of ``dist/``, installed by ``make install-integration``.

spec/autoinstall-hooks.md §5 (dkms_autoinstaller), §6 (common.postinst), §7 (kernel hooks,
kernel-install plugin, systemd unit, what packaged maintainer scripts call), §8 (files installed);
defects.md D-26, D-27, P-17 and the policies of §2.

The scripts run at their real paths in a private mount namespace (:class:`DistSystem`). Their
logic is tested against a recording stand-in for ``dkms``; the dh_dkms package postinst and the
kernel upgrade run this checkout's pydkms and build real modules against real headers.
"""

from __future__ import annotations

import configparser
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Dict, List

import pytest

from tests.conftest import ARCH, EXAMPLES, MODULES, REPO, Result
from tests.support.dist import DistSystem
from tests.support.upstream import isolation_unavailable

DIST = REPO / "dist"

#: Kernels that exist only inside the private system (a ``build/include`` dir stands for headers).
K1, K2, K3 = "6.1.0-90-amd64", "6.1.0-91-amd64", "6.1.0-92-amd64"
#: A running kernel that is not installed in the private system (a chroot's host kernel).
HOST_KERNEL = "5.10.0-99-amd64"

POSTINST = "/etc/kernel/postinst.d/dkms"
HEADER_POSTINST = "/etc/kernel/header_postinst.d/dkms"
PREINST = "/etc/kernel/preinst.d/dkms"
PRERM = "/etc/kernel/prerm.d/dkms"
AUTOINSTALLER = "/usr/lib/dkms/dkms_autoinstaller"
COMMON_POSTINST = "/usr/lib/dkms/common.postinst"
KERNEL_INSTALL = "/usr/lib/kernel/install.d/40-dkms.install"
PACMAN = "/usr/lib/dkms/dkms-pacman"


def _needs_isolation() -> None:
    reason = isolation_unavailable()
    if reason:
        pytest.skip(reason)


def make_system(tmp_path: Path, family: str = "debian", wrapper: bool = True) -> DistSystem:
    _needs_isolation()
    return DistSystem.create(tmp_path / f"system-{family}", family=family, wrapper=wrapper)


@pytest.fixture
def system(tmp_path: Path) -> DistSystem:
    """A Debian-family system with the fake dkms first in PATH and no kernels."""
    s = make_system(tmp_path)
    s.fake_dkms()
    return s


# --------------------------------------------------------------------------------------------
# The install command (spec §8)

COMMON_FILES = {
    "usr/lib/dkms/common.postinst": 0o755,
    "usr/sbin/dkms": 0o755,
    "etc/dkms/framework.conf": 0o644,
}
FAMILY_FILES: Dict[str, Dict[str, int]] = {
    "debian": {
        "usr/lib/dkms/dkms_autoinstaller": 0o755,
        "etc/kernel/postinst.d/dkms": 0o755,
        "etc/kernel/header_postinst.d/dkms": 0o755,
        "etc/kernel/preinst.d/dkms": 0o755,
        "etc/kernel/prerm.d/dkms": 0o755,
        "usr/lib/kernel/install.d/40-dkms.install": 0o755,
    },
    "rpm": {
        "usr/lib/kernel/install.d/40-dkms.install": 0o755,
        "usr/lib/systemd/system/dkms.service": 0o644,
    },
    "arch": {
        "usr/lib/kernel/install.d/40-dkms.install": 0o755,
        "usr/share/libalpm/hooks/70-dkms-install.hook": 0o644,
        "usr/share/libalpm/hooks/71-dkms-remove.hook": 0o644,
        "usr/lib/dkms/dkms-pacman": 0o755,
    },
}
#: installed path -> file of dist/ it is a copy of
SOURCES = {
    "usr/lib/dkms/common.postinst": "common/common.postinst",
    "etc/dkms/framework.conf": "etc/framework.conf",
    "usr/lib/dkms/dkms_autoinstaller": "common/dkms_autoinstaller",
    "etc/kernel/postinst.d/dkms": "debian/kernel/postinst.d/dkms",
    "etc/kernel/header_postinst.d/dkms": "debian/kernel/postinst.d/dkms",
    "etc/kernel/preinst.d/dkms": "debian/kernel/preinst.d/dkms",
    "etc/kernel/prerm.d/dkms": "debian/kernel/prerm.d/dkms",
    "usr/lib/systemd/system/dkms.service": "systemd/dkms.service",
    "usr/share/libalpm/hooks/70-dkms-install.hook": "pacman/70-dkms-install.hook",
    "usr/share/libalpm/hooks/71-dkms-remove.hook": "pacman/71-dkms-remove.hook",
    "usr/lib/dkms/dkms-pacman": "pacman/dkms-pacman",
}
SCRIPTS = [
    "common/common.postinst",
    "common/dkms_autoinstaller",
    "debian/kernel/postinst.d/dkms",
    "debian/kernel/preinst.d/dkms",
    "debian/kernel/prerm.d/dkms",
    "kernel-install/40-dkms.install.debian",
    "kernel-install/40-dkms.install.rpm",
    "pacman/dkms-pacman",
]


def make(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["make", "-s", *args], cwd=cwd, capture_output=True, text=True)


def installed_files(root: Path) -> Dict[str, int]:
    return {
        str(p.relative_to(root)): p.stat().st_mode & 0o7777
        for p in sorted(root.rglob("*"))
        if p.is_file() or p.is_symlink()
    }


@pytest.mark.parametrize("family", ["debian", "rpm", "arch"])
def test_install_integration_places_the_family_files_with_their_modes(tmp_path: Path, family: str) -> None:
    dest = tmp_path / "dest"
    r = make("install-integration", f"FAMILY={family}", f"DESTDIR={dest}", f"PYTHON={sys.executable}")
    assert r.returncode == 0, r.stdout + r.stderr
    assert installed_files(dest) == {**COMMON_FILES, **FAMILY_FILES[family]}
    assert (dest / "etc/dkms/framework.conf.d").is_dir()
    for rel, src in SOURCES.items():
        if (dest / rel).exists():
            assert (dest / rel).read_bytes() == (DIST / src).read_bytes(), rel
    variant = "debian" if family == "debian" else "rpm"
    plugin = dest / "usr/lib/kernel/install.d/40-dkms.install"
    assert plugin.read_bytes() == (DIST / "kernel-install" / f"40-dkms.install.{variant}").read_bytes()
    # /usr/sbin/dkms runs pydkms with the chosen interpreter
    v = subprocess.run(
        [str(dest / "usr/sbin/dkms"), "--version"],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO / "src")},
    )
    assert (v.returncode, v.stdout) == (0, "dkms-3.2.2\n"), v.stderr


def test_install_without_wrapper_and_uninstall(tmp_path: Path) -> None:
    dest = tmp_path / "dest"
    assert make("install-integration", "FAMILY=debian", f"DESTDIR={dest}", "WRAPPER=no").returncode == 0
    assert installed_files(dest) == {
        "usr/lib/dkms/common.postinst": 0o755,
        "etc/dkms/framework.conf": 0o644,
        **FAMILY_FILES["debian"],
    }
    # runs from any directory
    r = make(
        "-f",
        str(REPO / "Makefile"),
        "uninstall-integration",
        "FAMILY=debian",
        f"DESTDIR={dest}",
        cwd=tmp_path,
    )
    assert r.returncode == 0, r.stderr
    assert installed_files(dest) == {}


def test_a_changed_framework_conf_survives_reinstall_and_uninstall(tmp_path: Path) -> None:
    dest = tmp_path / "dest"
    conf = dest / "etc/dkms/framework.conf"
    args = ("FAMILY=rpm", f"DESTDIR={dest}", "WRAPPER=no")
    assert make("install-integration", *args).returncode == 0
    edited = conf.read_text() + 'parallel_jobs="3"\n'
    conf.write_text(edited)
    (dest / "etc/dkms/framework.conf.d/local.conf").write_text('verbose="y"\n')
    r = make("install-integration", *args)
    assert r.returncode == 0, r.stderr
    assert f"keeping {conf} (changed locally)" in r.stdout
    assert conf.read_text() == edited
    r = make("uninstall-integration", *args)
    assert r.returncode == 0, r.stderr
    assert installed_files(dest) == {
        "etc/dkms/framework.conf": 0o644,
        "etc/dkms/framework.conf.d/local.conf": 0o644,
    }
    assert conf.read_text() == edited
    # an unchanged one goes; so do the directories once empty
    (dest / "etc/dkms/framework.conf.d/local.conf").unlink()
    shutil.copy(DIST / "etc/framework.conf", conf)
    assert make("uninstall-integration", *args).returncode == 0
    assert not (dest / "etc").exists() or not any((dest / "etc").rglob("*"))


def test_install_integration_refuses_an_unknown_family(tmp_path: Path) -> None:
    r = make("install-integration", "FAMILY=gentoo", f"DESTDIR={tmp_path}")
    assert r.returncode != 0
    assert "FAMILY must be debian, rpm or arch" in r.stderr
    assert not any(tmp_path.iterdir())


def test_readme_documents_the_install_command() -> None:
    readme = (REPO / "README.md").read_text()
    assert "## Distribution integration files" in readme
    assert "make install-integration FAMILY=" in readme


@pytest.mark.parametrize("script", SCRIPTS)
def test_scripts_are_posix_sh(script: str) -> None:
    path = DIST / script
    assert path.read_text().startswith("#!/bin/sh\n")
    assert os.access(path, os.X_OK)
    for shell in ("dash", "sh"):
        if shutil.which(shell):
            r = subprocess.run([shell, "-n", str(path)], capture_output=True, text=True)
            assert r.returncode == 0, r.stderr
            break


def test_scripts_are_shellcheck_clean() -> None:
    if shutil.which("shellcheck") is None:
        pytest.skip("shellcheck is not installed")
    r = subprocess.run(["shellcheck", "-s", "sh", *SCRIPTS], cwd=DIST, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout


def test_systemd_unit_is_the_one_of_the_spec() -> None:
    unit = configparser.ConfigParser(strict=True, interpolation=None)
    unit.optionxform = str  # type: ignore[assignment,method-assign]
    unit.read_string((DIST / "systemd" / "dkms.service").read_text())
    assert {s: dict(unit[s]) for s in unit.sections()} == {
        "Unit": {
            "Description": unit["Unit"]["Description"],
            "Documentation": "man:dkms(8)",
            "Before": "network-pre.target graphical.target",
        },
        "Service": {
            "Type": "oneshot",
            "RemainAfterExit": "true",
            "ExecStart": "/usr/sbin/dkms autoinstall --verbose --kernelver %v",
        },
        "Install": {"WantedBy": "multi-user.target"},
    }
    assert "pydkms" in unit["Unit"]["Description"]


def test_autoinstaller_has_the_lsb_and_chkconfig_headers() -> None:
    text = (DIST / "common" / "dkms_autoinstaller").read_text()
    for line in (
        "# chkconfig: 345 04 04",
        "# Provides: dkms_autoinstaller dkms",
        "# Default-Start: 3 4 5",
        "# Default-Stop: 0 1 2 6",
        "# Required-Start: $local_fs",
        "# Required-Stop: $local_fs",
    ):
        assert "\n" + line + "\n" in text, line


# --------------------------------------------------------------------------------------------
# Debian kernel hooks (spec §7.1) and dkms_autoinstaller (§5), against the fake dkms


def run_each(system: DistSystem, commands: List[str]) -> List[str]:
    """Run each sh command line in one private system; return "<exit> <command>" per command."""
    script = "\n".join(f"{c} >/dev/null 2>&1; printf '%s %s\\n' \"$?\" {shlex.quote(c)}" for c in commands)
    r = system.sh(script)
    assert r.rc == 0, str(r)
    return r.lines


def test_hooks_without_a_kernel_version_do_nothing(tmp_path: Path) -> None:
    """[D-27] No fallback to the running kernel: exit 0 without calling dkms."""
    for family, commands in (
        (
            "debian",
            [
                *(f'{hook} ""' for hook in (POSTINST, HEADER_POSTINST, PREINST, PRERM)),
                *(hook for hook in (POSTINST, HEADER_POSTINST, PREINST, PRERM)),
                f'{KERNEL_INSTALL} add ""',
                f'{KERNEL_INSTALL} remove ""',
            ],
        ),
        ("rpm", [f'{KERNEL_INSTALL} add ""', f'{KERNEL_INSTALL} remove ""', f"{KERNEL_INSTALL} add"]),
    ):
        s = make_system(tmp_path, family)
        s.fake_dkms(autoinstall=11, kernel_prerm=14, kernel_preinst=14, kernel_postinst=11)
        s.fake_uname(K1)
        s.add_kernel(K1)
        assert run_each(s, commands) == [f"0 {c}" for c in commands]
        assert s.calls() == [], family


@pytest.mark.parametrize("hook", [PREINST, PRERM])
def test_preinst_and_prerm_always_exit_0(system: DistSystem, hook: str) -> None:
    action = "kernel_" + hook.split("/")[3].split(".")[0]
    system.fake_dkms(**{action: 14})
    r = system.run([hook, K1, f"/boot/vmlinuz-{K1}"])
    assert r.rc == 0, str(r)
    assert system.calls() == [f"dkms {action} -k {K1}"]
    assert f"'dkms {action} -k {K1}' failed (exit status 14)" in r.err
    system.set_rc(action, 0)
    r = system.run([hook, K1])
    assert (r.rc, r.err) == (0, "")


def test_preinst_and_prerm_without_dkms(tmp_path: Path) -> None:
    s = make_system(tmp_path, wrapper=False)
    assert run_each(s, [f"{PREINST} {K1}", f"{PRERM} {K1}"]) == [f"0 {PREINST} {K1}", f"0 {PRERM} {K1}"]


@pytest.mark.parametrize("hook", [POSTINST, HEADER_POSTINST])
@pytest.mark.parametrize(("autoinstall_rc", "hook_rc"), [(0, 0), (11, 1), (21, 1)])
def test_postinst_hook_runs_the_autoinstaller(
    system: DistSystem, hook: str, autoinstall_rc: int, hook_rc: int
) -> None:
    """[P-17] the Debian postinst hook passes an autoinstall failure on to the kernel package."""
    system.add_kernel(K1)
    system.fake_dkms(autoinstall=autoinstall_rc)
    r = system.run([hook, K1, f"/boot/vmlinuz-{K1}"])
    assert r.rc == hook_rc, str(r)
    assert system.calls() == [f"dkms autoinstall --kernelver {K1}"]
    assert f"dkms: running auto installation service for kernel {K1}\n" in r.out
    if autoinstall_rc:
        assert f"ERROR: autoinstall for kernel {K1} failed (dkms exit status {autoinstall_rc})" in r.err
        assert f"dkms autoinstall -k {K1}" in r.err
    if autoinstall_rc == 11:
        assert "make.log" in r.err
    if not autoinstall_rc:
        assert r.err == ""


def test_postinst_hook_without_headers_skips(system: DistSystem) -> None:
    system.add_kernel(K1, headers=False)
    r = system.run([POSTINST, K1])
    assert r.rc == 0, str(r)
    assert r.out == (
        f"dkms: autoinstall for kernel {K1} was skipped since the kernel headers for this kernel "
        "do not seem to be installed\n"
    )
    assert system.calls() == []


def test_autoinstaller_table(system: DistSystem) -> None:
    """spec §5: start [K] (K defaults to uname -r), the no-op actions, usage exit 2."""
    system.add_kernel(K1)
    system.add_kernel(K2)
    system.fake_uname(K2)
    noops = [f"{AUTOINSTALLER} {a}" for a in ("stop", "restart", "force-reload", "status", "reload")]
    commands = [f"{AUTOINSTALLER} start {K1}", f"{AUTOINSTALLER} start", *noops]
    assert run_each(system, commands) == [f"0 {c}" for c in commands]
    assert system.calls() == [f"dkms autoinstall --kernelver {K1}", f"dkms autoinstall --kernelver {K2}"]
    for args in (["bogus"], []):
        r = system.run([AUTOINSTALLER, *args])
        assert r.rc == 2, str(r)
        assert r.out.startswith(f"Usage: {AUTOINSTALLER} {{start")
        assert len(r.lines) == 1
    r = system.run([AUTOINSTALLER, "stop"])
    assert (r.rc, r.out, r.err) == (0, "", "")


def test_autoinstaller_without_usr_sbin_dkms_does_nothing(tmp_path: Path) -> None:
    s = make_system(tmp_path, wrapper=False)
    s.fake_dkms()  # a dkms in PATH does not count: /usr/sbin/dkms is not a file
    s.add_kernel(K1)
    assert run_each(s, [f"{AUTOINSTALLER} start {K1}", f"{AUTOINSTALLER} bogus", f"{POSTINST} {K1}"]) == [
        f"0 {AUTOINSTALLER} start {K1}",
        f"0 {AUTOINSTALLER} bogus",
        f"0 {POSTINST} {K1}",
    ]
    assert s.calls() == []


# --------------------------------------------------------------------------------------------
# kernel-install plugin (spec §7.2)


def test_kernel_install_plugin_debian_variant(system: DistSystem) -> None:
    system.add_kernel(K1)
    system.fake_dkms(autoinstall=11, kernel_prerm=14)
    entry = ["/boot/efi/abc", f"/boot/vmlinuz-{K1}"]
    r = system.run([KERNEL_INSTALL, "add", K1, *entry])
    assert r.rc == 1, str(r)  # the postinst hook's status
    assert "ERROR: autoinstall" in r.err
    r = system.run([KERNEL_INSTALL, "remove", K1, *entry])
    assert r.rc == 0, str(r)  # the prerm hook's status: always 0
    assert run_each(system, [f"{KERNEL_INSTALL} inspect {K1}", f"{KERNEL_INSTALL} add-all {K1}"]) == [
        f"0 {KERNEL_INSTALL} inspect {K1}",
        f"0 {KERNEL_INSTALL} add-all {K1}",
    ]
    assert system.calls() == [f"dkms autoinstall --kernelver {K1}", f"dkms kernel_prerm -k {K1}"]
    system.set_rc("autoinstall", 0)
    assert system.run([KERNEL_INSTALL, "add", K1, *entry]).rc == 0


def test_kernel_install_plugin_rpm_variant_never_fails(tmp_path: Path) -> None:
    """[policy §2, #472] a module failure never aborts kernel installation or initrd generation."""
    s = make_system(tmp_path, "rpm")
    s.fake_dkms(kernel_postinst=11, kernel_prerm=14)
    entry = ["/boot/efi/abc", f"/boot/vmlinuz-{K1}"]
    r = s.run([KERNEL_INSTALL, "add", K1, *entry])
    assert r.rc == 0, str(r)
    assert f"'dkms kernel_postinst --kernelver {K1}' failed (exit status 11)" in r.err
    assert "make.log" in r.err
    r = s.run([KERNEL_INSTALL, "remove", K1, *entry])
    assert r.rc == 0, str(r)
    assert f"'dkms kernel_prerm --kernelver {K1}' failed (exit status 14)" in r.err
    assert run_each(s, [f"{KERNEL_INSTALL} inspect {K1}"]) == [f"0 {KERNEL_INSTALL} inspect {K1}"]
    assert s.calls() == [f"dkms kernel_postinst --kernelver {K1}", f"dkms kernel_prerm --kernelver {K1}"]
    s.set_rc("kernel_postinst", 0)
    r = s.run([KERNEL_INSTALL, "add", K1, *entry])
    assert (r.rc, r.err) == (0, "")


# --------------------------------------------------------------------------------------------
# common.postinst (spec §6, D-26), against the fake dkms

MODULE_CONF = 'PACKAGE_NAME="m"\nPACKAGE_VERSION="1.0"\nAUTOINSTALL="yes"\n'


def common_postinst(system: DistSystem, *args: str) -> Result:
    return system.run([COMMON_POSTINST, "m", "1.0", "/usr/share/m-dkms", *args])


def built_kernels(system: DistSystem) -> List[str]:
    return [c.split(" -k ")[1] for c in system.calls() if c.startswith("dkms build ")]


def building_for(r: Result) -> List[str]:
    return [line for line in r.lines if line.startswith("Building for ")]


def test_common_postinst_adds_builds_and_installs(system: DistSystem) -> None:
    system.write_conf_source("m", "1.0", MODULE_CONF)
    system.add_kernel(K1)
    system.fake_uname(K1)
    r = common_postinst(system)
    assert r.rc == 0, str(r)
    assert r.lines == [
        "Loading new m-1.0 DKMS files...",
        f"Building for {K1}",
        f"Building initial module m/1.0 for {K1}",
        "Done.",
        "fake dkms: install exit 0",
    ]
    assert system.calls() == [
        "dkms add -m m -v 1.0",
        f"dkms status -m m -v 1.0 -k {K1}",
        f"dkms build -m m -v 1.0 -k {K1}",
        f"dkms status -m m -v 1.0 -k {K1}",
        f"dkms install -m m -v 1.0 -k {K1}",
    ]


def test_common_postinst_usage_and_no_autoinstall(system: DistSystem) -> None:
    r = system.run([COMMON_POSTINST, "m"])
    assert r.rc == 1, str(r)
    assert r.out.startswith(f"Usage: {COMMON_POSTINST} NAME VERSION TARBALL_ROOT [ARCH] [UPGRADE]\n")
    (system.etc_dkms / "no-autoinstall").touch()
    r = common_postinst(system)
    assert (r.rc, r.out) == (0, "autoinstall for dkms modules has been disabled.\n")
    assert system.calls() == []


def test_common_postinst_replaces_an_existing_registration(system: DistSystem) -> None:
    system.write_conf_source("m", "1.0", MODULE_CONF)
    (system.var_lib_dkms / "m" / "1.0").mkdir(parents=True)
    system.add_kernel(K1)
    system.fake_uname(K1)
    r = common_postinst(system)
    assert r.rc == 0, str(r)
    assert r.lines[:2] == ["Removing old m-1.0 DKMS files...", "fake dkms: remove exit 0"]
    assert system.calls()[:2] == ["dkms remove -m m -v 1.0 --all", "dkms add -m m -v 1.0"]


@pytest.mark.parametrize(
    "setting",
    [
        "AUTOINSTALL=no",
        "AUTOINSTALL='No'",
        'AUTOINSTALL="NO" # off',
        'AUTOINSTALL=""',
        "",
        "#AUTOINSTALL=yes",
    ],
)
def test_common_postinst_autoinstall_off_means_not_built(system: DistSystem, setting: str) -> None:
    """[D-26] AUTOINSTALL=no (any case) is off, like an empty value."""
    system.write_conf_source("m", "1.0", f'PACKAGE_NAME="m"\nPACKAGE_VERSION="1.0"\n{setting}\n')
    system.add_kernel(K1)
    system.fake_uname(K1)
    r = common_postinst(system)
    assert r.rc == 0, str(r)
    assert "is not built or installed: AUTOINSTALL is not" in r.out
    assert system.calls() == ["dkms add -m m -v 1.0"]


@pytest.mark.parametrize(
    ("running", "configs", "upgrade", "framework", "expected"),
    [
        pytest.param(K1, [K1, K2], "", "", [K1, K2], id="running-and-newest"),
        pytest.param(K2, [K1, K2], "", "", [K2], id="running-is-newest"),
        pytest.param(K1, [], "", "", [K1], id="newest-unknown"),
        pytest.param(K1, [K1, K3 + "x"], "", "", [K1], id="newest-not-installed"),
        pytest.param(HOST_KERNEL, [K3], "", "", [K1, K2, K3], id="chroot-first-install-all"),
        pytest.param(HOST_KERNEL, [K2], "0.9", "", [K2], id="chroot-upgrade-newest"),
        pytest.param(HOST_KERNEL, [], "0.9", "", [K1, K2, K3], id="chroot-upgrade-newest-unknown"),
        pytest.param(K1, [K1, K2], "", "autoinstall_all_kernels=1\n", [K1, K2, K3], id="all-kernels"),
    ],
)
def test_common_postinst_target_kernels(
    system: DistSystem, running: str, configs: List[str], upgrade: str, framework: str, expected: List[str]
) -> None:
    system.write_conf_source("m", "1.0", MODULE_CONF)
    for k in (K3, K1, K2):
        system.add_kernel(k)
    for k in configs:
        system.add_boot_config(k)
    system.fake_uname(running)
    if framework:
        system.framework(framework)
    r = common_postinst(system, "", upgrade)
    assert r.rc == 0, str(r)
    assert built_kernels(system) == expected
    names = expected[0] if len(expected) == 1 else ", ".join(expected[:-1]) + " and " + expected[-1]
    assert building_for(r) == [f"Building for {names}"]
    assert ("It is likely that 5.10.0-99-amd64 belongs to a chroot's host" in r.lines) == (
        running == HOST_KERNEL
    )


def test_common_postinst_newest_kernel_prefers_the_running_flavour(system: DistSystem) -> None:
    system.write_conf_source("m", "1.0", MODULE_CONF)
    kernels = ["6.1.0-91-cloud-amd64", "6.1.0-92-amd64", "6.1.0-92-cloud-amd64"]
    for k in kernels:
        system.add_kernel(k)
        system.add_boot_config(k)
    system.fake_uname("6.1.0-91-cloud-amd64")
    assert common_postinst(system).rc == 0
    assert built_kernels(system) == ["6.1.0-91-cloud-amd64", "6.1.0-92-cloud-amd64"]


def test_common_postinst_without_kernels_never_announces_an_empty_list(system: DistSystem) -> None:
    """[D-26, #545]"""
    system.write_conf_source("m", "1.0", MODULE_CONF)
    system.fake_uname(HOST_KERNEL)
    r = common_postinst(system)
    assert r.rc == 0, str(r)
    assert building_for(r) == []
    assert "Warning: no kernel headers were found in /lib/modules, so m/1.0 was not built." in r.lines
    assert f"linux-headers-{HOST_KERNEL}" in r.out
    assert system.calls() == ["dkms add -m m -v 1.0"]


@pytest.mark.parametrize(
    ("framework", "codes", "rc", "built", "installed", "failed"),
    [
        pytest.param("", {K1: 10}, 10, [K1, K2, K3], [K2, K3], f"{K1}", id="default-continues"),
        pytest.param("continue_on_error=true\n", {K2: 10}, 10, [K1, K2, K3], [K1, K3], K2, id="true"),
        pytest.param("continue_on_error=false\n", {K1: 10}, 10, [K1], [], K1, id="false-stops"),
        pytest.param("", {K1: 10, K3: 7}, 7, [K1, K2, K3], [K2], f"{K1} and {K3}", id="last-failure-code"),
        pytest.param("", {K1: 77}, 0, [K1, K2, K3], [K2, K3], "", id="skip-is-not-a-failure"),
    ],
)
def test_common_postinst_continue_on_error(
    system: DistSystem,
    framework: str,
    codes: Dict[str, int],
    rc: int,
    built: List[str],
    installed: List[str],
    failed: str,
) -> None:
    """[D-26] continue_on_error (default true) goes on with the next kernel after a failed build."""
    system.write_conf_source("m", "1.0", MODULE_CONF)
    for k in (K1, K2, K3):
        system.add_kernel(k)
    system.fake_uname(HOST_KERNEL)
    if framework:
        system.framework(framework, "framework.conf.d/50-test.conf")
    for k, code in codes.items():
        system.set_rc(f"build-m-{k}", code)
    r = common_postinst(system)
    assert r.rc == rc, str(r)
    assert built_kernels(system) == built
    assert [c.split(" -k ")[1] for c in system.calls() if c.startswith("dkms install ")] == installed
    if failed:
        assert f"Error! m/1.0 could not be built for: {failed}" in r.err
    else:
        assert "Skipped." in r.lines
        assert r.err == ""


def test_common_postinst_skips_boot_variants_kernels_without_headers_and_prebuilt(system: DistSystem) -> None:
    system.write_conf_source("m", "1.0", MODULE_CONF)
    system.add_kernel("6.1.0-90-BOOT")
    (system.add_kernel(K1, headers=False) / "build").mkdir()  # a build dir without include/
    system.add_kernel(K2)
    system.add_kernel(K3)
    (system.fake_state / f"status-m-{K3}").write_text(f"m/1.0, {K3}, x86_64: built\n")
    system.fake_uname(HOST_KERNEL)
    r = common_postinst(system)
    assert r.rc == 0, str(r)
    assert "it is a BOOT variant" in r.out
    assert f"Module build for kernel {K1} was skipped since the" in r.lines
    assert built_kernels(system) == [K2]  # K3 was prebuilt: only installed
    assert [c for c in system.calls() if c.startswith("dkms install ")] == [
        f"dkms install -m m -v 1.0 -k {K2}",
        f"dkms install -m m -v 1.0 -k {K3}",
    ]


def test_common_postinst_passes_the_architecture(system: DistSystem) -> None:
    system.write_conf_source("m", "1.0", MODULE_CONF)
    system.add_kernel(K1)
    system.fake_uname(K1)
    r = common_postinst(system, "amd64")
    assert r.rc == 0, str(r)
    assert "Building for architecture x86_64" in r.lines
    assert f"dkms build -m m -v 1.0 -k {K1} -a x86_64" in system.calls()


@pytest.mark.parametrize("binaries_only", [False, True])
def test_common_postinst_loads_a_tarball(system: DistSystem, tmp_path: Path, binaries_only: bool) -> None:
    tarballs = tmp_path / "share"
    tarballs.mkdir()
    (tarballs / "m-1.0.dkms.tar.gz").write_bytes(b"")
    system.write_conf_source("m", "1.0", MODULE_CONF)
    system.add_kernel(K1)
    system.fake_uname(K1)
    if binaries_only:
        (system.fake_state / "binaries-only").touch()
    r = system.run([COMMON_POSTINST, "m", "1.0", str(tarballs)])
    assert r.rc == 0, str(r)
    assert system.calls()[0] == f"dkms ldtarball --archive {tarballs}/m-1.0.dkms.tar.gz"
    assert "dkms add -m m -v 1.0" not in system.calls()
    assert ("This package appears to be a binaries-only package" in r.lines) == binaries_only
    assert built_kernels(system) == ([] if binaries_only else [K1])


def test_common_postinst_tarball_that_cannot_be_loaded(system: DistSystem, tmp_path: Path) -> None:
    (tmp_path / "m-1.0.dkms.tar.gz").write_bytes(b"")
    system.fake_dkms(ldtarball=1)
    r = system.run([COMMON_POSTINST, "m", "1.0", str(tmp_path)])
    assert r.rc == 2, str(r)
    assert f"Unable to load DKMS tarball {tmp_path}/m-1.0.dkms.tar.gz." in r.lines


# --------------------------------------------------------------------------------------------
# pacman hooks (spec §7.4), against the fake dkms and a fake depmod


def test_pacman_hooks_files() -> None:
    for name, op, when in (
        ("70-dkms-install.hook", "install", "PostTransaction"),
        ("71-dkms-remove.hook", "remove", "PreTransaction"),
    ):
        text = (DIST / "pacman" / name).read_text()
        assert "\nTarget = usr/src/*/dkms.conf\n" in text
        assert "\nTarget = usr/lib/modules/*/build/include/\n" in text
        assert f"\nWhen = {when}\n" in text
        assert f"\nExec = /usr/lib/dkms/dkms-pacman {op}\n" in text
        assert text.endswith("\nNeedsTargets\n")


def test_pacman_install_orders_dependencies_and_runs_depmod_once_per_kernel(tmp_path: Path) -> None:
    s = make_system(tmp_path, "arch")
    s.fake_dkms()
    s.set_rc("install-excl", 77)
    s.set_rc("install-bad", 10)
    s.fake_depmod()
    for k in (K1, K2):
        s.add_kernel(k)
    (s.add_kernel(K3, headers=False) / "build").mkdir()  # headers removed, the link's directory left
    for name in ("zbase", "user", "excl", "bad", "orphan"):
        s.write_conf_source(name, "1.0", f"PACKAGE_NAME={name}\n")
    (s.fake_state / "deps-user").write_text("zbase\n")  # BUILD_DEPENDS: install fails with 13 before
    (s.fake_state / "deps-orphan").write_text("nothing\n")
    # a new kernel's headers: every module for that kernel, in rounds until nothing changes
    r = s.run(
        [PACMAN, "install"], input=f"usr/lib/modules/{K1}/build/include/\nusr/lib/modules/{K1}/vmlinuz\n"
    )
    assert r.rc == 1, str(r)
    rounds = ["bad", "excl", "orphan", "user", "zbase", "orphan", "user", "orphan"]  # 3 rounds
    assert s.calls() == [
        *(f"dkms install --no-depmod -m {m} -v 1.0 -k {K1}" for m in rounds),
        f"depmod {K1}",
    ]
    assert f"==> excl/1.0 is not built for kernel {K1} (BUILD_EXCLUSIVE)." in r.lines
    assert f"==> ERROR: unable to install bad/1.0 for kernel {K1} (dkms exit status 10)." in r.err
    assert (
        f"==> ERROR: unable to install orphan/1.0 for kernel {K1}: its BUILD_DEPENDS are not installed."
        in r.err
    )
    assert "user" not in r.err
    # a new module source: that module for every kernel (K3 has no headers)
    s.calls_file.unlink()
    r = s.run([PACMAN, "install"], input="usr/src/zbase-1.0/dkms.conf\n")
    assert r.rc == 0, str(r)
    assert s.calls() == [
        f"dkms install --no-depmod -m zbase -v 1.0 -k {K1}",
        f"dkms install --no-depmod -m zbase -v 1.0 -k {K2}",
        f"depmod {K1}",
        f"depmod {K2}",
    ]
    assert f"==> Skipping zbase/1.0 for kernel {K3}: its headers are not installed." in r.lines


def test_pacman_remove_removes_what_is_built_or_installed(tmp_path: Path) -> None:
    s = make_system(tmp_path, "arch")
    s.fake_dkms()
    s.fake_depmod()
    for k in (K1, K2):
        s.add_kernel(k)
    s.write_conf_source("my-mod", "2.0-1", 'PACKAGE_NAME="my-mod"\nPACKAGE_VERSION="2.0-1"\n')
    s.write_conf_source("other", "1.0", "")  # no PACKAGE_NAME: split at the last "-"
    (s.fake_state / f"status-my-mod-{K2}").write_text(f"my-mod/2.0-1, {K2}, x86_64: installed\n")
    (s.fake_state / f"status-other-{K1}").write_text(f"other/1.0, {K1}, x86_64: built\n")
    r = s.run(
        [PACMAN, "remove"], input=f"usr/lib/modules/{K1}/modules.alias\nusr/src/my-mod-2.0-1/dkms.conf\n"
    )
    assert r.rc == 0, str(r)
    assert [c for c in s.calls() if not c.startswith("dkms status")] == [
        f"dkms remove --no-depmod -m my-mod -v 2.0-1 -k {K2}",
        f"dkms remove --no-depmod -m other -v 1.0 -k {K1}",
        f"depmod {K2}",
        f"depmod {K1}",
    ]
    assert run_each(s, [f"{PACMAN} bogus </dev/null"]) == [f"2 {PACMAN} bogus </dev/null"]


# --------------------------------------------------------------------------------------------
# Real modules: a dh_dkms-built package, and a kernel upgrade


def dh_dkms_script(name: str, version: str, autoscript: str) -> str:
    """A maintainer script as dh_dkms (dh-dkms 3.0.10, bookworm) + dh_installdeb generate it."""
    body = autoscript.replace("#MODULE_NAME#", name).replace("#MODULE_VERSION#", version)
    return f"#!/bin/sh\nset -e\n# Automatically added by dh_dkms/3.0.10-8\n{body}# End automatically added section\n"


DH_DKMS_POSTINST = """\
# The original file can be found in template-dkms-mkdeb/debian/postinst
# in the DKMS tarball, check it for copyright notices.

DKMS_NAME=#MODULE_NAME#
DKMS_PACKAGE_NAME=$DKMS_NAME-dkms
DKMS_VERSION=#MODULE_VERSION#

postinst_found=0

case "$1" in
\tconfigure)
\t\tfor DKMS_POSTINST in /usr/lib/dkms/common.postinst /usr/share/$DKMS_PACKAGE_NAME/postinst; do
\t\t\tif [ -f $DKMS_POSTINST ]; then
\t\t\t\t$DKMS_POSTINST $DKMS_NAME $DKMS_VERSION /usr/share/$DKMS_PACKAGE_NAME "" $2
\t\t\t\tpostinst_found=1
\t\t\t\tbreak
\t\t\tfi
\t\tdone
\t\tif [ "$postinst_found" -eq 0 ]; then
\t\t\techo "ERROR: DKMS version is too old and $DKMS_PACKAGE_NAME was not"
\t\t\techo "built with legacy DKMS support."
\t\t\techo "You must either rebuild $DKMS_PACKAGE_NAME with legacy postinst"
\t\t\techo "support or upgrade DKMS to a more current version."
\t\t\texit 1
\t\tfi
\t;;
esac
"""

DH_DKMS_PRERM = """\
DKMS_NAME=#MODULE_NAME#
DKMS_VERSION=#MODULE_VERSION#

case "$1" in
    remove|upgrade|deconfigure)
      if [  "$(dkms status -m $DKMS_NAME -v $DKMS_VERSION)" ]; then
         dkms remove -m $DKMS_NAME -v $DKMS_VERSION --all
      fi
    ;;
esac
"""


@pytest.mark.integration
def test_dh_dkms_package_postinst_adds_builds_and_installs(tmp_path: Path, kernels: List[str]) -> None:
    """A hello-dkms .deb: its files are unpacked, then dpkg runs `postinst configure`."""
    newest, running = kernels[0], kernels[1]
    s = make_system(tmp_path)
    for k in kernels[:2]:
        s.add_kernel(k)
        s.add_boot_config(k)
    s.fake_uname(running)
    s.add_source(EXAMPLES / "hello", "hello", "1.0")
    scripts = tmp_path / "DEBIAN"
    scripts.mkdir()
    for name, autoscript in (("postinst", DH_DKMS_POSTINST), ("prerm", DH_DKMS_PRERM)):
        (scripts / name).write_text(dh_dkms_script("hello", "1.0", autoscript))
        (scripts / name).chmod(0o755)

    r = s.run([str(scripts / "postinst"), "configure", ""])
    assert r.rc == 0, str(r)
    assert f"Building for {running} and {newest}" in r.lines
    for k in (running, newest):
        assert (s.lib_modules / k / "updates" / "dkms" / "hello.ko").is_file(), k
        assert "hello" in (s.lib_modules / k / "modules.dep").read_text()
    st = s.run(["dkms", "status"])
    assert st.lines == [f"hello/1.0, {k}, {ARCH}: installed" for k in sorted(kernels[:2])], str(st)

    r = s.run([str(scripts / "prerm"), "remove"])
    assert r.rc == 0, str(r)
    assert s.run(["dkms", "status"]).out == ""
    assert not (s.lib_modules / running / "updates" / "dkms" / "hello.ko").exists()


def _lstat_ns(path: Path) -> int:
    return os.lstat(path).st_mtime_ns


@pytest.mark.integration
@pytest.mark.slow
def test_kernel_upgrade_through_the_debian_postinst_hook(tmp_path: Path, kernels: List[str]) -> None:
    """Modules installed for kernel A; kernel B appears; /etc/kernel/postinst.d/dkms B builds and
    installs every AUTOINSTALL module for B: dependents after dependencies, the BUILD_EXCLUSIVE one
    skipped, a failing one reported (make.log) while the rest succeed; the hook exits 1 (P-17)."""
    new, old = kernels[0], kernels[1]
    s = make_system(tmp_path)
    s.add_kernel(old)
    s.fake_uname(old)
    s.add_source(MODULES / "depbase", "depbase", "1.0")
    s.add_source(MODULES / "depuser", "depuser", "1.0")
    s.add_source(MODULES / "exclusive", "exclusive", "1.0", f'BUILD_EXCLUSIVE_KERNEL="^{re.escape(old)}$"')
    s.add_source(MODULES / "failing", "failing", "1.0", 'AUTOINSTALL="yes"')
    s.add_source(MODULES / "noversion", "noversion", "1.0")  # AUTOINSTALL not set
    setup = s.sh(
        " && ".join(
            [
                *(f"dkms add {m}/1.0 >/dev/null" for m in ("failing", "noversion")),
                *(f"dkms install {m}/1.0 -k {old}" for m in ("depbase", "depuser", "exclusive")),
            ]
        )
    )
    assert setup.rc == 0, str(setup)

    s.add_kernel(new)  # the headers of kernel B are installed
    r = s.run([POSTINST, new, f"/boot/vmlinuz-{new}"])
    out = r.out + r.err
    assert r.rc == 1, str(r)
    assert f"ERROR: autoinstall for kernel {new} failed (dkms exit status 11)" in r.err
    assert "/var/lib/dkms/failing/1.0/build/make.log" in out, str(r)

    status = s.run(["dkms", "status", "-k", new]).lines
    assert f"depbase/1.0, {new}, {ARCH}: installed" in status
    assert f"depuser/1.0, {new}, {ARCH}: installed" in status
    assert not any(
        line.startswith(("exclusive/1.0, ", "failing/1.0, ", "noversion/1.0, ")) for line in status
    )
    updates = s.lib_modules / new / "updates" / "dkms"
    assert sorted(p.name for p in updates.iterdir()) == ["depbase.ko", "depuser.ko"]
    assert "depuser.ko: updates/dkms/depbase.ko" in (s.lib_modules / new / "modules.dep").read_text()
    dkms_tree = s.var_lib_dkms
    assert _lstat_ns(dkms_tree / "depuser" / f"kernel-{new}-{ARCH}") >= _lstat_ns(
        dkms_tree / "depbase" / f"kernel-{new}-{ARCH}"
    )
    assert out.index("depbase/1.0") < out.index("depuser/1.0")
    assert not (dkms_tree / "exclusive" / "1.0" / new).exists()
    assert not (dkms_tree / "noversion" / "1.0" / new).exists()
    # kernel A is untouched
    old_status = s.run(["dkms", "status", "-k", old]).lines
    for m in ("depbase", "depuser", "exclusive"):
        assert f"{m}/1.0, {old}, {ARCH}: installed" in old_status

    # removing kernel B: its builds go, the registrations stay
    r = s.run([PRERM, new, f"/boot/vmlinuz-{new}"])
    assert r.rc == 0, str(r)
    assert "WARNING" not in r.err
    assert not any(f", {new}, " in line for line in s.run(["dkms", "status"]).lines)
    assert not updates.exists()
    assert s.run(["dkms", "status", "-k", old]).lines == old_status
