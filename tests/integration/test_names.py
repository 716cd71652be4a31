"""Names never lead out of the trees (issue 9, findings 1 and 2).

Module, version, kernel and arch names from the command line are validated before any path is
built (exit 3 for a module or version, 2 for a kernel or arch, one line naming the value); names
found on disk that are invalid are skipped with one warning naming the path; values dkms puts
into a shell command line are quoted. Each test checks that nothing outside the trees changed
(victim directories shaped like tree entries, and a snapshot of everything beside the trees) and
that the installed state is intact.
"""

from __future__ import annotations

import os
import shlex
import shutil
from pathlib import Path
from typing import Dict, List, Tuple

import pytest

from tests.conftest import ARCH, Scratch

pytestmark = pytest.mark.integration

#: a kernel "release" that runs a command wherever it reaches a shell unquoted
HOSTILE_KERNEL_SUFFIX = ";touch PWNED;#"


def outside_snapshot(s: Scratch) -> Dict[str, Tuple[str, int, int, str]]:
    """Every path under the scratch root but outside the three trees and etc, with its state."""
    skip = {str(p) for p in (s.dkms_tree, s.source_tree, s.install_tree, s.etc)}
    out: Dict[str, Tuple[str, int, int, str]] = {}
    for dirpath, dirnames, filenames in os.walk(s.root):
        dirnames[:] = [d for d in dirnames if os.path.join(dirpath, d) not in skip]
        for name in [*dirnames, *filenames]:
            p = os.path.join(dirpath, name)
            st = os.lstat(p)
            link = os.readlink(p) if os.path.islink(p) else ""
            kind = "l" if link else "d" if os.path.isdir(p) else "f"
            out[os.path.relpath(p, s.root)] = (kind, st.st_size, st.st_mtime_ns, link)
    return out


def pwned(root: Path) -> List[Path]:
    return [Path(d) / f for d, _dirs, files in os.walk(root) for f in files if f == "PWNED"]


def installed_hello(s: Scratch, kernel: str) -> Path:
    s.add_source("hello")
    s.ok("install", "hello/1.0", "-k", kernel)
    ko = s.install_tree / kernel / "updates" / "dkms" / "hello.ko"
    assert ko.is_file()
    return ko


def assert_hello_installed(s: Scratch, kernel: str, ko: Path) -> None:
    assert ko.is_file()
    link = s.dkms_tree / "hello" / f"kernel-{kernel}-{ARCH}"
    assert (link / "module" / "hello.ko").is_file()
    assert s.status() == [f"hello/1.0, {kernel}, {ARCH}: installed"]


def victim(parent: Path, source: Path, kernel: str = "") -> Path:
    """A directory outside the trees that looks like an added (and built) m/v entry."""
    v = parent / "victim"
    v.mkdir(parents=True)
    (v / "f").write_text("x\n")
    (v / "source").symlink_to(source)
    if kernel:
        (v / kernel / ARCH / "module").mkdir(parents=True)
        (v / kernel / ARCH / "module" / "hello.ko").write_text("not a module\n")
    return v


# ---- finding 1: module and version ------------------------------------------------------------
@pytest.mark.parametrize("with_kernel", [False, True])
def test_remove_with_dotdot_in_the_version_deletes_nothing_outside(
    scratch: Scratch, kernel: str, with_kernel: bool
) -> None:
    ko = installed_hello(scratch, kernel)
    (scratch.dkms_tree / "bar_hello").mkdir()
    # $dkms_tree/bar_hello/../../victim
    v = victim(scratch.dkms_tree.parent, scratch.source_tree / "hello-1.0", kernel if with_kernel else "")
    before = outside_snapshot(scratch)
    args = ["-k", kernel] if with_kernel else ["--all"]
    r = scratch.dkms("remove", "bar_hello/../../victim", *args)
    assert r.rc == 3, str(r)
    assert r.err == (
        "Error! Invalid module version '../../victim': it contains '/'; a module name or version must be "
        "a plain directory name (not empty, no '/', no line break, no NUL byte, not '.' or '..').\n"
    )
    assert "Deleting" not in r.out
    assert (v / "f").read_text() == "x\n" and outside_snapshot(scratch) == before
    assert (scratch.dkms_tree / "bar_hello").is_dir()
    assert_hello_installed(scratch, kernel, ko)


