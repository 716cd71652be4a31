"""autoinstall, kernel_postinst/preinst/prerm, match, --all-kernels, BUILD_DEPENDS_REBUILD and the
planner's parallel builds, on real modules built against the installed headers."""

from __future__ import annotations

import os
import re
import shutil
from typing import Dict, List, Tuple

import pytest

from tests.conftest import ARCH, MODULES, Scratch

pytestmark = pytest.mark.integration


def add(scratch: Scratch, fixture: str, version: str = "1.0", autoinstall: bool = True) -> None:
    src = scratch.add_source(fixture, version)
    conf = src / "dkms.conf"
    text = conf.read_text()
    text = re.sub(r'PACKAGE_VERSION="[^"]*"', f'PACKAGE_VERSION="{version}"', text)
    if autoinstall and "AUTOINSTALL" not in text:
        text += 'AUTOINSTALL="yes"\n'
    conf.write_text(text)
    for c in src.glob("*.c"):
        c.write_text(c.read_text().replace('MODULE_VERSION("1.0")', f'MODULE_VERSION("{version}")'))
    scratch.ok("add", f"{fixture}/{version}")


def copy_timed(scratch: Scratch, name: str) -> None:
    """The ``timed`` fixture under another name (every 'timed' in its files replaced)."""
    dest = scratch.source_tree / f"{name}-1.0"
    dest.mkdir(parents=True)
    for f in (MODULES / "timed").iterdir():
        (dest / f.name.replace("timed", name)).write_text(f.read_text().replace("timed", name))
    scratch.ok("add", f"{name}/1.0")


def installed(scratch: Scratch, m: str, k: str) -> bool:
    return (scratch.dkms_tree / m / f"kernel-{k}-{ARCH}").is_symlink()


def test_autoinstall_orders_dependencies_skips_excluded_and_isolates_failures(
    scratch: Scratch, kernels: List[str], cloud_kernel: str
) -> None:
    k = cloud_kernel  # `exclusive` needs CONFIG_DRM, which the cloud kernel lacks -> 77
    scratch.prepare_kernel(k)
    marker = scratch.root / "pt.log"
    (scratch.etc / "framework.conf").write_text(f"post_transaction='echo pt $kernelver >> {marker}'\n")
    for m in ("depuser", "depbase", "exclusive", "failing", "hello"):
        add(scratch, m)
    r = scratch.dkms("autoinstall", "-k", k)
    assert r.rc == 11, r
    out = r.out
    # dependents after their dependencies, whatever the byte order of the names
    assert out.index(f"Autoinstall of module depbase/1.0 for kernel {k}") < out.index(
        f"Autoinstall of module depuser/1.0 for kernel {k}"
    )
    assert f"Autoinstall on {k} succeeded for module(s) depbase/1.0 depuser/1.0 hello/1.0." in out
    assert f"Autoinstall on {k} was skipped for module(s) exclusive/1.0." in out
    assert f"Autoinstall on {k} failed for module(s) failing(10)." in out
    log = scratch.dkms_tree / "failing" / "1.0" / "build" / "make.log"
    assert f"build log of failing/1.0: {log}" in out and log.is_file()
    assert "One or more modules failed to install during autoinstall." in r.err
    for m in ("depbase", "depuser", "hello"):
        assert installed(scratch, m, k)
    assert not installed(scratch, "exclusive", k) and not installed(scratch, "failing", k)
    assert out.count("Running depmod") == 1  # once per kernel, at the end
    assert "updates/dkms/depuser.ko" in (scratch.install_tree / k / "modules.dep").read_text()
    assert marker.read_text() == f"pt {k}\n"  # post_transaction once, although a module failed [D-10]

    # a second run: already installed ones are listed apart; only the failing one is tried again
    marker.unlink()
    r = scratch.dkms("autoinstall", "-k", k)
    assert r.rc == 11
    assert "succeeded for" not in r.out
    assert (
        f"Autoinstall on {k}: already installed, nothing to do for module(s) depbase/1.0 depuser/1.0 hello/1.0."
        in r.out
    )
    assert not marker.exists()  # nothing newly installed -> no post_transaction


