"""add / build / install / uninstall / unbuild / remove / status on real modules and real headers."""

from __future__ import annotations

import os
import re
import subprocess
import time
from pathlib import Path
from typing import List

import pytest

from tests.conftest import ARCH, Scratch
from tests.support.kmod import modinfo, sections

pytestmark = pytest.mark.integration


def test_hello_full_lifecycle(scratch: Scratch, kernels: List[str]) -> None:
    k1, k2 = kernels[:2]
    src = scratch.add_source("hello")
    r = scratch.ok("add", "hello/1.0")
    link = scratch.dkms_tree / "hello" / "1.0" / "source"
    assert link.is_symlink() and os.readlink(link) == str(src)  # absolute link (tree.md §5)
    assert (scratch.dkms_tree / "hello" / "1.0" / "build").is_dir()
    assert scratch.status() == ["hello/1.0: added"]

    scratch.ok("build", "hello/1.0", "-k", k1)
    target = scratch.dkms_tree / "hello" / "1.0" / k1 / ARCH
    built = target / "module" / "hello.ko"
    assert built.is_file()
    assert not (scratch.dkms_tree / "hello" / "1.0" / "build").exists()
    assert not list((scratch.dkms_tree / "hello" / "1.0" / k1).glob(".tmp_*"))
    log = (target / "log" / "make.log").read_text()
    lines = log.splitlines()
    assert lines[0] == f"DKMS (dkms-3.2.2) make.log for hello/1.0 for kernel {k1} ({ARCH})"
    assert re.match(r"^\w{3} \w{3} [ \d]\d \d\d:\d\d:\d\d \w+ \d{4}$", lines[1]), lines[1]
    assert (
        f"# command: make -j{os.cpu_count()} KERNELRELEASE={k1} -C {scratch.install_tree}/{k1}/build M={scratch.dkms_tree}/hello/1.0/build"
        in log
    )
    assert "\n# exit code: 0\n# elapsed time: 00:00:" in log
    assert "\n" + "-" * 64 + "\n" in log
    assert ".debug_info" not in sections(built)  # strip -g
    assert modinfo(built, "vermagic").startswith(k1 + " ")
    assert scratch.status() == [f"hello/1.0, {k1}, {ARCH}: built"]
    assert scratch.status("-k", k2) == ["hello/1.0: added"]  # defects.md P-02

    scratch.ok("install", "hello/1.0", "-k", k1, "-k", k2)
    for k in (k1, k2):
        installed = scratch.install_tree / k / "updates" / "dkms" / "hello.ko"
        assert installed.is_file()
        assert (
            installed.read_bytes()
            == (scratch.dkms_tree / "hello/1.0" / k / ARCH / "module/hello.ko").read_bytes()
        )
        klink = scratch.dkms_tree / "hello" / f"kernel-{k}-{ARCH}"
        assert os.readlink(klink) == f"1.0/{k}/{ARCH}"  # relative link
        assert "updates/dkms/hello.ko:" in (scratch.install_tree / k / "modules.dep").read_text()
    assert scratch.status() == [f"hello/1.0, {k}, {ARCH}: installed" for k in sorted([k1, k2])]
    assert (
        not Path(f"/lib/modules/{k1}/modules.dep").exists()
        or "hello" not in Path(f"/lib/modules/{k1}/modules.dep").read_text()
    )  # depmod ran on the scratch tree [fix D-11]

    r = scratch.ok("uninstall", "hello/1.0", "-k", k2)
    assert "ACTIVE" in r.out
    assert not (scratch.install_tree / k2 / "updates").exists()  # empty dirs pruned
    assert not (scratch.dkms_tree / "hello" / f"kernel-{k2}-{ARCH}").exists()
    assert f"hello/1.0, {k2}, {ARCH}: built" in scratch.status()

    scratch.ok("unbuild", "hello/1.0", "-k", k2)
    assert not (scratch.dkms_tree / "hello" / "1.0" / k2).exists()

    scratch.ok("remove", "hello/1.0", "--all")
    assert not (scratch.dkms_tree / "hello").exists()
    assert src.is_dir()  # $source_tree/m-v is never deleted
    assert scratch.status() == []
    assert not (scratch.install_tree / k1 / "updates").exists()


def test_already_built_and_installed_are_skipped(scratch: Scratch, kernel: str) -> None:
    scratch.add_source("hello")
    scratch.ok("install", "hello/1.0", "-k", kernel)  # auto-add + build + install
    r = scratch.ok("build", "hello/1.0", "-k", kernel)
    assert "already built" in r.out
    r = scratch.ok("install", "hello/1.0", "-k", kernel)
    assert "already installed" in r.out
    built = scratch.dkms_tree / "hello/1.0" / kernel / ARCH / "module/hello.ko"
    before = built.stat().st_ino
    r = scratch.ok("build", "hello/1.0", "-k", kernel, "--force")
    assert built.stat().st_ino != before
    # build --force does not uninstall; the kernel link points at the new (identical) build (P-20)
    assert scratch.status() == [f"hello/1.0, {kernel}, {ARCH}: installed"]
    scratch.ok("install", "hello/1.0", "-k", kernel, "--force")
    assert scratch.status() == [f"hello/1.0, {kernel}, {ARCH}: installed"]