def test_remove_of_a_version_naming_another_module_keeps_it_installed(scratch: Scratch, kernel: str) -> None:
    ko = installed_hello(scratch, kernel)
    (scratch.dkms_tree / "bar_hello").mkdir()
    before = outside_snapshot(scratch)
    for argv in (
        ["-m", "bar_hello", "-v", "../hello/1.0", "--all"],
        ["-m", "bar_hello/../hello/1.0", "--all"],
        ["-m", "..", "-v", "hello/1.0", "--all"],
        ["hello/.", "--all"],
    ):
        for action in ("remove", "unbuild", "uninstall"):
            r = scratch.dkms(action, *argv)
            assert r.rc == 3, str(r)
            assert r.err.startswith("Error! Invalid module ") and r.err.count("\n") == 1, str(r)
    assert outside_snapshot(scratch) == before
    assert_hello_installed(scratch, kernel, ko)


def test_build_install_add_and_status_refuse_bad_module_names(scratch: Scratch, kernel: str) -> None:
    ko = installed_hello(scratch, kernel)
    shutil.copytree(scratch.source_tree / "hello-1.0", scratch.source_tree.parent / "x-1.0")
    before = outside_snapshot(scratch)
    for action in ("add", "build", "install"):
        r = scratch.dkms(action, "../x/1.0", "-k", kernel)  # $source_tree/../x-1.0
        assert r.rc == 3 and "Invalid module name '..'" in r.err, str(r)
        r = scratch.dkms(action, "hello/1.0\n2", "-k", kernel)
        assert r.rc == 3 and "Invalid module version '1.0\\x0a2': it contains a line break" in r.err, str(r)
    r = scratch.dkms("status", "bar_hello/../../victim")
    assert (r.rc, r.out) == (3, "") and "Invalid module version '../../victim'" in r.err
    r = scratch.dkms("match", "--templatekernel", kernel, "-k", "6.1.0-1-amd64", "..")
    assert r.rc == 3 and "Invalid module name '..'" in r.err, str(r)
    assert outside_snapshot(scratch) == before
    assert not (scratch.dkms_tree / "x").exists() and not (scratch.dkms_tree / "..").is_symlink()
    assert_hello_installed(scratch, kernel, ko)


# ---- finding 2: kernel and arch -------------------------------------------------------------------
def test_install_to_kernel_dotdot_writes_nothing_outside(scratch: Scratch, kernel: str) -> None:
    scratch.add_source("hello")
    scratch.ok("add", "hello/1.0")
    before = outside_snapshot(scratch)
    for argv in (["-k", ".."], ["-k", f"../{kernel}"], ["-k", f"{kernel}/.."], ["-k", kernel, "-a", ".."]):
        r = scratch.dkms("install", "hello/1.0", *argv)
        assert r.rc == 2, str(r)
        assert r.err.startswith("Error! Invalid ") and r.err.count("\n") == 1, str(r)
    assert not (scratch.install_tree.parent / "updates").exists()
    assert outside_snapshot(scratch) == before
    assert scratch.status() == ["hello/1.0: added"]
    assert sorted(os.listdir(scratch.dkms_tree / "hello" / "1.0")) == ["build", "source"]


