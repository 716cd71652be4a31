"""Hooks into the platform at fixed system paths: weak-modules (RHEL/SUSE), the forced-install list,
Ubuntu's apport hook and ``modprobe_on_install``.

spec/tree.md §8, build-install.md §1 (apport), §4 steps 3, 13, 14, framework-conf.md §4,
dkms-conf.md §13 (``NO_WEAK_MODULES``), defects.md P-06.

Real modules are built in scratch trees; pydkms runs in a private mount namespace
(:func:`~tests.support.upstream.run_isolated`) where ``/usr/share``, ``/usr/sbin`` and ``/usr/lib``
are overlays whose upper layers are host directories of the test (:class:`Platform`), and
``/etc/os-release`` can be replaced to pose as another distribution. Tools that cannot exist on
Debian (weak-modules, weak-modules2, apport) and actions the VM must not do (modprobe into the
running kernel, restarting systemd-modules-load) are recording stand-ins.
"""

from __future__ import annotations

import os
import shlex
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Tuple

import pytest

from tests.conftest import ARCH, MODULES, Result, Scratch
from tests.support.kmod import executable
from tests.support.upstream import isolation_unavailable, overlay_script, run_isolated

pytestmark = pytest.mark.integration

WEAK_MODULES = "/usr/sbin/weak-modules"
WEAK_MODULES2 = "/usr/lib/module-init-tools/weak-modules2"
FORCE_DIR = "/usr/share/dkms/modules_to_force_install"
APPORT = "/usr/share/apport/apport"
APPORT_HOOK = "/usr/share/apport/package-hooks/dkms_packages.py"

#: fixed directories that can be given content, each an overlay with a host upper layer
OVERLAID = {"/usr/share": "usr-share", "/usr/sbin": "usr-sbin", "/usr/lib": "usr-lib"}

CENTOS = 'NAME="CentOS Stream"\nID="centos"\nID_LIKE="rhel fedora"\nVERSION_ID="9"\n'
ROCKY = 'NAME="Rocky Linux"\nID="rocky"\nID_LIKE="rhel centos fedora"\nVERSION_ID="9.4"\n'
RHEL = 'NAME="Red Hat Enterprise Linux"\nID="rhel"\nID_LIKE="fedora"\nVERSION_ID="9.4"\n'
FEDORA = 'NAME="Fedora Linux"\nID=fedora\nVERSION_ID=40\n'
OPENSUSE = 'NAME="openSUSE Leap"\nID="opensuse-leap"\nID_LIKE="suse opensuse"\nVERSION_ID="15.6"\n'


@dataclass
class Call:
    """One run of a recording stand-in: its name, arguments and stdin lines (with "existed then")."""

    name: str
    argv: List[str] = field(default_factory=list)
    stdin: List[str] = field(default_factory=list)
    existed: List[bool] = field(default_factory=list)


def _recorder(log: Path, name: str) -> str:
    """Body of a stand-in that appends its argv and stdin to ``log`` (see :meth:`Platform.calls`)."""
    return (
        f"log={shlex.quote(str(log))}\n"
        "{\n"
        f"  echo '>>> {name}'\n"
        '  for a in "$@"; do printf \'A %s\\n\' "$a"; done\n'
        "  while IFS= read -r line; do\n"
        '    if [ -e "$line" ]; then printf \'I+ %s\\n\' "$line"; else printf \'I- %s\\n\' "$line"; fi\n'
        "  done\n"
        '} >>"$log"\n'
    )


