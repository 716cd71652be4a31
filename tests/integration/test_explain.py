"""``dkms explain``'s diagnosis on real failures.

Every test builds a fixture module (tests/fixtures/modules/explain_*) with the real ``dkms
build`` of this worktree against the real kernel headers, on a scratch tree, and diagnoses what
the failed or refused build left behind: nothing here is a hand-written make.log.
"""

from __future__ import annotations

import os
import re
import resource
import shutil
import subprocess
import time
from pathlib import Path
from typing import Iterator, List

import pytest

from pydkms.explain import Diagnosis, render_text
from tests.conftest import ARCH, MODULES, Result, Scratch
from tests.support.explain import (
    build_and_diagnose,
    copy_headers,
    diagnose_build,
    path_without,
    set_config,
    use_headers,
)

pytestmark = pytest.mark.integration


def source_line(module: str, needle: str) -> int:
    """The line number of ``needle`` in the fixture's C source."""
    for n, line in enumerate((MODULES / module / f"{module}.c").read_text().splitlines(), 1):
        if needle in line:
            return n
    raise AssertionError(f"{needle!r} is not in {module}.c")


def log_line(diag: Diagnosis, number: int) -> str:
    """Line ``number`` of the make.log, with gcc's typographic quotes made plain as in evidence."""
    assert diag.make_log is not None
    line = diag.make_log.read_text(errors="replace").splitlines()[number - 1]
    return line.translate(str.maketrans("\u2018\u2019", "''"))


def last_make_line(diag: Diagnosis) -> str:
    """The last line make printed (what a naive reader would quote)."""
    assert diag.make_log is not None
    lines = [x for x in diag.make_log.read_text(errors="replace").splitlines() if x.startswith("make")]
    return lines[-1]


def kernel_config(kernel: str, name: str) -> str:
    for line in Path(f"/lib/modules/{kernel}/build/.config").read_text().splitlines():
        if line.startswith(f"{name}="):
            return line.split("=", 1)[1].strip('"')
    raise AssertionError(f"{kernel} has no {name}")


def assert_renders(diag: Diagnosis) -> None:
    """The text forms: the full one names the cause, the short one has 2 to 4 lines."""
    full = render_text(diag)
    assert diag.cause in full.splitlines()[0] and diag.summary in full
    short = render_text(diag, short=True).splitlines()
    assert 2 <= len(short) <= 4 and diag.cause in short[0]


# --------------------------------------------------------------------------------------------
# the module's code does not fit the kernel


def test_kernel_api_change(scratch: Scratch, kernel: str) -> None:
    scratch.add_source("explain_apichange")
    result, diag = build_and_diagnose(scratch, "explain_apichange", kernel)
    assert result.rc == 10
    assert diag.cause == "kernel-api-change", diag
    first = diag.evidence[0]
    # the first real compiler error, with its file:line, not make's last line
    assert first.file.endswith("explain_apichange.c")
    assert first.line == source_line("explain_apichange", "bio_alloc(GFP_KERNEL, 1)")
    assert "too few arguments to function 'bio_alloc'" in first.text
    assert log_line(diag, first.make_log_line).rstrip() == first.text
    assert first.text != last_make_line(diag)
    # the kernel header that declares it is cited too
    assert any(e.file.endswith("include/linux/bio.h") for e in diag.evidence[1:])
    release = Path(f"/lib/modules/{kernel}/build/include/config/kernel.release").read_text().strip()
    assert diag.details["kernel_version"] == release
    assert diag.details["function"] == "bio_alloc"
    assert "too old" in diag.summary and release in diag.summary and kernel in diag.summary
    assert diag.step == "make" and diag.exit_code == 10
    assert_renders(diag)


def test_kernel_config_symbol_from_a_declaration(scratch: Scratch, cloud_kernel: str, kernel: str) -> None:
    """i2c_transfer() is declared only under CONFIG_I2C, which the cloud kernel lacks."""
    scratch.prepare_kernel(cloud_kernel)
    scratch.add_source("explain_needsconfig")
    scratch.ok("build", "explain_needsconfig/1.0", "-k", kernel)  # the module is fine elsewhere
    result, diag = build_and_diagnose(scratch, "explain_needsconfig", cloud_kernel)
    assert result.rc == 10
    assert diag.cause == "kernel-config-missing", diag
    assert diag.details["symbol"] == "CONFIG_I2C" and diag.details["name"] == "i2c_transfer"
    assert "implicit declaration of function 'i2c_transfer'" in diag.evidence[0].text
    assert diag.evidence[0].line == source_line("explain_needsconfig", "return i2c_transfer(")
    assert any(e.file.endswith("include/linux/i2c.h") for e in diag.evidence[1:])
    assert "CONFIG_I2C" in diag.summary and cloud_kernel in diag.summary
    # Debian's generic flavour of the same ABI has the option
    generic = cloud_kernel.replace("-cloud-", "-")
    assert diag.next_command == f"apt-get install linux-image-{generic} linux-headers-{generic}"
    assert_renders(diag)