def test_multi_module_package(scratch: Scratch, kernel: str) -> None:
    scratch.add_source("multi", "2.0")
    scratch.ok("install", "multi/2.0", "-k", kernel)
    module_dir = scratch.dkms_tree / "multi/2.0" / kernel / ARCH / "module"
    # make ran in the subdirectories, so there is no build/Module.symvers to keep
    assert sorted(p.name for p in module_dir.iterdir()) == ["alpha.ko", "multi_beta.ko"]
    assert ".debug_info" not in sections(module_dir / "alpha.ko")
    assert ".debug_info" in sections(module_dir / "multi_beta.ko")  # STRIP[1]=no
    # Debian family: every record goes to /updates/dkms whatever DEST_MODULE_LOCATION says
    dest = scratch.install_tree / kernel / "updates" / "dkms"
    assert sorted(p.name for p in dest.iterdir()) == ["alpha.ko", "multi_beta.ko"]
    assert scratch.status() == [f"multi/2.0, {kernel}, {ARCH}: installed"]
    scratch.ok("uninstall", "multi/2.0", "-k", kernel)
    assert not (scratch.install_tree / kernel / "updates").exists()


def test_patches_and_patch_match(scratch: Scratch, kernels: List[str]) -> None:
    k56 = next((k for k in kernels if "-56-" in k), None)
    other = next((k for k in kernels if "-56-" not in k), None)
    if k56 is None or other is None:
        pytest.skip("needs a -56- kernel and another one")
    scratch.add_source("patched")
    scratch.ok("build", "patched/1.0", "-k", k56, "-k", other)
    for k, expect56 in ((k56, True), (other, False)):
        ko = scratch.dkms_tree / "patched/1.0" / k / ARCH / "module/patched.ko"
        data = ko.read_bytes()
        log = (scratch.dkms_tree / "patched/1.0" / k / ARCH / "log/make.log").read_text()
        assert "# command: patch -p1 < ./patches/fix.patch" in log
        assert "# command: patch -p1 < ./patches/sub/feature.patch" in log
        assert ("# command: patch -p1 < ./patches/only56.patch" in log) is expect56
        assert data  # the module built after the patches applied


def test_patch_errors(scratch: Scratch, kernel: str) -> None:
    src = scratch.add_source("patched")
    conf = src / "dkms.conf"
    text = conf.read_text()
    conf.write_text(text + 'PATCH[3]="../../etc/passwd"\n')
    scratch.ok("add", "patched/1.0")
    r = scratch.dkms("build", "patched/1.0", "-k", kernel)
    assert r.rc == 5, r
    assert "'..'" in r.err
    conf.write_text(text + 'PATCH[3]="missing.patch"\n')
    r = scratch.dkms("build", "patched/1.0", "-k", kernel)
    assert r.rc == 5 and "missing.patch" in r.err, r
    conf.write_text(text + 'PATCH[3]="fix.patch"\n')  # applying it twice fails
    r = scratch.dkms("build", "patched/1.0", "-k", kernel)
    assert r.rc == 6, r
    assert (scratch.dkms_tree / "patched/1.0/build/make.log").is_file()  # kept for inspection
    assert scratch.status() == ["patched/1.0: added"]


def test_script_hooks(scratch: Scratch, kernel: str, tmp_path: Path) -> None:
    log = tmp_path / "hooks.log"
    env = {"HOOKS_LOG": str(log)}
    scratch.add_source("hooks")
    scratch.ok("add", "hooks/1.0", env=env)
    scratch.ok("install", "hooks/1.0", "-k", kernel, env=env)
    scratch.ok("uninstall", "hooks/1.0", "-k", kernel, env=env)
    lines = log.read_text().splitlines()
    names = [line.split()[0] for line in lines]
    assert names == ["POST_ADD", "PRE_BUILD", "POST_BUILD", "PRE_INSTALL", "POST_INSTALL", "POST_REMOVE"]
    by_name = {line.split()[0]: line for line in lines}
    source = scratch.dkms_tree / "hooks/1.0/source"
    build = scratch.dkms_tree / "hooks/1.0/build"
    assert f"cwd={build}" in by_name["PRE_BUILD"] and by_name["PRE_BUILD"].endswith("args=arg1")
    assert by_name["POST_BUILD"].endswith("args=arg1 arg2")
    for name in ("POST_ADD", "PRE_INSTALL", "POST_INSTALL", "POST_REMOVE"):
        assert f"cwd={source}" in by_name[name], by_name[name]
    make_log = (scratch.dkms_tree / "hooks/1.0" / kernel / ARCH / "log/make.log").read_text()
    assert "Running the pre_build script" in make_log and "Running the post_build script" in make_log