@dataclass(frozen=True)
class Platform:
    """What pydkms sees at fixed paths inside the namespace, and the calls of the stand-ins."""

    root: Path

    @property
    def log(self) -> Path:
        return self.root / "calls.log"

    @property
    def fake_bin(self) -> Path:
        """Put first in PATH (for tools looked up in PATH: modprobe, systemctl)."""
        return self.root / "fake-bin"

    @property
    def os_release(self) -> Path:
        return self.root / "os-release"

    def _layer(self, top: str) -> Path:
        return self.root / "layers" / OVERLAID[top]

    def path(self, fixed: str) -> Path:
        """The host file that appears at ``fixed`` in the namespace (in its overlay's upper layer)."""
        for top in OVERLAID:
            if fixed.startswith(top + "/"):
                return self._layer(top) / "upper" / fixed[len(top) + 1 :]
        raise ValueError(f"{fixed} is not under {', '.join(OVERLAID)}")

    def put(self, fixed: str, text: str, mode: int = 0o644) -> Path:
        path = self.path(fixed)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        path.chmod(mode)
        return path

    def fake(self, fixed: str) -> Path:
        """A recording stand-in at the fixed path ``fixed``."""
        return executable(self.path(fixed), _recorder(self.log, Path(fixed).name))

    def fake_in_path(self, name: str) -> Path:
        return executable(self.fake_bin / name, _recorder(self.log, name))

    def pose_as(self, os_release: Optional[str]) -> None:
        """Replace /etc/os-release by this text (None: the host's, Debian)."""
        if os_release is None:
            self.os_release.unlink(missing_ok=True)
        else:
            self.os_release.write_text(os_release)

    def setup(self) -> str:
        lines = [
            overlay_script(Path(top), self._layer(top), self.root, tag)
            for top, tag in OVERLAID.items()
            if self._layer(top).is_dir()
        ]
        if self.os_release.exists():  # after the overlays: /etc/os-release links into /usr/lib
            lines.append(f"mount --bind {shlex.quote(str(self.os_release))} /etc/os-release")
        return "\n".join(lines)

    def dkms(self, scratch: Scratch, *args: str, env: Optional[Mapping[str, str]] = None) -> Result:
        """Run this checkout's pydkms with the scratch trees, in the private namespace."""
        full_env: Dict[str, Optional[str]] = dict(scratch.env(env))
        full_env["PATH"] = f"{self.fake_bin}:{full_env.get('PATH', '/usr/sbin:/usr/bin:/sbin:/bin')}"
        proc = run_isolated(
            scratch.dkms_argv(*args), env=full_env, setup=self.setup(), cwd=scratch.root, timeout=600
        )
        return Result(["dkms", *args], proc.returncode, proc.stdout, proc.stderr)

    def ok(self, scratch: Scratch, *args: str, env: Optional[Mapping[str, str]] = None) -> Result:
        r = self.dkms(scratch, *args, env=env)
        assert r.rc == 0, str(r)
        return r

    def calls(self) -> List[Call]:
        """The stand-ins' runs since the last call of this method."""
        if not self.log.exists():
            return []
        text = self.log.read_text()
        self.log.unlink()
        calls: List[Call] = []
        for line in text.splitlines():
            if line.startswith(">>> "):
                calls.append(Call(line[4:]))
            elif line.startswith("A "):
                calls[-1].argv.append(line[2:])
            else:
                calls[-1].stdin.append(line[3:])
                calls[-1].existed.append(line.startswith("I+"))
        return calls


@pytest.fixture
def platform(tmp_path: Path) -> Platform:
    reason = isolation_unavailable()
    if reason:
        pytest.skip(reason)
    p = Platform(tmp_path / "platform")
    p.fake_bin.mkdir(parents=True)
    return p


def _argv(calls: List[Call]) -> List[Tuple[str, ...]]:
    return [(c.name, *c.argv) for c in calls]


# --------------------------------------------------------------------------------------------
# weak-modules (tree.md §8)