def test_kernel_config_symbol_from_modpost(scratch: Scratch, cloud_kernel: str, kernel: str) -> None:
    """usb_register_driver() is declared everywhere but only exported with CONFIG_USB."""
    scratch.prepare_kernel(cloud_kernel)
    scratch.add_source("explain_needsymbol")
    scratch.ok("build", "explain_needsymbol/1.0", "-k", kernel)
    result, diag = build_and_diagnose(scratch, "explain_needsymbol", cloud_kernel)
    assert result.rc == 10
    assert diag.cause == "kernel-config-missing", diag
    assert diag.details["symbol"] == "CONFIG_USB"
    assert diag.details["name"] == "usb_register_driver"
    assert diag.details["provider"] == "drivers/usb/core/usbcore"
    assert diag.evidence[0].text.startswith('ERROR: modpost: "usb_register_driver"')
    # without other kernels to compare with, the cause stays, only the option is not named
    alone = diagnose_build(scratch, "explain_needsymbol", cloud_kernel, result, references=False)
    assert alone.cause == "kernel-config-missing" and alone.details["name"] == "usb_register_driver"
    assert_renders(diag)


# --------------------------------------------------------------------------------------------
# userspace build dependencies


def test_missing_userspace_header(scratch: Scratch, kernel: str) -> None:
    scratch.add_source("explain_userspace")
    result, diag = build_and_diagnose(scratch, "explain_userspace", kernel)
    assert result.rc == 10
    assert diag.cause == "userspace-dependency-missing", diag
    assert diag.details["header"] == "libexplainfixture.h"
    assert diag.evidence[0].file == "gentable.c" and diag.evidence[0].line == 3
    assert diag.next_command == "apt-file search /libexplainfixture.h"
    assert_renders(diag)


def test_failing_configure_script(scratch: Scratch, kernel: str) -> None:
    scratch.add_source("explain_configure")
    result, diag = build_and_diagnose(scratch, "explain_configure", kernel)
    assert result.rc == 1  # the PRE_BUILD script's status
    assert diag.cause == "userspace-dependency-missing", diag
    assert diag.step == "pre_build"
    assert diag.evidence[0].text.startswith("configure: error: libexplainfixture development files")
    assert diag.details["name"] == "libexplainfixture.h"
    assert "configure script" in diag.summary
    assert_renders(diag)


# --------------------------------------------------------------------------------------------
# patches, headers, compilers


def test_patch_that_does_not_apply(scratch: Scratch, kernel: str) -> None:
    scratch.add_source("explain_patchfail")
    result, diag = build_and_diagnose(scratch, "explain_patchfail", kernel)
    assert result.rc == 6
    assert diag.cause == "patch-failed", diag
    assert diag.step == "patch" and diag.details["patch"] == "0001-use-new-timer-api.patch"
    assert re.match(r"Hunk #1 FAILED at \d+\.", diag.evidence[0].text)
    # the suggested dry run reproduces the failure without changing the build directory
    proc = subprocess.run(diag.next_command, shell=True, capture_output=True, text=True)
    assert proc.returncode == 1 and "Hunk #1 FAILED" in proc.stdout, proc
    assert_renders(diag)


def test_patch_listed_but_missing(scratch: Scratch, kernel: str) -> None:
    source = scratch.add_source("patched")
    conf = source / "dkms.conf"
    conf.write_text(conf.read_text() + 'PATCH[3]="missing.patch"\n')
    patches = tuple(re.findall(r'^PATCH\[\d+\]="([^"]+)"', conf.read_text(), re.M))
    result = scratch.dkms("build", "patched/1.0", "-k", kernel)
    assert result.rc == 5, result
    diag = diagnose_build(scratch, "patched", kernel, result, step="patch", patches=patches)
    assert diag.cause == "patch-failed", diag
    assert diag.details["patch"] == "missing.patch"
    assert diag.details["where"] == str(scratch.dkms_tree / "patched/1.0/build/patches")
    assert_renders(diag)


