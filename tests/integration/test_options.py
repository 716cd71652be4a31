"""Options and directives that change how a build or install happens, on real headers."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import List

import pytest

from tests.conftest import ARCH, Scratch

pytestmark = pytest.mark.integration


def append_conf(src: Path, text: str) -> None:
    conf = src / "dkms.conf"
    conf.write_text(conf.read_text() + text)


def test_make_match_and_compiler_environment(scratch: Scratch, kernels: List[str]) -> None:
    k1, k2 = kernels[:2]
    src = scratch.add_source("hello")
    env_log = scratch.root / "env.log"
    # MAKE[1] is chosen for k1 only; both record what the build environment exported
    # '\$CC' survives dkms.conf's two expansions as $CC, which the build's shell then expands
    append_conf(
        src,
        f"MAKE[1]='echo match CC=\\$CC KERNEL_CC=\\$KERNEL_CC >> {env_log}; make -C ${{kernel_source_dir}} "
        f"M=${{dkms_tree}}/hello/1.0/build'\nMAKE_MATCH[1]='^{k1}$'\n"
        f"MAKE[0]='echo default CC=\\$CC >> {env_log}; make -C ${{kernel_source_dir}} M=${{dkms_tree}}/hello/1.0/build'\n",
    )
    scratch.ok("build", "hello/1.0", "-k", k1, "-k", k2)
    # the two kernels build at the same time: the lines come in either order
    lines = sorted(env_log.read_text().splitlines(), key=lambda line: not line.startswith("match"))
    assert len(lines) == 2
    assert (
        lines[0].startswith("match CC=gcc-") and "KERNEL_CC=gcc-" in lines[0]
    )  # from CONFIG_CC_VERSION_TEXT
    assert lines[1].startswith("default CC=gcc-")
    log = (scratch.dkms_tree / "hello/1.0" / k2 / ARCH / "log/make.log").read_text()
    # a command that does not begin with "make" is used unchanged
    assert f"# command: echo default CC=$CC >> {env_log}; make -C" in log


@pytest.mark.parametrize(
    ("directive", "excluded"),
    [
        ("BUILD_EXCLUSIVE_KERNEL=^1\\.", True),
        ("BUILD_EXCLUSIVE_KERNEL=^6\\.", False),
        ("BUILD_EXCLUSIVE_KERNEL_MIN=6.2", True),
        ("BUILD_EXCLUSIVE_KERNEL_MIN=6.1", False),
        ("BUILD_EXCLUSIVE_KERNEL_MAX=5.10", True),
        ("OBSOLETE_BY=5.10", True),
        ("BUILD_EXCLUSIVE_ARCH=^aarch64$", True),
        (f"BUILD_EXCLUSIVE_ARCH=^{ARCH}$", False),
        ("BUILD_EXCLUSIVE_CONFIG=!CONFIG_MODULES", True),
        ("build_exclude=yes", True),
    ],
)
def test_build_exclusive_directives(scratch: Scratch, kernel: str, directive: str, excluded: bool) -> None:
    scratch.add_source("hello")
    r = scratch.dkms("build", "hello/1.0", "-k", kernel, "--directive", directive)
    assert r.rc == (77 if excluded else 0), r
    assert (scratch.dkms_tree / "hello/1.0" / kernel / ARCH / "module").is_dir() is not excluded
    if excluded:
        assert "BUILD_EXCLUSIVE" in r.err


def test_kernel_config_option(scratch: Scratch, kernel: str, cloud_kernel: str) -> None:
    """--config points BUILD_EXCLUSIVE_CONFIG at another config (the cloud one lacks CONFIG_DRM)."""
    scratch.add_source("exclusive")
    r = scratch.dkms(
        "build", "exclusive/1.0", "-k", kernel, "--config", f"/lib/modules/{cloud_kernel}/build/.config"
    )
    assert r.rc == 77, r
    scratch.ok("build", "exclusive/1.0", "-k", kernel)


def test_kernelsourcedir_option(scratch: Scratch, kernel: str) -> None:
    fake = "9.9.9-fake"
    (scratch.install_tree / fake).mkdir()
    scratch.add_source("hello")
    r = scratch.dkms("build", "hello/1.0", "-k", fake)
    assert r.rc == 21, r
    # the headers of another kernel, through --kernelsourcedir (the module is built for it)
    r = scratch.dkms("build", "hello/1.0", "-k", fake, "--kernelsourcedir", f"/lib/modules/{kernel}/build")
    assert r.rc == 0, r
    log = (scratch.dkms_tree / "hello/1.0" / fake / ARCH / "log/make.log").read_text()
    assert f"-C /lib/modules/{kernel}/build" in log


def test_no_depmod_quiet_and_verbose(scratch: Scratch, kernel: str) -> None:
    scratch.add_source("hello")
    dep = scratch.install_tree / kernel / "modules.dep"
    before = dep.read_text()
    r = scratch.ok("install", "hello/1.0", "-k", kernel, "--no-depmod")
    assert dep.read_text() == before  # depmod not run
    assert "Running depmod" not in r.out
    r = scratch.ok("uninstall", "hello/1.0", "-k", kernel, "-q")
    assert r.out == "" and r.err == ""
    assert not dep.exists()  # the last module is gone: depmod's empty output files are removed
    scratch.prepare_kernel(kernel)
    r = scratch.ok("install", "hello/1.0", "-k", kernel, "--verbose")
    assert f"depmod -b {scratch.root} -a {kernel}" in r.out  # command lines instead of step names
    assert "updates/dkms/hello.ko:" in dep.read_text()
    r = scratch.ok("unbuild", "hello/1.0", "-k", kernel)
    r = scratch.ok("build", "hello/1.0", "-k", kernel, "--verbose")
    assert f"make -j{os.cpu_count()} KERNELRELEASE={kernel}" in r.out
    assert "Building module(s)" not in r.out


@pytest.mark.parametrize(
    ("os_release", "dest"),
    [
        ('ID="rocky"\nID_LIKE="rhel centos fedora"\n', "extra"),
        ('ID="opensuse-leap"\nID_LIKE="suse opensuse"\n', "updates"),
        ("ID=gentoo\n", "kernel/drivers/misc"),
        ("ID=arch\n", "updates/dkms"),
    ],
)
def test_install_destination_per_family(
    scratch: Scratch, kernel: str, tmp_path: Path, os_release: str, dest: str
) -> None:
    f = tmp_path / "os-release"
    f.write_text(os_release)
    scratch.extra_env["PYDKMS_OS_RELEASE"] = str(f)
    scratch.extra_env["NO_WEAK_MODULES"] = "1"  # the rhel/suse weak-modules tools do not exist here
    scratch.add_source("replaceme", "2.0")
    arch = ["-a", ARCH]  # RPM families would ask rpm for the arch
    scratch.ok("install", "replaceme/2.0", "-k", kernel, *arch)
    assert (scratch.install_tree / kernel / dest / "replaceme.ko").is_file()
    assert scratch.status() == [f"replaceme/2.0, {kernel}, {ARCH}: installed"]
    scratch.ok("uninstall", "replaceme/2.0", "-k", kernel, *arch)
    assert not (scratch.install_tree / kernel / dest / "replaceme.ko").exists()


def test_installtree_outside_lib_modules_skips_depmod(tmp_path: Path, kernel: str) -> None:
    """[fix D-11] an install tree that does not end in /lib/modules never gets the host's depmod."""
    s = Scratch(tmp_path / "r")
    for d in (s.dkms_tree, s.source_tree, s.etc):
        d.mkdir(parents=True)
    modules = tmp_path / "r" / "kmods"
    (modules / kernel).mkdir(parents=True)
    (modules / kernel / "build").symlink_to(f"/lib/modules/{kernel}/build")
    (modules / kernel / "modules.dep").write_text("")
    shutil.copytree(Path(__file__).parents[2] / "examples" / "hello", s.source_tree / "hello-1.0")
    args = ["--dkmstree", str(s.dkms_tree), "--sourcetree", str(s.source_tree), "--installtree", str(modules)]
    r = s.dkms("install", "hello/1.0", "-k", kernel, "--verbose", *args, trees=False)
    assert r.rc == 0, r
    assert "Skipping depmod" in r.out
    assert (modules / kernel / "modules.dep").read_text() == ""
    host = Path(f"/lib/modules/{kernel}/modules.dep")
    assert not host.exists() or "hello" not in host.read_text()