def test_weak_modules_rhel_family(platform: Platform, scratch: Scratch, kernel: str) -> None:
    platform.fake(WEAK_MODULES)
    platform.fake(WEAK_MODULES2)
    src = scratch.add_source("hello")
    installed = str(scratch.install_tree / kernel / "extra" / "hello.ko")  # rhel*: /extra
    for os_release in (CENTOS, ROCKY):
        platform.pose_as(os_release)
        r = platform.ok(scratch, "install", "hello/1.0", "-k", kernel)
        assert "Adding linked weak modules..." in r.out
        calls = platform.calls()
        assert _argv(calls) == [("weak-modules", "--no-initramfs", "--add-modules")]
        # the installed paths on stdin, after they were copied
        assert (calls[0].stdin, calls[0].existed) == ([installed], [True])
        platform.ok(scratch, "uninstall", "hello/1.0", "-k", kernel)
        calls = platform.calls()
        assert _argv(calls) == [("weak-modules", "--no-initramfs", "--remove-modules")]
        assert (calls[0].stdin, calls[0].existed) == ([installed], [True])  # before deletion
        assert not Path(installed).exists()

    # NO_WEAK_MODULES in the environment at start-up
    platform.ok(scratch, "install", "hello/1.0", "-k", kernel, env={"NO_WEAK_MODULES": "yes"})
    assert Path(installed).is_file()
    platform.ok(scratch, "uninstall", "hello/1.0", "-k", kernel, env={"NO_WEAK_MODULES": "yes"})
    assert not Path(installed).exists()
    assert platform.calls() == []

    # NO_WEAK_MODULES="yes" in dkms.conf
    conf = src / "dkms.conf"
    text = conf.read_text()
    conf.write_text(text + 'NO_WEAK_MODULES="yes"\n')
    platform.ok(scratch, "install", "hello/1.0", "-k", kernel)
    assert Path(installed).is_file()
    platform.ok(scratch, "uninstall", "hello/1.0", "-k", kernel)
    assert platform.calls() == []
    conf.write_text(text)

    # RHEL itself (ID_LIKE="fedora"), Fedora and Debian: no weak-modules (P-06)
    others: List[Tuple[Optional[str], str]] = [(RHEL, "extra"), (FEDORA, "extra"), (None, "updates/dkms")]
    for other, dest in others:
        platform.pose_as(other)
        r = platform.ok(scratch, "install", "hello/1.0", "-k", kernel)
        assert (scratch.install_tree / kernel / dest / "hello.ko").is_file()
        platform.ok(scratch, "uninstall", "hello/1.0", "-k", kernel)
        assert "weak modules" not in r.out
        assert platform.calls() == [], other


def test_weak_modules2_suse_family(platform: Platform, scratch: Scratch, kernel: str) -> None:
    platform.fake(WEAK_MODULES)
    platform.fake(WEAK_MODULES2)
    platform.pose_as(OPENSUSE)
    scratch.add_source("hello")
    installed = str(scratch.install_tree / kernel / "updates" / "hello.ko")  # suse*: /updates
    platform.ok(scratch, "install", "hello/1.0", "-k", kernel)
    calls = platform.calls()
    assert _argv(calls) == [("weak-modules2", "--add-kernel-modules", kernel)]
    assert (calls[0].stdin, calls[0].existed) == ([installed], [True])
    platform.ok(scratch, "uninstall", "hello/1.0", "-k", kernel)
    calls = platform.calls()
    assert _argv(calls) == [("weak-modules2", "--remove-kernel-modules", kernel)]
    assert (calls[0].stdin, calls[0].existed) == ([installed], [True])
    assert not Path(installed).exists()
    platform.ok(scratch, "install", "hello/1.0", "-k", kernel, env={"NO_WEAK_MODULES": "1"})
    platform.ok(scratch, "uninstall", "hello/1.0", "-k", kernel, env={"NO_WEAK_MODULES": "1"})
    assert platform.calls() == []


# --------------------------------------------------------------------------------------------
# The forced-install list (build-install.md §4 step 3)