def test_headers_not_installed(scratch: Scratch, kernel: str) -> None:
    """$install_tree/K exists but has no build directory: dkms refuses (21) before any make.log."""
    bare = Scratch(scratch.root.parent / "bare")
    for d in (bare.dkms_tree, bare.source_tree, bare.install_tree, bare.etc):
        d.mkdir(parents=True)
    (bare.install_tree / kernel).mkdir()
    bare.add_source("hello")
    result, diag = build_and_diagnose(bare, "hello", kernel)
    assert result.rc == 21
    assert diag.cause == "headers-missing", diag
    assert "does not exist" in diag.details["problem"]
    assert diag.next_command == f"apt-get install linux-headers-{kernel}"
    assert_renders(diag)


def test_headers_without_makefile(scratch: Scratch, kernel: str, tmp_path: Path) -> None:
    broken = tmp_path / "headers"
    (broken / "include").mkdir(parents=True)
    use_headers(scratch, kernel, broken)
    scratch.add_source("hello")
    result, diag = build_and_diagnose(scratch, "hello", kernel)
    assert result.rc == 10
    assert diag.cause == "headers-missing", diag
    assert diag.details["problem"].endswith("has no Makefile")
    assert "no makefile found" in diag.evidence[0].text
    assert diag.next_command == f"apt-get install linux-headers-{kernel}"


def test_headers_without_autoconf(scratch: Scratch, kernel: str, tmp_path: Path) -> None:
    headers = copy_headers(kernel, tmp_path / "headers")
    (headers / "include" / "generated" / "autoconf.h").unlink()
    use_headers(scratch, kernel, headers)
    scratch.add_source("hello")
    result, diag = build_and_diagnose(scratch, "hello", kernel)
    assert result.rc == 10
    assert diag.cause == "headers-missing", diag
    assert "include/generated/autoconf.h" in diag.details["problem"]
    assert "Kernel configuration is invalid" in diag.evidence[0].text


@pytest.mark.parametrize("how", ["no gcc in PATH", "headers made by gcc-99"])
def test_compiler_missing(scratch: Scratch, kernel: str, tmp_path: Path, how: str) -> None:
    """The kernel's compiler is not installed: hidden from PATH (the host keeps its own), or
    a copy of the headers that says the kernel was built by a gcc-99 nobody has."""
    env = {}
    if how == "no gcc in PATH":
        compiler = kernel_config(kernel, "CONFIG_CC_VERSION_TEXT").split()[0]
        env["PATH"] = path_without(("gcc", "x86_64-linux-gnu-gcc", "cc", "c89", "c99"), tmp_path / "bin")
    else:
        compiler = "gcc-99"
        headers = copy_headers(kernel, tmp_path / "headers")
        variables = headers / ".kernelvariables"
        variables.write_text(re.sub(r"\bgcc-\d+\b", compiler, variables.read_text()))
        for name in (".config", "include/config/auto.conf"):
            set_config(headers / name, {"CONFIG_CC_VERSION_TEXT": "gcc-99 (Debian 99.1.0-1) 99.1.0"})
        use_headers(scratch, kernel, headers)
    scratch.add_source("hello")
    result, diag = build_and_diagnose(scratch, "hello", kernel, env=env)
    assert result.rc == 10
    assert diag.cause == "compiler-missing", diag
    assert diag.details["compiler"] == compiler
    assert diag.evidence[0].text.endswith(f"{compiler}: not found")
    assert diag.next_command == f"apt-get install {compiler}"
    assert_renders(diag)


def test_compiler_mismatch(scratch: Scratch, kernel: str, tmp_path: Path) -> None:
    """Headers of a kernel built by clang, and only gcc installed: gcc rejects clang's options."""
    if shutil.which("clang") or shutil.which("clang-14"):
        pytest.skip("clang is installed: dkms would use it")
    headers = copy_headers(kernel, tmp_path / "headers")
    clang = {
        "CONFIG_CC_VERSION_TEXT": "Debian clang version 14.0.6",
        "CONFIG_CC_IS_CLANG": "y",
        "CONFIG_CLANG_VERSION": "140006",
        "CONFIG_CC_IS_GCC": None,
        "CONFIG_GCC_VERSION": None,
    }
    for name in (".config", "include/config/auto.conf"):
        set_config(headers / name, clang)
    use_headers(scratch, kernel, headers)
    scratch.add_source("hello")
    result, diag = build_and_diagnose(scratch, "hello", kernel)
    assert result.rc == 10
    assert diag.cause == "compiler-mismatch", diag
    assert diag.details["built_by"] == "Debian clang version 14.0.6"
    assert diag.details["compiler"] == "clang-14"
    assert "unrecognized command-line option" in diag.evidence[0].text
    assert diag.next_command == "apt-get install clang-14"
    assert_renders(diag)


