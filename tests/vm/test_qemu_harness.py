"""Fast checks of the QEMU harness itself (no VM is booted): initramfs layout and console parsing."""

from __future__ import annotations

import gzip
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import qemu

CONSOLE = """\
\x1bc\x1b[?7l\x1b[2J\x1b[0mSeaBIOS (version 1.16.2-debian-1.16.2-1)
Booting from ROM...
\x1bc\x1b[?7l\x1b[2J@@pydkms-vm kernel 6.1.0-56-cloud-amd64
@@pydkms-vm begin load
insmod: can't insert '/m/a.ko': invalid module format
@@pydkms-vm end load rc=8
@@pydkms-vm begin no-newline
partial line@@pydkms-vm end no-newline rc=0
@@pydkms-vm begin :dmesg
[    0.000000] Linux version 6.1.0-56-cloud-amd64
[    2.563067] @@pydkms-vm step load
[    2.571427] a: disagrees about version of symbol module_layout
[    2.591163] @@pydkms-vm step no-newline
[    2.670962] @@pydkms-vm step :dmesg
@@pydkms-vm end :dmesg rc=0
@@pydkms-vm done uptime 2.71
[    2.7] reboot: Power down
"""


def test_parse_console_splits_output_and_kernel_log_per_step() -> None:
    release, steps, dmesg, uptime = qemu.parse_console(CONSOLE)
    assert (release, uptime) == ("6.1.0-56-cloud-amd64", "2.71")
    assert list(steps) == ["load", "no-newline"]
    assert steps["load"].rc == 8
    assert steps["load"].output == "insmod: can't insert '/m/a.ko': invalid module format\n"
    assert steps["load"].kernel_log == "[    2.571427] a: disagrees about version of symbol module_layout\n"
    assert (steps["no-newline"].rc, steps["no-newline"].output, steps["no-newline"].kernel_log) == (
        0,
        "partial line\n",
        "",
    )
    assert dmesg.startswith("[    0.000000] Linux version")


def test_unfinished_boot_reports_the_console(tmp_path: Path) -> None:
    cut = CONSOLE.split("@@pydkms-vm begin no-newline")[0]
    release, steps, _, uptime = qemu.parse_console(cut)
    result = qemu.BootResult(cut, tmp_path / "console.log", 1.0, True, release, steps, "", uptime)
    assert not result.completed
    assert result.step("load").rc == 8
    with pytest.raises(AssertionError, match=r"(?s)'no-newline' did not finish.*timed out.*SeaBIOS"):
        result.step("no-newline")


def test_step_names_are_checked() -> None:
    with pytest.raises(ValueError, match="bad step name"):
        qemu.GuestStep("two words", "true")
    with pytest.raises(ValueError, match="unique"):
        qemu.init_script([qemu.GuestStep("a", "true"), qemu.GuestStep("a", "false")])


def test_init_script_marks_each_step_on_console_and_in_kernel_log() -> None:
    script = qemu.init_script([qemu.GuestStep("load", "insmod /m/a.ko")])
    assert script.startswith("#!/bin/busybox sh\n")
    assert (
        'echo "@@pydkms-vm step load" > /dev/kmsg\n'
        'echo "@@pydkms-vm begin load"\n'
        "(\ninsmod /m/a.ko\n) </dev/null 2>&1\n"
        'echo "@@pydkms-vm end load rc=$?"\n'
    ) in script
    assert script.endswith("poweroff -f\n")


def test_busybox_detection_tells_static_from_dynamic(tmp_path: Path) -> None:
    assert not qemu._is_static_elf(Path(sys.executable).resolve())  # CPython is dynamically linked
    assert not qemu._is_static_elf(tmp_path / "missing")
    (tmp_path / "script").write_text("#!/bin/sh\n")
    assert not qemu._is_static_elf(tmp_path / "script")
    busybox = qemu.static_busybox()
    if busybox is not None:
        assert qemu._is_static_elf(busybox)


@pytest.mark.skipif(shutil.which("cpio") is None, reason="cpio is not installed")
def test_initramfs_is_a_newc_archive_with_console_and_files(tmp_path: Path) -> None:
    fake_busybox = tmp_path / "busybox"
    fake_busybox.write_bytes(b"\x7fELF fake")
    module = tmp_path / "a.ko"
    module.write_bytes(b"module bytes")
    out = qemu.build_initramfs(
        tmp_path / "initrd.cpio.gz",
        [qemu.GuestStep("load", "insmod /mods/x/a.ko")],
        {"/mods/x/a.ko": module},
        busybox=fake_busybox,
    )
    archive = gzip.decompress(out.read_bytes())
    listing = subprocess.run(
        ["cpio", "-itv", "--quiet"], input=archive, capture_output=True, check=True
    ).stdout.decode()
    names = [line.split()[-1] for line in listing.splitlines()]
    assert set(names) == {
        "bin", "dev", "mods", "mods/x", "proc", "sys", "tmp",
        "dev/console", "dev/null", "bin/busybox", "mods/x/a.ko", "init",
    }  # fmt: skip
    console = next(line for line in listing.splitlines() if line.endswith(" dev/console"))
    assert re.match(r"crw------- .* 5,\s+1 ", console), console
    extract = tmp_path / "x"
    extract.mkdir()
    subprocess.run(
        ["cpio", "-id", "--quiet", "--no-absolute-filenames", "--nonmatching", "dev/*"],
        input=archive,
        cwd=extract,
        check=True,
    )
    assert (extract / "mods/x/a.ko").read_bytes() == b"module bytes"
    assert (extract / "init").stat().st_mode & 0o111
    assert "insmod /mods/x/a.ko" in (extract / "init").read_text()
