"""Smoke test of the chroot harness (tests/support/chroot.py) with a real debootstrapped bookworm.

Prints how long the first debootstrap took (or that the base came from the cache) and how long
a fresh copy takes, by overlayfs and by ``cp -a``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import List

import pytest

from tests.support import chroot
from tests.support.chroot import Chroot, CommandFailed

pytestmark = [pytest.mark.system, pytest.mark.slow]


def _report(capsys: pytest.CaptureFixture[str], line: str) -> None:
    with capsys.disabled():
        print(f"\n[chroot harness] {line}")


def test_a_chroot_is_bookworm_with_a_clean_environment_and_installs_a_package(
    chroot_base: chroot.Base, debian_chroot: Chroot, capsys: pytest.CaptureFixture[str]
) -> None:
    if chroot_base.built_now:
        _report(capsys, f"debootstrap of the base (built now): {chroot_base.build_seconds:.1f} s")
    else:
        _report(capsys, f"base from the cache (its debootstrap took {chroot_base.build_seconds:.1f} s)")
    _report(capsys, f"fresh {debian_chroot.method} copy with its mounts: {debian_chroot.setup_seconds:.2f} s")
    c = debian_chroot

    os_release = c.run("cat", "/etc/os-release").stdout
    assert "VERSION_CODENAME=bookworm" in os_release, os_release
    env = dict(line.split("=", 1) for line in c.run("env").stdout.splitlines())
    assert env == {
        "PATH": chroot.CHROOT_PATH,
        "HOME": "/root",
        "DEBIAN_FRONTEND": "noninteractive",
        "LC_ALL": "C",
    }
    if chroot.HOST_SOURCES.is_file():
        assert not c.exists("/etc/apt/sources.list")
        assert c.read("/etc/apt/sources.list.d/debian.sources") == chroot.HOST_SOURCES.read_text()
    else:
        assert c.read("/etc/apt/sources.list") == chroot.HOST_SOURCES_LIST.read_text()

    root = str(c.root)
    expected = {
        root,
        *(f"{root}/{name}" for name in chroot.PSEUDO_FILESYSTEMS),
        f"{root}/var/cache/apt/archives",
    }
    assert set(c.mounts()) == expected

    started = time.monotonic()
    c.apt_install("hello")
    _report(capsys, f"apt-get update + install hello: {time.monotonic() - started:.1f} s")
    assert c.run("hello").stdout == "Hello, world!\n"
    # the download went to the shared cache on the host, for the next chroot
    cache = chroot.cache_root() / "archives"
    assert list(cache.glob("hello_*.deb")), sorted(p.name for p in cache.iterdir())


def test_each_chroot_is_a_fresh_copy_and_leaves_no_mount_behind(
    chroot_base: chroot.Base, capsys: pytest.CaptureFixture[str]
) -> None:
    with Chroot(chroot_base, method="overlay") as first:
        first.sh("echo from-the-first > /root/left-by-first; mkdir /opt/first")
        assert first.read("/root/left-by-first") == "from-the-first\n"
        first_dir = first.root.parent
        assert first.mounts()
    _report(capsys, f"fresh overlay copy: {first.setup_seconds:.2f} s")
    with Chroot(chroot_base, method="copy") as second:
        assert second.method == "copy"
        assert not second.exists("/root/left-by-first")
        assert not second.exists("/opt/first")
        assert "VERSION_CODENAME=bookworm" in second.read("/etc/os-release")
        second_dir = second.root.parent
        assert second.mounts()
    _report(capsys, f"fresh cp -a copy: {second.setup_seconds:.2f} s")
    assert not (chroot_base.root / "root/left-by-first").exists()
    for gone in (first_dir, second_dir):
        assert not gone.exists()
        assert chroot.mounts_below(gone) == []


@pytest.mark.parametrize("error", [KeyboardInterrupt, RuntimeError])
def test_an_interrupted_test_still_unmounts_and_kills_what_runs_inside(
    chroot_base: chroot.Base, error: type
) -> None:
    with pytest.raises(error), Chroot(chroot_base) as c:
        c.sh("sleep 600 >/dev/null 2>&1 & echo $! > /tmp/sleeper")
        # the pid inside is the host's pid: the chroot shares the pid namespace
        sleeper = int(c.read("/tmp/sleeper"))
        top = c.root.parent
        assert os.readlink(f"/proc/{sleeper}/root") == str(c.root)
        raise error()
    assert not Path(f"/proc/{sleeper}").exists() or not chroot._alive(sleeper)
    assert chroot.mounts_below(top) == []
    assert not top.exists()


def test_run_reports_exit_status_input_failures_and_timeouts(debian_chroot: Chroot) -> None:
    c = debian_chroot
    assert c.run("cat", input="through stdin\n").stdout == "through stdin\n"
    result = c.sh("echo out; echo err >&2; exit 3", check=False)
    assert (result.rc, result.stdout, result.stderr) == (3, "out\n", "err\n")
    with pytest.raises(CommandFailed, match=r"(?s)\[exit 1\]"):
        c.run("false")
    assert c.run("pwd", cwd="/usr/share").stdout == "/usr/share\n"
    started = time.monotonic()
    with pytest.raises(CommandFailed, match="timed out after 1 s"):
        c.sh("sleep 60 & sleep 60", timeout=1)
    assert time.monotonic() - started < 15
    assert chroot._processes_in(c.root) == []


def test_files_go_in_and_out_and_paths_resolve_links_inside(debian_chroot: Chroot, tmp_path: Path) -> None:
    c = debian_chroot
    host_file = c.put("/etc/pydkms-marker", "inside\n", mode=0o600)
    assert host_file == c.root / "etc/pydkms-marker"
    assert host_file.stat().st_mode & 0o777 == 0o600
    c.run("ln", "-s", "/etc/pydkms-marker", "/tmp/absolute-link")
    # an absolute link is followed inside the chroot, never to the host's /etc
    assert c.path("/tmp/absolute-link") == c.root / "etc/pydkms-marker"
    assert c.read("/tmp/absolute-link") == "inside\n"
    assert c.path("/lib/x86_64-linux-gnu") == c.root / "usr/lib/x86_64-linux-gnu"  # /lib -> usr/lib
    source = tmp_path / "tree"
    (source / "sub").mkdir(parents=True)
    (source / "sub" / "f").write_text("copied\n")
    (source / "link").symlink_to("sub/f")
    c.copy_in(source, "/srv/tree")
    assert c.run("cat", "/srv/tree/link").stdout == "copied\n"
    out = c.copy_out("/etc/os-release", tmp_path / "out" / "os-release")
    assert "bookworm" in out.read_text()


def test_the_host_kernels_header_packages_are_installable_inside(
    debian_chroot: Chroot, host_header_packages: List[str]
) -> None:
    assert host_header_packages
    debian_chroot.apt_update()
    for package in host_header_packages:
        shown = debian_chroot.run("apt-cache", "show", "--no-all-versions", package, check=False)
        assert shown.rc == 0 and f"Package: {package}" in shown.stdout, str(shown)


def test_a_killed_run_leaves_mounts_that_the_next_run_sweeps(chroot_base: chroot.Base) -> None:
    """SIGKILL skips every clean-up; the next base_chroot() unmounts and deletes what it left."""
    script = (
        "import os, signal\n"
        "from tests.support import chroot\n"
        "c = chroot.Chroot(chroot.base_chroot())\n"
        "c.open()\n"
        "c.sh('sleep 600 >/dev/null 2>&1 & echo $! > /tmp/sleeper')\n"
        "print(c.root.parent, flush=True)\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    repo = Path(__file__).resolve().parents[2]
    proc = subprocess.run(
        [sys.executable, "-c", script], cwd=repo, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    top = Path(proc.stdout.strip())
    sleeper = int((top / "root/tmp/sleeper").read_text())
    assert chroot.mounts_below(top) and chroot._alive(sleeper)
    chroot.base_chroot()
    assert chroot.mounts_below(top) == []
    assert not top.exists()
    assert not chroot._alive(sleeper)