# --------------------------------------------------------------------------------------------
# resources


@pytest.fixture
def tiny_dkms_tree(scratch: Scratch) -> Iterator[Scratch]:
    """The scratch dkms tree on a 2 MiB tmpfs (unmounted afterwards)."""
    proc = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(scratch.dkms_tree)],
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        pytest.fail(f"cannot mount a tmpfs (the suite runs as root): {proc.stderr.strip()}")
    try:
        yield scratch
    finally:
        subprocess.run(["umount", "-l", str(scratch.dkms_tree)], check=False)


def test_out_of_disk(tiny_dkms_tree: Scratch, kernel: str) -> None:
    s = tiny_dkms_tree
    s.add_source("explain_bigobject")
    result = s.dkms("build", "explain_bigobject/1.0", "-k", kernel)
    assert result.rc == 10, result
    st = os.statvfs(s.dkms_tree)
    diag = diagnose_build(s, "explain_bigobject", kernel, result, free_disk_bytes=st.f_bavail * st.f_frsize)
    assert diag.cause == "out-of-disk", diag
    assert "No space left on device" in diag.evidence[0].text
    assert diag.details["where"].startswith(str(s.dkms_tree))
    assert diag.next_command.startswith("df -h ")
    assert_renders(diag)


def test_out_of_memory_address_space_limit(scratch: Scratch, kernel: str) -> None:
    """cc1 under a 150 MB address-space limit (set on dkms, inherited by the compiler)."""
    scratch.add_source("explain_hungry")
    limit = 150 << 20

    def limited() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    argv = scratch.dkms_argv("build", "explain_hungry/1.0", "-k", kernel)
    proc = subprocess.run(
        argv,
        env=scratch.env(),
        cwd=scratch.root,
        capture_output=True,
        text=True,
        preexec_fn=limited,
        timeout=600,
    )
    result = Result(argv, proc.returncode, proc.stdout, proc.stderr)
    assert result.rc == 10, result
    diag = diagnose_build(scratch, "explain_hungry", kernel, result)
    assert diag.cause == "out-of-memory", diag
    assert "virtual memory exhausted" in diag.evidence[0].text
    assert diag.next_command == f"dkms build explain_hungry/1.0 -k {kernel} -j 1"


def _memory_cgroup(tmp_name: str, limit: int) -> Path:
    """A memory cgroup limited to ``limit`` bytes (v2 or v1), or skip when there is none."""
    v2 = Path("/sys/fs/cgroup")
    if (v2 / "cgroup.subtree_control").exists() and "memory" in (v2 / "cgroup.subtree_control").read_text():
        group = v2 / tmp_name
        group.mkdir()
        (group / "memory.max").write_text(str(limit))
        optional = {"memory.swap.max": "0"}
    elif (Path("/sys/fs/cgroup/memory") / "memory.limit_in_bytes").exists():
        group = Path("/sys/fs/cgroup/memory") / tmp_name
        group.mkdir()
        (group / "memory.limit_in_bytes").write_text(str(limit))
        optional = {"memory.swappiness": "0", "memory.memsw.limit_in_bytes": str(limit)}
    else:
        pytest.skip("no memory cgroup controller on this machine")
    for name, value in optional.items():  # no swapping instead of the OOM kill, where the kernel allows it
        try:
            (group / name).write_text(value)
        except OSError:
            pass
    return group


def _cgroup_drained(group: Path, within: float = 10.0) -> List[str]:
    """The processes still in ``group`` once it had ``within`` seconds to empty: dkms' watchdog
    outlives dkms by the moment it takes to see that dkms and its children are gone."""
    deadline = time.monotonic() + within
    while True:
        procs = (group / "cgroup.procs").read_text().split() if group.exists() else []
        if not procs or time.monotonic() > deadline:
            return procs
        time.sleep(0.05)


def test_out_of_memory_killed(scratch: Scratch, kernel: str) -> None:
    """The OOM killer ends cc1 in a 120 MB memory cgroup: 'Killed signal terminated program cc1'."""
    scratch.add_source("explain_hungry")
    group = _memory_cgroup(f"pydkms-explain-{os.getpid()}", 120 << 20)
    try:
        argv = scratch.dkms_argv("build", "explain_hungry/1.0", "-k", kernel)
        script = f'echo $$ > {group}/cgroup.procs && exec "$@"'
        proc = subprocess.run(
            ["sh", "-c", script, "sh", *argv],
            env=scratch.env(),
            cwd=scratch.root,
            capture_output=True,
            text=True,
        )
    finally:
        procs = _cgroup_drained(group)
        assert not procs, procs
        group.rmdir()
    result = Result(argv, proc.returncode, proc.stdout, proc.stderr)
    assert result.rc == 10, result
    diag = diagnose_build(scratch, "explain_hungry", kernel, result)
    assert diag.cause == "out-of-memory", diag
    assert "Killed signal terminated program cc1" in diag.evidence[0].text