def _intree_replaceme(scratch: Scratch, kernel: str, version: str) -> Path:
    """An "in-tree" replaceme.ko of ``version`` under $install_tree/K/kernel/drivers/misc."""
    out = scratch.root / f"intree-{version}"
    subprocess.run(
        [str(MODULES / "replaceme" / "make-intree.sh"), kernel, str(out), version],
        check=True,
        capture_output=True,
    )
    dest = scratch.install_tree / kernel / "kernel" / "drivers" / "misc" / "replaceme.ko"
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_bytes((out / "replaceme.ko").read_bytes())
    return dest


def test_modules_to_force_install(platform: Platform, scratch: Scratch, kernel: str) -> None:
    original = _intree_replaceme(scratch, kernel, "3.0")  # newer than the dkms module (2.0)
    content = original.read_bytes()
    scratch.add_source("replaceme", "2.0")
    installed = scratch.install_tree / kernel / "updates" / "dkms" / "replaceme.ko"
    built = scratch.dkms_tree / "replaceme/2.0" / kernel / ARCH / "module/replaceme.ko"

    # a module that is not listed is unaffected: the list names other modules only (words that
    # start with m, or m with another suffix, are not m)
    platform.put(f"{FORCE_DIR}/others", "hello replaceme2\nreplaceme_force replacem\n")
    r = platform.dkms(scratch, "install", "replaceme/2.0", "-k", kernel)
    assert r.rc == 6, r
    assert "not newer" in r.err and "Forcing" not in r.out + r.err
    assert not installed.exists() and original.read_bytes() == content

    # the word m, in any file of the directory: as --force
    platform.put(f"{FORCE_DIR}/zz-replaceme", "replaceme\n")
    r = platform.ok(scratch, "install", "replaceme/2.0", "-k", kernel)
    assert "Forcing installation of replaceme" in r.out + r.err
    assert installed.read_bytes() == built.read_bytes()
    assert not original.exists()  # archived, comes back on uninstall
    assert scratch.status() == [f"replaceme/2.0, {kernel}, {ARCH}: installed (Original modules exist)"]
    platform.ok(scratch, "uninstall", "replaceme/2.0", "-k", kernel)
    assert original.read_bytes() == content and not installed.exists()

    # the word m_version-override: as --force-version-override
    platform.put(f"{FORCE_DIR}/zz-replaceme", "replaceme_version-override\n")
    r = platform.ok(scratch, "install", "replaceme/2.0", "-k", kernel)
    assert "Forcing version override of replaceme" in r.out + r.err
    assert "not newer" not in r.err
    assert installed.read_bytes() == built.read_bytes()
    platform.ok(scratch, "uninstall", "replaceme/2.0", "-k", kernel)
    assert original.read_bytes() == content


# --------------------------------------------------------------------------------------------
# apport (build-install.md §1)

HOOK_RECORDER = """import sys
with open({log!r}, "a") as fh:
    fh.write(">>> dkms_packages.py\\n" + "".join("A " + a + "\\n" for a in sys.argv[1:]))
"""


def test_apport_hook_on_failed_build(
    platform: Platform, scratch: Scratch, kernel: str, cloud_kernel: str
) -> None:
    apport = platform.fake(APPORT)
    platform.put(APPORT_HOOK, HOOK_RECORDER.format(log=str(platform.log)))
    scratch.prepare_kernel(cloud_kernel)
    scratch.add_source("failing")

    # exit 10 (make failed): python3 <hook> -m m -v v -k K; apport itself is not run
    r = platform.dkms(scratch, "build", "failing/1.0", "-k", kernel)
    assert r.rc == 10, r
    assert _argv(platform.calls()) == [("dkms_packages.py", "-m", "failing", "-v", "1.0", "-k", kernel)]

    # exit 5 (a missing patch)
    src = scratch.add_source("patched")
    with open(src / "dkms.conf", "a") as fh:
        fh.write('PATCH[3]="missing.patch"\n')
    r = platform.dkms(scratch, "build", "patched/1.0", "-k", kernel)
    assert r.rc == 5, r
    assert _argv(platform.calls()) == [("dkms_packages.py", "-m", "patched", "-v", "1.0", "-k", kernel)]

    # a BUILD_EXCLUSIVE skip (77) is no build problem
    scratch.add_source("exclusive")
    r = platform.dkms(scratch, "build", "exclusive/1.0", "-k", cloud_kernel)
    assert r.rc == 77, r
    assert platform.calls() == []

    # /usr/share/apport/apport not executable, or absent: the hook is not run
    apport.chmod(0o644)
    r = platform.dkms(scratch, "build", "failing/1.0", "-k", kernel)
    assert r.rc == 10, r
    assert platform.calls() == []
    apport.unlink()
    r = platform.dkms(scratch, "build", "failing/1.0", "-k", kernel)
    assert r.rc == 10, r
    assert platform.calls() == []