def test_failing_pre_build_and_pre_install(scratch: Scratch, kernel: str) -> None:
    scratch.add_source("hooks")
    scratch.ok("add", "hooks/1.0")
    r = scratch.dkms("build", "hooks/1.0", "-k", kernel, env={"HOOKS_FAIL_PRE_BUILD": "1"})
    assert r.rc == 3, r  # the script's own status
    assert (scratch.dkms_tree / "hooks/1.0/build/make.log").is_file()
    r = scratch.dkms("install", "hooks/1.0", "-k", kernel, env={"HOOKS_FAIL_PRE_INSTALL": "1"})
    assert r.rc == 101, r
    assert scratch.status() == [f"hooks/1.0, {kernel}, {ARCH}: built"]
    r = scratch.dkms("install", "hooks/1.0", "-k", kernel, "--force", env={"HOOKS_FAIL_PRE_INSTALL": "1"})
    assert r.rc == 0, r
    assert scratch.status() == [f"hooks/1.0, {kernel}, {ARCH}: installed"]


def test_failing_build(scratch: Scratch, kernels: List[str]) -> None:
    k1, k2 = kernels[:2]
    scratch.add_source("failing")
    r = scratch.dkms("build", "failing/1.0", "-k", k1, "-k", k2)
    assert r.rc == 10, r
    assert k1 in r.err and k2 in r.err  # says which kernels failed [fix D-02]
    # the two kernels built at the same time, each in its own build dir, kept for inspection
    for k in (k1, k2):
        log = scratch.dkms_tree / f"failing/1.0/.build-{k}-{ARCH}/make.log"
        assert str(log) in r.err
        text = log.read_text()
        assert "error:" in text and "# exit code: 2" in text
    # one kernel: the classic build/ dir
    r = scratch.dkms("build", "failing/1.0", "-k", k1)
    log = scratch.dkms_tree / "failing/1.0/build/make.log"
    assert r.rc == 10 and str(log) in r.err and "# exit code: 2" in log.read_text()
    assert scratch.status() == ["failing/1.0: added"]
    for k in (k1, k2):
        assert not (scratch.dkms_tree / "failing/1.0" / k).exists() or not list(
            (scratch.dkms_tree / "failing/1.0" / k).iterdir()
        )


def test_build_exclusive(scratch: Scratch, kernel: str, cloud_kernel: str) -> None:
    scratch.prepare_kernel(cloud_kernel)
    scratch.add_source("exclusive")
    r = scratch.dkms("build", "exclusive/1.0", "-k", cloud_kernel)
    assert r.rc == 77, r
    assert "BUILD_EXCLUSIVE" in r.err and "CONFIG_DRM" in r.err
    assert not (scratch.dkms_tree / "exclusive/1.0" / cloud_kernel).exists()
    assert scratch.status() == ["exclusive/1.0: added"]  # the auto-add stays
    r = scratch.dkms("install", "exclusive/1.0", "-k", cloud_kernel)
    assert r.rc == 77, r
    # one excluded and one built: 0 (cli.md §7)
    r = scratch.dkms("build", "exclusive/1.0", "-k", cloud_kernel, "-k", kernel)
    assert r.rc == 0, r
    assert scratch.status() == [f"exclusive/1.0, {kernel}, {ARCH}: built"]


def test_build_depends(scratch: Scratch, kernel: str) -> None:
    scratch.add_source("depbase")
    scratch.add_source("depuser")
    r = scratch.dkms("build", "depuser/1.0", "-k", kernel)
    assert r.rc == 13, r
    assert "depbase" in r.err
    assert not (scratch.dkms_tree / "depuser/1.0" / kernel).exists()
    scratch.ok("install", "depbase/1.0", "-k", kernel)
    scratch.ok("install", "depuser/1.0", "-k", kernel)
    ko = scratch.install_tree / kernel / "updates/dkms/depuser.ko"
    assert modinfo(ko, "depends") == "depbase"
    dep = (scratch.install_tree / kernel / "modules.dep").read_text()
    assert "updates/dkms/depuser.ko: updates/dkms/depbase.ko" in dep


def test_build_depends_force(scratch: Scratch, kernel: str) -> None:
    scratch.add_source("depbase")
    scratch.add_source("depuser")
    scratch.ok("add", "depbase/1.0")
    r = scratch.dkms("build", "depuser/1.0", "-k", kernel, "--force")
    assert "BUILD_DEPENDS" in r.err, r