# --------------------------------------------------------------------------------------------
# refusals: nothing was built, and there is no make.log


def test_build_exclusive(scratch: Scratch, cloud_kernel: str) -> None:
    scratch.prepare_kernel(cloud_kernel)
    source = scratch.add_source("exclusive")
    result = scratch.dkms("build", "exclusive/1.0", "-k", cloud_kernel)
    assert result.rc == 77, result
    value = re.search(r'BUILD_EXCLUSIVE_CONFIG="([^"]*)"', (source / "dkms.conf").read_text())
    assert value is not None
    diag = diagnose_build(
        scratch,
        "exclusive",
        cloud_kernel,
        result,
        step="build_exclusive",
        build_exclusive={"BUILD_EXCLUSIVE_CONFIG": value.group(1)},
    )
    assert diag.cause == "build-exclusive", diag
    assert diag.details["directive"] == "BUILD_EXCLUSIVE_CONFIG"
    assert diag.details["value"] == "CONFIG_DRM"
    assert "the kernel config lacks CONFIG_DRM" in diag.summary
    assert diag.next_command == ""  # nothing failed
    assert_renders(diag)


def test_build_depends_missing(scratch: Scratch, kernel: str) -> None:
    scratch.add_source("depbase")
    scratch.add_source("depuser")
    scratch.ok("add", "depbase/1.0")
    result = scratch.dkms("build", "depuser/1.0", "-k", kernel)
    assert result.rc == 13, result
    diag = diagnose_build(
        scratch, "depuser", kernel, result, step="build_depends", missing_depends={"depbase": "1.0"}
    )
    assert diag.cause == "build-depends-missing", diag
    assert diag.details["depends"] == "depbase"
    assert diag.next_command == f"dkms install depbase/1.0 -k {kernel}"
    # the next command is the right one: after it, the build succeeds
    scratch.ok(*diag.next_command.split()[1:])
    scratch.ok("build", "depuser/1.0", "-k", kernel)
    assert_renders(diag)


# --------------------------------------------------------------------------------------------
# no usable make.log, and failures that fit no cause


def test_no_log(scratch: Scratch, kernel: str, kernels: List[str]) -> None:
    scratch.add_source("failing")
    result = scratch.dkms("build", "failing/1.0", "-k", kernel)
    assert result.rc == 10, result
    log = scratch.dkms_tree / "failing/1.0/build/make.log"
    text = log.read_text()
    # a log of another kernel's build is not evidence for this one
    other = kernels[1]
    stale = diagnose_build(scratch, "failing", other, result)
    assert stale.cause == "no-log" and f"for kernel {kernel}, not {other}" in stale.summary, stale
    # missing, then unreadable (a directory in its place): a clear line, no crash
    log.unlink()
    missing = diagnose_build(scratch, "failing", kernel, result)
    assert missing.cause == "no-log" and "does not exist" in missing.summary, missing
    assert missing.next_command == f"dkms build failing/1.0 -k {kernel} -a {ARCH}"
    log.mkdir()
    unreadable = diagnose_build(scratch, "failing", kernel, result)
    assert unreadable.cause == "no-log" and "is a directory" in unreadable.summary, unreadable
    log.rmdir()
    log.symlink_to(log.name)  # a link to itself: open() fails with ELOOP, even for root
    looping = diagnose_build(scratch, "failing", kernel, result)
    assert looping.cause == "no-log" and "cannot be read" in looping.summary, looping
    log.unlink()
    log.write_text(text)
    assert diagnose_build(scratch, "failing", kernel, result).cause == "unknown"
    assert_renders(missing)


def test_unknown_names_the_first_error(scratch: Scratch, kernel: str) -> None:
    """A plain bug in the module fits no cause: 'unknown' with the first error line."""
    scratch.add_source("failing")
    result, diag = build_and_diagnose(scratch, "failing", kernel)
    assert result.rc == 10
    assert diag.cause == "unknown", diag
    first = diag.evidence[0]
    assert "'pydkms_fixture_undeclared_identifier' undeclared" in first.text
    assert first.line == source_line("failing", "pydkms_fixture_undeclared_identifier;")
    assert diag.next_command == f"less +{first.make_log_line} {diag.make_log}"
    assert_renders(diag)