def test_autoinstall_reports_broken_entries_and_bad_confs_and_continues(
    scratch: Scratch, kernel: str
) -> None:
    add(scratch, "hello")
    add(scratch, "depbase")
    shutil.rmtree(scratch.source_tree / "depbase-1.0")  # dangling source link -> broken
    add(scratch, "multi")
    (scratch.source_tree / "multi-1.0" / "dkms.conf").write_text(
        'PACKAGE_NAME="multi"\nBUILT_MODULE_NAME[0]=""\nBOGUS\n'
    )
    r = scratch.dkms("autoinstall", "-k", kernel)
    assert r.rc == 11, r
    assert "depbase/1.0 is broken" in r.err
    assert re.search(r"Autoinstall on \S+ failed for module\(s\) multi\((4|8)\)\.", r.out), r.out
    assert f"Autoinstall on {kernel} succeeded for module(s) hello/1.0." in r.out
    assert installed(scratch, "hello", kernel)


def test_autoinstall_disabled_nothing_to_do_and_unresolved(scratch: Scratch, kernel: str) -> None:
    (scratch.etc / "no-autoinstall").write_text("")
    add(scratch, "depuser")
    r = scratch.ok("autoinstall", "-k", kernel)
    assert "Automatic installation of modules has been disabled." in r.out
    (scratch.etc / "no-autoinstall").unlink()
    # depuser needs depbase, which is not in the tree: unresolved, reported, exit 11
    r = scratch.dkms("autoinstall", "-k", kernel)
    assert r.rc == 11
    assert "depuser/1.0 autoinstall failed due to missing dependencies: depbase." in r.out
    assert not (scratch.dkms_tree / "depuser" / "1.0" / kernel).exists()
    # without AUTOINSTALL a module is ignored silently: nothing queued -> 0, no output
    scratch.ok("remove", "depuser/1.0", "--all")
    add(scratch, "failing", autoinstall=False)
    r = scratch.ok("autoinstall", "-k", kernel)
    assert r.out == "" and r.err == ""


def test_autoinstall_without_headers_installs_what_is_built(scratch: Scratch, kernels: List[str]) -> None:
    k = kernels[0]
    add(scratch, "hello")
    add(scratch, "depbase")
    scratch.ok("build", "depbase/1.0", "-k", k)
    (scratch.install_tree / k / "build").unlink()  # headers gone
    r = scratch.dkms("autoinstall", "-k", k)
    assert r.rc == 21, r
    assert installed(scratch, "depbase", k)
    assert f"Autoinstall on {k} failed for module(s) hello(21)." in r.out


def test_all_kernels_builds_for_every_kernel_with_headers(scratch: Scratch, kernels: List[str]) -> None:
    k1, k2 = kernels[:2]
    (scratch.install_tree / "9.9.9-noheaders").mkdir()
    add(scratch, "hello")
    r = scratch.ok("install", "hello/1.0", "--all-kernels")
    assert installed(scratch, "hello", k1) and installed(scratch, "hello", k2)
    assert not (scratch.dkms_tree / "hello" / "1.0" / "9.9.9-noheaders").exists()
    assert r.out.count("Installing ") == 2
    # the concurrent builds of one module used private build dirs, gone after success
    assert not list((scratch.dkms_tree / "hello" / "1.0").glob(".build-*"))
    scratch.ok("remove", "hello/1.0", "--all")
    add(scratch, "hello")
    add(scratch, "depbase")
    r = scratch.ok("autoinstall", "--all-kernels")
    for k in (k1, k2):
        assert f"Autoinstall on {k} succeeded for module(s) depbase/1.0 hello/1.0." in r.out


def test_parallel_builds_overlap_share_the_budget_and_do_not_interleave(
    scratch: Scratch, kernels: List[str]
) -> None:
    names = ["alpha", "bravo", "charlie", "delta"]
    for n in names:
        copy_timed(scratch, n)
    budget = 3
    r = scratch.ok("autoinstall", "--all-kernels", "-j", str(budget))
    intervals: List[Tuple[float, float, int]] = []
    for n in names:
        for k in kernels[:2]:
            log = (scratch.dkms_tree / n / "1.0" / k / ARCH / "log" / "make.log").read_text()
            jobs = int(re.search(r"# command: make -j(\d+) ", log).group(1))  # type: ignore[union-attr]
            start = float(re.search(r"TIMESTAMP start (\S+)", log).group(1))  # type: ignore[union-attr]
            end = float(re.search(r"TIMESTAMP end (\S+)", log).group(1))  # type: ignore[union-attr]
            intervals.append((start, end, jobs))
    # builds overlap (from the logs' timestamps), and the make jobs in flight never exceed the budget
    overlaps = 0
    for start, _end, _jobs in intervals:
        in_flight = [j for s, e, j in intervals if s <= start < e]
        assert sum(in_flight) <= budget, intervals
        overlaps += len(in_flight) > 1
    assert overlaps > 0, intervals
    # each job's lines are printed together, in plan order
    blocks = re.split(r"(?m)^(?=Autoinstall of module )", r.out)
    jobs_out = [b for b in blocks if b.startswith("Autoinstall of module ")]
    assert len(jobs_out) == 8
    for block in jobs_out:
        m = re.match(r"Autoinstall of module (\w+)/1.0 for kernel (\S+) ", block)
        assert m, block
        name, k = m.groups()
        assert f"Installing {scratch.install_tree}/{k}/updates/dkms/{name}.ko\n" in block
        assert all(f"/{other}.ko" not in block for other in names if other != name)