def test_post_transaction(scratch: Scratch, kernel: str) -> None:
    scratch.etc.mkdir(parents=True, exist_ok=True)
    marker = scratch.root / "post.txt"
    # single quotes: $kernelver is expanded when the value is re-read just before running it
    (scratch.etc / "framework.conf").write_text(f"post_transaction='echo pt $kernelver $arch >> {marker}'\n")
    scratch.add_source("hello")
    scratch.ok("build", "hello/1.0", "-k", kernel)
    assert not marker.exists()  # build never runs it
    scratch.ok("install", "hello/1.0", "-k", kernel)
    assert marker.read_text() == f"pt {kernel} {ARCH}\n"
    log = (scratch.dkms_tree / "post_transaction.log").read_text()
    assert "# exit code: 0" in log
    scratch.ok("install", "hello/1.0", "-k", kernel)  # already installed: still runs (P-15)
    scratch.ok("uninstall", "hello/1.0", "-k", kernel)
    assert marker.read_text().count("pt ") == 3


def test_failed_build_leaves_no_partial_state(scratch: Scratch, kernel: str) -> None:
    """[fix D-15] killed mid-build: no K/A appears, no staging dir is left behind by later runs."""
    src = scratch.add_source("hello")
    append_conf(src, 'MAKE[0]="sleep 30"\n')
    proc = subprocess.Popen(
        [*scratch.dkms_argv("build", "hello/1.0", "-k", kernel)], env=scratch.env(), cwd=scratch.root,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    log = scratch.dkms_tree / "hello/1.0/build/make.log"
    for _ in range(300):
        if log.exists() and "sleep 30" in log.read_text():
            break
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # dkms, its bash and the "make", as a crash would
    proc.wait()
    assert scratch.status() == ["hello/1.0: added"]
    assert not (scratch.dkms_tree / "hello/1.0" / kernel / ARCH).exists()
    # the lock died with the process: the next run proceeds and succeeds
    conf = src / "dkms.conf"
    conf.write_text(conf.read_text().replace('MAKE[0]="sleep 30"\n', ""))
    scratch.ok("build", "hello/1.0", "-k", kernel)
    assert scratch.status() == [f"hello/1.0, {kernel}, {ARCH}: built"]
    assert not list((scratch.dkms_tree / "hello/1.0" / kernel).glob(".tmp_*"))


def test_concurrent_invocations_wait_for_each_other(scratch: Scratch, kernel: str) -> None:
    """[fix D-03] a second dkms waits (and says so) while the first holds the tree; status never waits."""
    src = scratch.add_source("hello")
    scratch.ok("add", "hello/1.0")
    append_conf(src, 'PRE_BUILD="slow.sh"\n')
    (src / "slow.sh").write_text("#!/bin/sh\nsleep 3\n")
    (src / "slow.sh").chmod(0o755)
    first = subprocess.Popen(
        scratch.dkms_argv("build", "hello/1.0", "-k", kernel), env=scratch.env(), cwd=scratch.root,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    log = scratch.dkms_tree / "hello/1.0/build/make.log"
    for _ in range(200):
        if log.exists() and "pre_build" in log.read_text():
            break
        time.sleep(0.05)
    t0 = time.monotonic()
    r = scratch.ok("status")
    assert time.monotonic() - t0 < 2.5
    assert r.lines == ["hello/1.0: added"]  # never a half-built state
    second = scratch.dkms("build", "hello/1.0", "-k", kernel)
    out, err = first.communicate(timeout=120)
    assert first.returncode == 0, out + err
    assert second.rc == 0, second
    assert "Waiting for another dkms" in second.err
    assert "already built" in second.out  # it saw the first one's result, not a half state
    timed = scratch.dkms("build", "hello/1.0", "-k", kernel, env={"PYDKMS_LOCK_TIMEOUT": "0.5"})
    assert timed.rc == 0  # nobody holds the lock now


def test_interrupted_install_can_be_finished(scratch: Scratch, kernel: str) -> None:
    """A copy left by an install that died before the kernel link is not a conflicting module."""
    scratch.add_source("hello")
    scratch.ok("install", "hello/1.0", "-k", kernel)
    link = scratch.dkms_tree / "hello" / f"kernel-{kernel}-{ARCH}"
    link.unlink()  # as if the process had been killed between the copy and the link
    assert scratch.status() == [f"hello/1.0, {kernel}, {ARCH}: built"]
    scratch.ok("install", "hello/1.0", "-k", kernel)
    assert scratch.status() == [f"hello/1.0, {kernel}, {ARCH}: installed"]
    # a different module of the same version elsewhere is still refused
    scratch.ok("uninstall", "hello/1.0", "-k", kernel)
    other = scratch.install_tree / kernel / "kernel" / "misc"
    other.mkdir(parents=True)
    built = scratch.dkms_tree / "hello/1.0" / kernel / ARCH / "module/hello.ko"
    (other / "hello.ko").write_bytes(built.read_bytes())
    r = scratch.dkms("install", "hello/1.0", "-k", kernel)
    assert r.rc == 6 and "already installed at version 1.0" in r.err, r


def test_rpm_safe_upgrade_cancels_the_remove_of_the_same_version(scratch: Scratch, kernel: str) -> None:
    """tree.md §9: add and remove from the same rpm transaction (same grandparent process)."""
    scratch.add_source("hello")
    argv = " ".join(scratch.dkms_argv("add", "hello/1.0", "--rpm_safe_upgrade"))
    rm = " ".join(scratch.dkms_argv("remove", "hello/1.0", "--all", "--rpm_safe_upgrade"))
    tmp = scratch.root / "tmp"
    tmp.mkdir()
    r = subprocess.run(
        ["sh", "-c", f"{argv} && {rm}"], env=scratch.env({"TMPDIR": str(tmp)}), capture_output=True, text=True
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert "cancelled" in r.stderr
    assert scratch.status() == ["hello/1.0: added"]  # the removal did not happen
    assert list(tmp.iterdir()) == []  # and the lock file was consumed
    scratch.ok("remove", "hello/1.0", "--all", "--rpm_safe_upgrade", env={"TMPDIR": str(tmp)})
    assert scratch.status() == []


def test_build_depends_rebuild_records(scratch: Scratch, kernel: str) -> None:
    scratch.add_source("depbase")
    src = scratch.add_source("depuser")
    append_conf(src, 'BUILD_DEPENDS_REBUILD="yes"\n')
    scratch.ok("install", "depbase/1.0", "-k", kernel)
    scratch.ok("build", "depuser/1.0", "-k", kernel)
    assert (scratch.dkms_tree / "depuser/1.0" / kernel / ARCH / ".dep_depbase").read_text() == "1.0\n"


def test_deprecated_directives_are_announced_on_strict_reads(scratch: Scratch, kernel: str) -> None:
    src = scratch.add_source("hello")
    append_conf(src, 'CLEAN="make clean"\nREMAKE_INITRD="yes"\n')
    r = scratch.ok("add", "hello/1.0")
    conf = src / "dkms.conf"
    assert f"Deprecated feature: CLEAN ({conf})" in r.err
    assert f"Deprecated feature: REMAKE_INITRD ({conf})" in r.err
    r = scratch.ok("status")
    assert r.err == ""  # never from status [fix D-05]
    (scratch.etc / "hello.conf").write_text('PACKAGE_NAME="hello"\n')
    r = scratch.ok("build", "hello/1.0", "-k", kernel)
    # one notice per evaluated file, naming each file
    assert r.err.count("Deprecated feature: CLEAN") == 2 and str(scratch.etc / "hello.conf") in r.err