def test_arch_dot_is_refused_by_status_and_remove(scratch: Scratch, kernel: str) -> None:
    ko = installed_hello(scratch, kernel)
    r = scratch.dkms("status", "-a", ".")
    assert (r.rc, r.out) == (2, "") and "Invalid architecture '.': it is '.'" in r.err, str(r)
    r = scratch.dkms("status", "-k", "6.1.0-*", "-a", "x86_6?")  # patterns stay patterns
    assert (r.rc, r.lines) == (0, [f"hello/1.0, {kernel}, {ARCH}: installed"]), str(r)
    for argv in (["-a", "."], ["-k", kernel, "-a", "."], ["-k", f"{kernel}/."]):
        r = scratch.dkms("remove", "hello/1.0", *argv)
        assert r.rc == 2 and "Invalid architecture '.'" in r.err, str(r)
    assert_hello_installed(scratch, kernel, ko)


def test_shell_metacharacters_in_a_kernel_name_are_refused(scratch: Scratch, kernel: str) -> None:
    scratch.add_source("hello")
    hostile = kernel + HOSTILE_KERNEL_SUFFIX
    for action in ("build", "install", "autoinstall", "kernel_postinst", "kernel_prerm"):
        args = [action, "hello/1.0"] if action in ("build", "install") else [action]
        r = scratch.dkms(*args, "-k", hostile)
        assert r.rc == 2, str(r)
        assert r.err == (
            f"Error! Invalid kernel version '{hostile}': it contains ';'; a kernel version or architecture "
            "may only contain letters, digits and '.', '_', '+', '~', '-', and may not start with '-' or be "
            "'.' or '..'.\n"
        ), str(r)
    r = scratch.dkms("match", "--templatekernel", hostile, "-k", kernel)
    assert r.rc == 2 and "Invalid template kernel version" in r.err, str(r)
    assert pwned(scratch.root) == []


def test_hostile_kernel_directory_in_the_install_tree_is_skipped(scratch: Scratch, kernel: str) -> None:
    """`autoinstall --all-kernels` used to pick it up and run `touch` through the default MAKE."""
    scratch.add_source("hello")
    scratch.ok("add", "hello/1.0")
    hostile = kernel + HOSTILE_KERNEL_SUFFIX
    kdir = scratch.install_tree / hostile
    kdir.mkdir()
    (kdir / "build").symlink_to(f"/lib/modules/{kernel}/build")  # it has headers
    before = outside_snapshot(scratch)
    r = scratch.dkms("autoinstall", "--all-kernels")
    assert r.rc == 0, str(r)
    warning = f"Warning: {kdir}: skipped, not a valid kernel version (it contains ';').\n"
    assert r.err.count(warning) == 1, str(r)
    assert hostile not in r.out
    assert f"hello/1.0, {kernel}, {ARCH}: installed" in scratch.status()
    assert not (scratch.dkms_tree / "hello" / "1.0" / hostile).exists()
    r = scratch.dkms("build", "hello/1.0", "--all-kernels")
    assert r.rc == 0 and r.err.count(warning) == 1, str(r)
    assert pwned(scratch.root) == [] and outside_snapshot(scratch) == before