def test_kernel_prerm_removes_every_build_and_runs_depmod_once(scratch: Scratch, kernels: List[str]) -> None:
    k, other = kernels[:2]
    add(scratch, "hello")
    add(scratch, "depbase")
    add(scratch, "failing", autoinstall=False)
    scratch.ok("install", "hello/1.0", "-k", k, "-k", other)
    scratch.ok("install", "depbase/1.0", "-k", k)
    # depbase's conf becomes unusable: the fallback removes it from its built files [D-17]
    (scratch.source_tree / "depbase-1.0" / "dkms.conf").write_text("BUILT_MODULE_NAME[0]=x\n")
    (scratch.dkms_tree / f"depmod-pending-{k}-{ARCH}").touch()  # left by an interrupted run [D-09]
    r = scratch.ok("kernel_prerm", "-k", k)
    assert f"dkms: removing module hello/1.0 for kernel {k} ({ARCH})" in r.err
    assert "removing it using its built files" in r.err
    assert r.out.count("Running depmod") == 1
    assert not (scratch.dkms_tree / f"depmod-pending-{k}-{ARCH}").exists()
    assert not (scratch.install_tree / k / "updates").exists()  # empty dirs pruned
    # depmod ran: the kernel holds no module any more, so its modules.* files went (tree.md §11)
    assert not (scratch.install_tree / k / "modules.dep").exists()
    assert (scratch.install_tree / other / "modules.dep").is_file()
    assert scratch.status("-k", k) == ["depbase/1.0: added", "failing/1.0: added", "hello/1.0: added"]
    assert installed(scratch, "hello", other)  # other kernels untouched
    assert scratch.dkms("kernel_prerm").rc == 4  # -k is required


def test_kernel_preinst_only_touches_autoinstall_modules(scratch: Scratch, kernel: str) -> None:
    add(scratch, "hello")
    add(scratch, "depbase", autoinstall=False)
    conf = scratch.source_tree / "depbase-1.0" / "dkms.conf"
    conf.write_text(conf.read_text().replace('AUTOINSTALL="yes"', ""))
    scratch.ok("install", "hello/1.0", "-k", kernel)
    scratch.ok("install", "depbase/1.0", "-k", kernel)
    scratch.ok("kernel_preinst", "-k", kernel)
    assert not (scratch.dkms_tree / "hello" / "1.0" / kernel).exists()
    assert installed(scratch, "depbase", kernel)
    # kernel_postinst puts the autoinstall ones back
    r = scratch.ok("kernel_postinst", "-k", kernel)
    assert "succeeded for module(s) hello/1.0." in r.out
    # the installed check comes before AUTOINSTALL is looked at (spec §1.3)
    assert "already installed, nothing to do for module(s) depbase/1.0." in r.out
    assert installed(scratch, "hello", kernel)


def test_match_installs_what_the_template_kernel_has(scratch: Scratch, kernels: List[str]) -> None:
    template, k = kernels[:2]
    add(scratch, "hello")
    add(scratch, "depbase")
    scratch.ok("install", "hello/1.0", "-k", template)
    scratch.ok("install", "depbase/1.0", "-k", template)
    assert scratch.dkms("match", "-k", k).rc == 1
    assert scratch.dkms("match", f"--templatekernel={k}", "-k", k).rc == 2
    assert scratch.dkms("match", f"--templatekernel={template}", "-k", k, "nosuch").rc == 3
    r = scratch.ok("match", f"--templatekernel={template}", "-k", k, "hello")
    assert installed(scratch, "hello", k) and not installed(scratch, "depbase", k)
    r = scratch.ok("match", f"--templatekernel={template}", "-k", k)
    assert installed(scratch, "depbase", k)
    assert "already built" in r.out