def test_failed_forced_rebuild_keeps_the_previous_build(scratch: Scratch, kernel: str) -> None:
    scratch.add_source("hello")
    scratch.ok("install", "hello/1.0", "-k", kernel)
    target = scratch.dkms_tree / "hello/1.0" / kernel / ARCH
    before = (target / "module/hello.ko").read_bytes()
    r = scratch.dkms("build", "hello/1.0", "-k", kernel, "--force", "--directive", "MAKE=false")
    assert r.rc == 10, r
    # the build that is installed is still there, and still installed
    assert (target / "module/hello.ko").read_bytes() == before
    assert scratch.status() == [f"hello/1.0, {kernel}, {ARCH}: installed"]
    assert not [p.name for p in target.parent.iterdir() if p.name.startswith(".")]
    scratch.ok("build", "hello/1.0", "-k", kernel, "--force")
    assert scratch.status() == [f"hello/1.0, {kernel}, {ARCH}: installed"]
    assert not [p.name for p in target.parent.iterdir() if p.name.startswith(".")]
    scratch.ok("uninstall", "hello/1.0", "-k", kernel)
    assert not (scratch.install_tree / kernel / "updates/dkms/hello.ko").exists()


def test_uninstall_finds_our_file_when_the_built_module_is_unreadable(scratch: Scratch, kernel: str) -> None:
    scratch.add_source("hello")
    scratch.ok("install", "hello/1.0", "-k", kernel)
    built = scratch.dkms_tree / "hello/1.0" / kernel / ARCH / "module/hello.ko"
    installed = scratch.install_tree / kernel / "updates/dkms/hello.ko"
    # modinfo cannot read the built module, so the version match that locates the installed
    # copy fails; the install fingerprint still names the file we wrote
    built.write_bytes(b"")
    r = scratch.ok("uninstall", "hello/1.0", "-k", kernel)
    assert f"Deleting {installed}" in r.out
    assert not installed.exists()
    # a file that is no longer ours (replaced since) is left alone
    built.unlink()
    scratch.ok("build", "hello/1.0", "-k", kernel, "--force")
    scratch.ok("install", "hello/1.0", "-k", kernel)
    built.write_bytes(b"")
    installed.write_bytes(installed.read_bytes() + b"\0")
    r = scratch.ok("uninstall", "hello/1.0", "-k", kernel)
    assert "hello.ko was not found" in r.out
    assert installed.exists()


def test_module_without_version(scratch: Scratch, kernel: str) -> None:
    scratch.add_source("noversion")
    scratch.ok("install", "noversion/1.0", "-k", kernel)
    built = scratch.dkms_tree / "noversion/1.0" / kernel / ARCH / "module/noversion.ko"
    assert modinfo(built, "version") == ""
    assert scratch.status() == [f"noversion/1.0, {kernel}, {ARCH}: installed"]
    scratch.ok("uninstall", "noversion/1.0", "-k", kernel)
    assert not (scratch.install_tree / kernel / "updates").exists()
    # an identical unversioned copy elsewhere in the kernel: refused, nothing installed -> 6
    intree = scratch.install_tree / kernel / "kernel" / "extra"
    intree.mkdir(parents=True)
    (intree / "noversion.ko").write_bytes(built.read_bytes())
    r = scratch.dkms("install", "noversion/1.0", "-k", kernel)
    assert r.rc == 6, r
    assert "unversioned" in r.err
    assert scratch.status() == [f"noversion/1.0, {kernel}, {ARCH}: built"]
    # a versioned module of that name in the kernel: the unversioned build counts as older
    scratch.add_source("hello")
    scratch.ok("build", "hello/1.0", "-k", kernel)
    hello = scratch.dkms_tree / "hello/1.0" / kernel / ARCH / "module/hello.ko"
    (intree / "noversion.ko").write_bytes(hello.read_bytes())
    r = scratch.dkms("install", "noversion/1.0", "-k", kernel)
    assert r.rc == 6, r
    assert f"The built {built} has no version" in r.err
    assert f"already found in kernel {kernel} (1.0)" in r.err


def _intree(scratch: Scratch, kernel: str, version: str) -> Path:
    out = scratch.root / f"intree-{version}"
    out.mkdir(exist_ok=True)
    subprocess.run(
        [
            str(Path(__file__).parents[1] / "fixtures/modules/replaceme/make-intree.sh"),
            kernel,
            str(out),
            version,
        ],
        check=True,
        capture_output=True,
    )
    dest = scratch.install_tree / kernel / "kernel/drivers/misc"
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "replaceme.ko").write_bytes((out / "replaceme.ko").read_bytes())
    return dest / "replaceme.ko"