def test_invalid_names_in_the_dkms_tree_are_skipped_and_reported(scratch: Scratch, kernel: str) -> None:
    ko = installed_hello(scratch, kernel)
    vdir = scratch.dkms_tree / "hello" / "1.0"
    hostile = kernel + HOSTILE_KERNEL_SUFFIX
    # a copy of the real build under a hostile kernel name, one under a bad arch, and bad m/v dirs
    shutil.copytree(vdir / kernel, vdir / hostile, symlinks=True)
    shutil.copytree(vdir / kernel / ARCH, vdir / kernel / "x 86", symlinks=True)
    shutil.copytree(vdir, scratch.dkms_tree / "hello" / "2.0\n", symlinks=True)
    shutil.copytree(scratch.dkms_tree / "hello", scratch.dkms_tree / "bad\rname", symlinks=True)
    warnings = [
        f"Warning: {scratch.dkms_tree}/bad\\x0dname: skipped, not a valid module name (it contains a line break).",
        f"Warning: {scratch.dkms_tree}/hello/2.0\\x0a: skipped, not a valid module version (it contains a line break).",
        f"Warning: {vdir}/{kernel}/x 86: skipped, not a valid architecture (it contains ' ').",
        f"Warning: {vdir}/{hostile}: skipped, not a valid kernel version (it contains ';').",
    ]
    r = scratch.ok("status")
    assert r.lines == [f"hello/1.0, {kernel}, {ARCH}: installed"]
    assert r.err.splitlines() == warnings, str(r)
    r = scratch.ok("status", "--json")
    assert r.err.splitlines() == warnings, str(r)
    r = scratch.dkms("kernel_prerm", "-k", kernel)  # skips the bad m/v, uninstalls the real one
    assert r.rc == 0 and not ko.exists(), str(r)
    assert [line for line in r.err.splitlines() if line.startswith("Warning")] == warnings[:2], str(r)
    assert not (vdir / kernel / ARCH).exists()
    assert (vdir / hostile / ARCH / "module" / "hello.ko").is_file()  # not used, not deleted
    assert (vdir / kernel / "x 86" / "module" / "hello.ko").is_file()
    scratch.ok("install", "hello/1.0", "-k", kernel)
    r = scratch.dkms("remove", "hello/1.0", "--all")
    assert r.rc == 0 and pwned(scratch.root) == [], str(r)
    assert r.err.splitlines() == warnings[2:] and not ko.exists(), str(r)
    assert not (vdir / kernel / ARCH).exists()
    assert (vdir / hostile).is_dir() and (vdir / kernel / "x 86").is_dir()


# ---- quoting: values dkms puts into shell command lines -------------------------------------------
@pytest.fixture
def hostile_scratch(tmp_path: Path, kernel: str) -> Scratch:
    """A scratch tree whose every path contains a shell command (legal in a directory name)."""
    s = Scratch(tmp_path / "root;touch PWNED;x")
    for d in (s.dkms_tree, s.source_tree, s.install_tree, s.etc):
        d.mkdir(parents=True)
    s.prepare_kernel(kernel)
    return s


def test_default_make_and_build_scripts_quote_the_paths(hostile_scratch: Scratch, kernel: str) -> None:
    """Kbuild itself cannot build in such a directory; what matters is what bash was given."""
    s = hostile_scratch
    log = s.root / "hooks.log"
    s.add_source("hooks")
    s.dkms("build", "hooks/1.0", "-k", kernel, env={"HOOKS_LOG": str(log)})
    build = s.dkms_tree / "hooks" / "1.0" / "build"
    assert log.read_text().splitlines()[1].startswith(f"PRE_BUILD cwd={build} ")  # the `cd` worked
    make_log = (build / "make.log").read_text()
    commands = [
        line[len("# command: ") :] for line in make_log.splitlines() if line.startswith("# command: ")
    ]
    assert len(commands) == 2 and shlex.split(commands[1]) == [
        "make",
        f"-j{os.cpu_count()}",
        f"KERNELRELEASE={kernel}",
        "-C",
        f"{s.install_tree}/{kernel}/build",
        f"M={build}",
    ]
    assert shlex.split(commands[0]) == ["cd", f"{build}/", "&&", f"{build}/scripts/pre_build.sh", "arg1"]
    assert pwned(s.root.parent) == []


def test_patch_names_are_quoted(scratch: Scratch, kernel: str) -> None:
    src = scratch.add_source("patched")
    (src / "patches" / "fix.patch").rename(src / "patches" / "a;touch PWNED;b.patch")
    conf = src / "dkms.conf"
    conf.write_text(conf.read_text().replace('PATCH[0]="fix.patch"', "PATCH[0]='a;touch PWNED;b.patch'"))
    r = scratch.dkms("build", "patched/1.0", "-k", kernel)
    assert r.rc == 0, str(r)
    assert pwned(scratch.root) == []