def test_build_depends_rebuild_follows_dependency_versions(scratch: Scratch, kernel: str) -> None:
    add(scratch, "depbase")
    add(scratch, "depuser")
    conf = scratch.source_tree / "depuser-1.0" / "dkms.conf"
    conf.write_text(conf.read_text() + 'BUILD_DEPENDS_REBUILD="yes"\n')
    scratch.ok("install", "depbase/1.0", "-k", kernel)
    scratch.ok("install", "depuser/1.0", "-k", kernel)
    target = scratch.dkms_tree / "depuser" / "1.0" / kernel / ARCH
    assert (target / ".dep_depbase").read_text() == "1.0\n"
    before = (target / "module" / "depuser.ko").stat().st_mtime_ns
    # a newer depbase is installed: depuser is rebuilt against it and installed again
    add(scratch, "depbase", "2.0")
    r = scratch.ok("install", "depbase/2.0", "-k", kernel)
    assert f"Rebuilding module depuser/1.0 for {kernel} ({ARCH}) because a dependency changed" in r.out
    assert (target / ".dep_depbase").read_text() == "2.0\n"
    assert (target / "module" / "depuser.ko").stat().st_mtime_ns != before
    assert installed(scratch, "depuser", kernel)
    # going down counts too; a failing dependent rebuild never changes the install's status [D-23]
    (scratch.source_tree / "depuser-1.0" / "depuser.c").write_text("this does not compile\n")
    r = scratch.dkms("install", "depbase/1.0", "-k", kernel, "--force")
    assert r.rc == 0, r
    assert "Rebuilding" not in r.out  # --force disables the check
    scratch.ok("remove", "depbase/2.0", "--all")  # the highest known version is 1.0 again
    scratch.ok("uninstall", "depbase/1.0", "-k", kernel)
    r = scratch.dkms("install", "depbase/1.0", "-k", kernel)
    assert r.rc == 0, r
    assert "Rebuilding module depuser/1.0" in r.out
    assert f"Rebuilding depuser/1.0 for {kernel} ({ARCH}) failed" in r.err


def test_install_for_several_kernels_in_parallel_aggregates(scratch: Scratch, kernels: List[str]) -> None:
    k1, k2 = kernels[:2]
    add(scratch, "hello")
    r = scratch.ok("install", "hello/1.0", "-k", k1, "-k", k2)
    outputs: Dict[str, int] = {
        k: r.out.index(f"{scratch.install_tree}/{k}/updates/dkms/hello.ko") for k in (k1, k2)
    }
    assert outputs[k1] < outputs[k2]  # printed in the order of the command line
    add(scratch, "failing", autoinstall=False)
    r = scratch.dkms("build", "failing/1.0", "-k", k1, "-k", k2)
    assert r.rc == 10
    assert f"failed for {k1} ({ARCH}): exit 10; {k2} ({ARCH}): exit 10" in r.err
    # concurrent failed builds keep their own logs for inspection
    for k in (k1, k2):
        log = scratch.dkms_tree / "failing" / "1.0" / f".build-{k}-{ARCH}" / "make.log"
        assert log.is_file() and str(log) in r.err
    assert os.path.isdir(scratch.dkms_tree / "failing" / "1.0" / "build")


def test_one_kernel_actions_refuse_several(scratch: Scratch, kernels: List[str]) -> None:
    for action in (["autoinstall"], ["match", "--templatekernel=x"]):
        r = scratch.dkms(*action, "-k", kernels[0], "-k", kernels[1])
        assert r.rc == 4 and "one kernel at a time" in r.err, r


def test_progress_line_on_a_terminal(scratch: Scratch, kernels: List[str]) -> None:
    """With stdout on a terminal, a live line counts jobs; with a pipe (above tests) it never shows."""
    import pty
    import subprocess

    add(scratch, "hello")
    add(scratch, "depbase")
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        scratch.dkms_argv("autoinstall", "--all-kernels", "-j", "2"),
        env=scratch.env(),
        stdout=slave,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
    )
    os.close(slave)
    chunks = []
    while True:
        try:
            data = os.read(master, 4096)
        except OSError:  # EIO: the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    proc.wait(timeout=600)
    os.close(master)
    out = b"".join(chunks).decode(errors="replace")
    assert proc.returncode == 0, out
    assert re.search(r"\r\x1b\[K\[\d/4 done, \d running, 0 failed\]", out), out
    assert "\r\x1b[K[" not in scratch.ok("status").out