def test_original_module_archived_and_restored(scratch: Scratch, kernel: str) -> None:
    original = _intree(scratch, kernel, "1.0")
    content = original.read_bytes()
    scratch.add_source("replaceme", "2.0")
    scratch.ok("install", "replaceme/2.0", "-k", kernel)
    backup = scratch.dkms_tree / "replaceme/original_module" / kernel / ARCH
    assert (backup / "replaceme.ko").read_bytes() == content
    assert (backup / "replaceme.ko.origin").read_text() == f"{original}\n"
    assert not original.exists()
    assert (scratch.install_tree / kernel / "updates/dkms/replaceme.ko").is_file()
    assert scratch.status() == [f"replaceme/2.0, {kernel}, {ARCH}: installed (Original modules exist)"]
    scratch.ok("uninstall", "replaceme/2.0", "-k", kernel)
    assert original.read_bytes() == content  # never lost
    assert not (scratch.dkms_tree / "replaceme/original_module").exists()
    assert scratch.status() == [f"replaceme/2.0, {kernel}, {ARCH}: built"]


def test_failed_install_puts_the_original_back(scratch: Scratch, kernel: str) -> None:
    original = _intree(scratch, kernel, "1.0")
    content = original.read_bytes()
    scratch.add_source("replaceme", "2.0")
    scratch.ok("build", "replaceme/2.0", "-k", kernel)
    blocker = scratch.install_tree / kernel / "updates"
    blocker.write_text("")  # a file where the install directory should be
    r = scratch.dkms("install", "replaceme/2.0", "-k", kernel)
    assert r.rc == 6, r
    assert f"Installing {blocker}/dkms/replaceme.ko failed: Not a directory" in r.err
    # the original was archived before the copy failed: it is back, and nothing else is left
    assert original.read_bytes() == content
    assert not (scratch.dkms_tree / "replaceme/original_module").exists()
    assert scratch.status() == [f"replaceme/2.0, {kernel}, {ARCH}: built"]
    blocker.unlink()
    scratch.ok("install", "replaceme/2.0", "-k", kernel)
    assert not original.exists()


def test_install_killed_before_its_kernel_link_is_undone_by_remove(scratch: Scratch, kernel: str) -> None:
    original = _intree(scratch, kernel, "1.0")
    content = original.read_bytes()
    scratch.add_source("replaceme", "2.0")
    scratch.ok("install", "replaceme/2.0", "-k", kernel)
    # what an install killed after the copy but before the kernel link leaves behind
    (scratch.dkms_tree / "replaceme" / f"kernel-{kernel}-{ARCH}").unlink()
    copy = scratch.install_tree / kernel / "updates/dkms/replaceme.ko"
    assert copy.is_file() and not original.exists()
    r = scratch.ok("remove", "replaceme/2.0", "-k", kernel)
    assert "Undoing an interrupted install of replaceme/2.0" in r.out
    assert f"Deleting {copy}" in r.out
    assert not copy.exists()
    assert original.read_bytes() == content
    assert not (scratch.dkms_tree / "replaceme").exists()
    assert scratch.status() == []


def test_install_repairs_an_installed_module_whose_file_is_gone(scratch: Scratch, kernel: str) -> None:
    scratch.add_source("hello")
    scratch.ok("install", "hello/1.0", "-k", kernel)
    installed = scratch.install_tree / kernel / "updates/dkms/hello.ko"
    installed.unlink()  # what an uninstall killed before removing the kernel link leaves
    r = scratch.ok("install", "hello/1.0", "-k", kernel)
    assert f"but {installed} is missing: installing it again" in r.out
    assert installed.is_file()
    r = scratch.ok("install", "hello/1.0", "-k", kernel)
    assert "already installed" in r.out


def test_remove_killed_while_deleting_leaves_nothing_broken(scratch: Scratch, kernel: str) -> None:
    scratch.add_source("hello")
    scratch.ok("install", "hello/1.0", "-k", kernel)
    # remove renames m/v to a hidden name before deleting it; a kill during the deletion leaves
    # this, with the source link already gone
    trash = scratch.dkms_tree / "hello" / f".removing-0.9-{2**22}"
    (trash / kernel / ARCH / "module").mkdir(parents=True)
    assert scratch.status() == [f"hello/1.0, {kernel}, {ARCH}: installed"]
    r = scratch.ok("status")
    assert "broken" not in r.out + r.err
    scratch.ok("remove", "hello/1.0", "--all")
    assert not (scratch.dkms_tree / "hello").exists()  # the leftover went with the last version