# --------------------------------------------------------------------------------------------
# modprobe_on_install (build-install.md §4 step 14)


def _modaliases() -> List[str]:
    """The unique contents of every modalias file under /sys/devices (what modprobe is given)."""
    found = subprocess.run(
        ["find", "/sys/devices", "-name", "modalias", "-type", "f"], capture_output=True, text=True
    ).stdout.split()
    aliases = set()
    for f in found:
        try:
            aliases.add(Path(f).read_text().strip())
        except OSError:
            continue
    aliases.discard("")
    return sorted(aliases)


def test_modprobe_on_install_for_the_running_kernel(
    platform: Platform, scratch: Scratch, kernels: List[str]
) -> None:
    """The running kernel has no headers here: its scratch install dir borrows another kernel's
    (its ``build`` link); what is tested is the decision "K = uname -r" and the calls after install."""
    running = os.uname().release
    other = next(k for k in kernels if k != running)
    kdir = scratch.install_tree / running
    if not kdir.is_dir():
        kdir.mkdir(parents=True)
        headers = f"/lib/modules/{running}/build"
        (kdir / "build").symlink_to(
            headers if Path(headers, "include").is_dir() else f"/lib/modules/{other}/build"
        )
    aliases = _modaliases()
    if not aliases:
        pytest.skip("no modalias under /sys/devices: modprobe would not be called")
    # stand-ins first in PATH: nothing may be loaded into the running kernel, no unit restarted
    platform.fake_in_path("modprobe")
    platform.fake_in_path("systemctl")
    unit = Path("/lib/systemd/system/systemd-modules-load.service").exists()
    expected = [("modprobe", "-a", "-b", "-q", *aliases)]
    if unit:
        expected.append(("systemctl", "restart", "systemd-modules-load.service"))
    scratch.add_source("hello")
    installed = kdir / "updates" / "dkms" / "hello.ko"

    platform.ok(scratch, "install", "hello/1.0", "-k", running)  # off by default
    assert installed.is_file()
    assert platform.calls() == []
    platform.ok(scratch, "uninstall", "hello/1.0", "-k", running)

    platform.ok(scratch, "install", "hello/1.0", "-k", running, "--modprobe-on-install")
    assert installed.is_file()
    assert _argv(platform.calls()) == expected
    platform.ok(scratch, "uninstall", "hello/1.0", "-k", running)
    assert platform.calls() == []  # not on uninstall

    (scratch.etc / "framework.conf").write_text("modprobe_on_install=y\n")
    platform.ok(scratch, "install", "hello/1.0", "-k", running)
    assert _argv(platform.calls()) == expected
    platform.ok(scratch, "uninstall", "hello/1.0", "-k", running)
    (scratch.etc / "framework.conf").unlink()

    platform.ok(scratch, "install", "hello/1.0", "-k", running, env={"modprobe_on_install": "1"})
    assert _argv(platform.calls()) == expected

    # another kernel: never
    platform.ok(scratch, "install", "hello/1.0", "-k", other, "--modprobe-on-install")
    assert (scratch.install_tree / other / "updates" / "dkms" / "hello.ko").is_file()
    assert platform.calls() == []