def test_sigterm_stops_the_build_and_its_make(scratch: Scratch, kernel: str) -> None:
    src = scratch.add_source("hello")
    marker = scratch.root / "make-started"
    conf = src / "dkms.conf"
    plain = conf.read_text()
    conf.write_text(plain + f'MAKE[0]="touch {marker}; sleep 300; make"\n')
    proc = subprocess.Popen(
        scratch.dkms_argv("build", "hello/1.0", "-k", kernel),
        env=scratch.env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        for _ in range(300):
            if marker.exists():
                break
            time.sleep(0.1)
        assert marker.exists()
        proc.terminate()
        out, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 143, (out, err)
    assert "Terminated." in err
    # the MAKE command ran in its own process group, which went with dkms
    ps = subprocess.run(["pgrep", "-f", "sleep 300; make"], capture_output=True, text=True)
    assert ps.stdout.strip() == "", ps.stdout
    assert scratch.status() == ["hello/1.0: added"]
    conf.write_text(plain)
    scratch.ok("build", "hello/1.0", "-k", kernel)  # nothing left in the way


def test_odd_leftovers_and_missing_tools(scratch: Scratch, kernel: str, tmp_path: Path) -> None:
    scratch.add_source("hello")
    scratch.ok("add", "hello/1.0")
    target = scratch.dkms_tree / "hello/1.0" / kernel / ARCH
    # a K/A without module/ (an interrupted build leaves that) is no build: rebuilt over
    (target / "log").mkdir(parents=True)
    r = scratch.ok("build", "hello/1.0", "-k", kernel)
    assert f"Removing {target}: left incomplete" in r.out
    scratch.ok("unbuild", "hello/1.0", "-k", kernel)
    target.mkdir(parents=True)
    r = scratch.ok("unbuild", "hello/1.0", "-k", kernel)
    assert "is not built" in r.out
    assert not target.exists()  # the leftover went all the same
    # a fingerprint of the wrong shape, and an override "file" that is a directory: ignored
    scratch.ok("install", "hello/1.0", "-k", kernel)
    (target / ".pydkms-install.json").write_text("[1]\n")
    (scratch.etc / "hello.conf").mkdir(parents=True)
    assert scratch.status() == [f"hello/1.0, {kernel}, {ARCH}: installed"]
    scratch.ok("uninstall", "hello/1.0", "-k", kernel)
    # no depmod on PATH: the install is rolled back like any depmod failure (D-18)
    scratch.prepare_kernel(kernel)  # a modules.dep, so that depmod is due
    tools = tmp_path / "bin"
    tools.mkdir()
    for d in os.environ["PATH"].split(os.pathsep):
        if os.path.isdir(d):
            for name in os.listdir(d):
                if name != "depmod" and not (tools / name).exists():
                    (tools / name).symlink_to(os.path.join(d, name))
    r = scratch.dkms("install", "hello/1.0", "-k", kernel, env={"PATH": str(tools)})
    assert r.rc == 6, r
    assert "Program 'depmod' was not found" in r.err
    assert scratch.status() == [f"hello/1.0, {kernel}, {ARCH}: built"]
    assert not (scratch.install_tree / kernel / "updates/dkms/hello.ko").exists()


def test_relative_trees_are_taken_from_the_current_directory(scratch: Scratch, kernel: str) -> None:
    scratch.add_source("hello")
    rel = [
        "--dkmstree", os.path.relpath(scratch.dkms_tree, scratch.root),
        "--sourcetree", os.path.relpath(scratch.source_tree, scratch.root),
        "--installtree", os.path.relpath(scratch.install_tree, scratch.root),
    ]  # fmt: skip
    r = subprocess.run(
        [*scratch.dkms_argv("add", "hello/1.0", trees=False), *rel],
        cwd=scratch.root,
        env=scratch.env(),
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
    link = scratch.dkms_tree / "hello/1.0/source"
    assert os.readlink(link) == str(scratch.source_tree / "hello-1.0")
    assert scratch.status() == ["hello/1.0: added"]


def test_newer_intree_module_is_not_replaced(scratch: Scratch, kernel: str) -> None:
    original = _intree(scratch, kernel, "3.0")
    scratch.add_source("replaceme", "2.0")
    r = scratch.dkms("install", "replaceme/2.0", "-k", kernel)
    assert r.rc == 6, r
    assert "not newer" in r.err
    assert original.is_file()
    r = scratch.dkms("install", "replaceme/2.0", "-k", kernel, "--force-version-override")
    assert r.rc == 0, r


def test_crlf_conf(scratch: Scratch, kernel: str) -> None:
    src = scratch.add_source("crlf")
    assert b"\r\n" in (src / "dkms.conf").read_bytes()
    scratch.ok("install", "crlf/1.0", "-k", kernel)
    assert (scratch.install_tree / kernel / "updates/dkms/crlf.ko").is_file()
    assert scratch.status() == [f"crlf/1.0, {kernel}, {ARCH}: installed"]


def test_zero_module_package(scratch: Scratch, kernel: str) -> None:
    scratch.add_source("zeromod")
    r = scratch.ok("install", "zeromod/1.0", "-k", kernel)
    assert "zero modules" in r.err
    assert os.readlink(scratch.dkms_tree / "zeromod" / f"kernel-{kernel}-{ARCH}") == f"1.0/{kernel}/{ARCH}"
    assert scratch.status() == [f"zeromod/1.0, {kernel}, {ARCH}: installed"]


def test_missing_headers_and_kernel_dir(scratch: Scratch, kernel: str) -> None:
    scratch.add_source("hello")
    fake = "9.9.9-fake-amd64"
    (scratch.install_tree / fake).mkdir()
    r = scratch.dkms("build", "hello/1.0", "-k", fake, "-k", kernel)
    assert r.rc == 21, r
    assert "linux-headers" in r.err
    assert scratch.status() == [f"hello/1.0, {kernel}, {ARCH}: built"]  # the other kernel still built
    # a kernel that is not installed at all cannot be installed into (6)
    r = scratch.dkms(
        "install", "hello/1.0", "-k", "8.8.8-none", "--kernelsourcedir", f"/lib/modules/{kernel}/build"
    )
    assert r.rc == 6, r


def test_status_suffixes_and_filters(scratch: Scratch, kernels: List[str]) -> None:
    k1, k2 = kernels[:2]
    scratch.add_source("hello")
    scratch.add_source("noversion")
    scratch.ok("install", "hello/1.0", "-k", k1)
    scratch.ok("build", "noversion/1.0", "-k", k2)
    assert scratch.status("hello") == [f"hello/1.0, {k1}, {ARCH}: installed"]
    assert scratch.status("-m", "no*") == [f"noversion/1.0, {k2}, {ARCH}: built"]
    assert scratch.status("-k", k2) == ["hello/1.0: added", f"noversion/1.0, {k2}, {ARCH}: built"]
    assert scratch.status("-k", k1, "-k", k2, "hello") == [
        f"hello/1.0, {k1}, {ARCH}: installed",
        "hello/1.0: added",
    ]
    assert scratch.status("-a", "aarch64") == ["hello/1.0: added", "noversion/1.0: added"]
    assert scratch.status("hello/2.0") == []
    # a changed installed file
    installed = scratch.install_tree / k1 / "updates/dkms/hello.ko"
    installed.write_bytes(installed.read_bytes() + b"\0")
    assert scratch.status("hello") == [
        f"hello/1.0, {k1}, {ARCH}: installed (Differences between built and installed modules)"
    ]
    # a missing built file
    (scratch.dkms_tree / "noversion/1.0" / k2 / ARCH / "module/noversion.ko").unlink()
    assert scratch.status("noversion") == [
        f"noversion/1.0, {k2}, {ARCH}: built (Built modules are missing in the kernel modules folder)"
    ]


def test_status_broken_and_invisible(scratch: Scratch, kernel: str) -> None:
    src = scratch.add_source("hello")
    scratch.ok("add", "hello/1.0")
    (scratch.dkms_tree / "hello/1.0/source").unlink()
    r = scratch.ok("status")
    assert r.lines == ["hello/1.0: broken"]
    assert "hello/1.0" in r.err and "Manual intervention" in r.err
    for action in ("build", "install", "remove", "uninstall", "unbuild"):
        rr = scratch.dkms(action, "hello/1.0", "-k", kernel)
        assert rr.rc == 4, rr
    scratch.ok("add", "hello/1.0")  # add repairs a missing source link
    assert scratch.status() == ["hello/1.0: added"]
    os.rename(src, str(src) + ".gone")
    assert scratch.status() == ["hello/1.0: broken"]


def test_status_lists_every_kernel_directory(scratch: Scratch, kernel: str) -> None:
    """[fix D-21] kernels whose release does not start with digits and a dot are listed too."""
    scratch.add_source("hello")
    scratch.ok("build", "hello/1.0", "-k", kernel)
    odd = scratch.dkms_tree / "hello/1.0" / "custom-kernel" / ARCH
    (odd.parent).mkdir()
    os.symlink(scratch.dkms_tree / "hello/1.0" / kernel / ARCH, odd)
    assert f"hello/1.0, custom-kernel, {ARCH}: built" in scratch.status()


def test_status_json(scratch: Scratch, kernel: str) -> None:
    import json

    scratch.add_source("hello")
    scratch.add_source("noversion")
    scratch.ok("install", "hello/1.0", "-k", kernel)
    scratch.ok("add", "noversion/1.0")
    r = scratch.ok("status", "--json", "-k", kernel, "-k", kernel)
    assert r.out.count("\n") == 1 and r.err == ""
    doc = json.loads(r.out)
    assert doc["schema"] == "pydkms-status" and doc["schema_version"] == 1
    assert doc["generator"].startswith("pydkms ")
    assert doc["entries"] == [  # duplicates of the second pass removed
        {"module": "hello", "version": "1.0", "kernel": kernel, "arch": ARCH, "state": "installed",
         "original_modules": False, "built_modules_missing": False, "differs_from_installed": False},
        {"module": "noversion", "version": "1.0", "kernel": None, "arch": None, "state": "added",
         "original_modules": False, "built_modules_missing": False, "differs_from_installed": False},
    ]  # fmt: skip


def test_remove_without_kernel_removes_every_build(scratch: Scratch, kernels: List[str]) -> None:
    """`dkms remove m/v` does what the user means: gone from every kernel, and it says so."""
    k1, k2 = kernels[:2]
    scratch.add_source("hello")
    scratch.ok("install", "hello/1.0", "-k", k1)
    scratch.ok("build", "hello/1.0", "-k", k2)
    r = scratch.ok("remove", "hello/1.0")
    assert f"every kernel it is built for: {k1} ({ARCH}), {k2} ({ARCH})" in r.out or (
        f"every kernel it is built for: {k2} ({ARCH}), {k1} ({ARCH})" in r.out
    ), r.out
    assert scratch.status() == []
    assert not (scratch.install_tree / k1 / "updates").exists()
    # uninstall and unbuild keep upstream's default: the running kernel only (P-01)
    scratch.ok("install", "hello/1.0", "-k", k1)
    r = scratch.ok("uninstall", "hello/1.0")
    assert "not installed" in r.out
    assert scratch.status() == [f"hello/1.0, {k1}, {ARCH}: installed"]


def test_remove_keeps_registration_after_a_failure(scratch: Scratch, kernel: str) -> None:
    scratch.add_source("hooks")
    scratch.ok("install", "hooks/1.0", "-k", kernel)
    conf = scratch.source_tree / "hooks-1.0" / "dkms.conf"
    conf.write_text(conf.read_text() + 'AUTOINSTALL="maybe"\n')  # now invalid: uninstall cannot read it
    r = scratch.dkms("remove", "hooks/1.0", "--all")
    assert r.rc == 8, r
    assert (scratch.dkms_tree / "hooks/1.0").is_dir()  # never unregistered after a failure [fix D-02]


def test_directive_override_files_and_c(scratch: Scratch, kernel: str) -> None:
    src = scratch.add_source("hello")
    scratch.ok("add", "hello/1.0")
    r = scratch.ok("build", "hello/1.0", "-k", kernel, "--directive", "STRIP=no")
    assert 'DIRECTIVE: STRIP="no"' in r.out
    ko = scratch.dkms_tree / "hello/1.0" / kernel / ARCH / "module/hello.ko"
    assert ".debug_info" in sections(ko)
    scratch.ok("unbuild", "hello/1.0", "-k", kernel)
    (scratch.etc / "hello.conf").write_text('STRIP[0]="no"\n')
    scratch.ok("build", "hello/1.0", "-k", kernel)
    assert ".debug_info" in sections(ko)
    scratch.ok("unbuild", "hello/1.0", "-k", kernel)
    (scratch.etc / "hello.conf").unlink()
    alt = scratch.root / "alt.conf"
    alt.write_text(
        (src / "dkms.conf").read_text()
        + 'MAKE[0]="make -C ${kernel_source_dir} M=${dkms_tree}/hello/1.0/build V=1"\n'
    )
    scratch.ok("build", "hello/1.0", "-k", kernel, "-c", str(alt))
    log = (scratch.dkms_tree / "hello/1.0" / kernel / ARCH / "log/make.log").read_text()
    assert f"M={scratch.dkms_tree}/hello/1.0/build V=1" in log


def test_framework_conf_relocates_trees_and_jobs(scratch: Scratch, kernel: str) -> None:
    scratch.add_source("hello")
    scratch.etc.mkdir(parents=True, exist_ok=True)
    (scratch.etc / "framework.conf").write_text(
        f'dkms_tree="{scratch.dkms_tree}"\nsource_tree="{scratch.source_tree}"\n'
        f'install_tree="{scratch.install_tree}"\nparallel_jobs=3\n'
    )
    (scratch.etc / "framework.conf.d").mkdir()
    (scratch.etc / "framework.conf.d" / "10-jobs.conf").write_text("parallel_jobs=5\n")
    scratch.ok("build", "hello/1.0", "-k", kernel, trees=False)
    log = (scratch.dkms_tree / "hello/1.0" / kernel / ARCH / "log/make.log").read_text()
    assert f"make -j5 KERNELRELEASE={kernel}" in log
    scratch.ok("build", "hello/1.0", "-k", kernel, "-j", "2", "--force", trees=False)
    log = (scratch.dkms_tree / "hello/1.0" / kernel / ARCH / "log/make.log").read_text()
    assert f"make -j2 KERNELRELEASE={kernel}" in log


def test_symlink_modules(scratch: Scratch, kernel: str) -> None:
    scratch.add_source("hello")
    scratch.ok("install", "hello/1.0", "-k", kernel, "--symlink-modules")
    dest = scratch.install_tree / kernel / "updates/dkms/hello.ko"
    assert dest.is_symlink()
    assert os.readlink(dest) == str(scratch.dkms_tree / "hello/1.0" / kernel / ARCH / "module/hello.ko")
    assert scratch.status() == [f"hello/1.0, {kernel}, {ARCH}: installed"]
