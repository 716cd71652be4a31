"""Boot a real Debian kernel under QEMU and run a few shell steps in it (test-env.md §6).

* :func:`kernel_image` fetches ``boot/vmlinuz-K`` once from Debian's ``linux-image-K-unsigned``
  package (``apt-get download``; only the kernel file is unpacked, nothing is installed) into
  ``<test cache>/kernels/K/``.
* :func:`build_initramfs` writes a gzip'd newc cpio: a statically linked busybox, the given host
  files, ``/dev/console`` (without it /init's output is lost) and an ``/init`` that runs each
  :class:`GuestStep` and powers the guest off. The archive is written in Python, so neither
  ``cpio`` nor ``mknod`` (root) is needed.
* :func:`boot` runs ``qemu-system-x86_64 -accel tcg -m 512 -nographic -no-reboot`` (TCG: nested
  KVM does not work on the CI machines), stops it after ``timeout`` seconds, keeps the serial
  console in a file and parses it into a :class:`BootResult`: per step its exit status, its
  output and the kernel messages logged while it ran.
* :func:`unavailable` says what is missing on this host (qemu, a static busybox).

qemu's wall time, start to power-off, measured on a 2-core Debian 12 machine: about 3 s with the
cloud kernel (LZ4 image) and 6.5 s with the generic one (XZ image, about 3 s of decompression).
"""

from __future__ import annotations

import gzip
import io
import os
import re
import shutil
import signal
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from .upstream import _locked, default_cache_dir

QEMU = "qemu-system-x86_64"
#: Kernel command line: serial console, reboot (= exit, with -no-reboot) at once on panic.
APPEND = ("console=ttyS0", "panic=-1", "quiet")
#: Prefix of the lines /init prints around each step; nothing else in a console looks like it.
MARK = "@@pydkms-vm"
#: Reserved step name under which /init dumps the whole kernel log at the end.
_DMESG = ":dmesg"
_STEP_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


class VmUnavailable(Exception):
    """The guest cannot be booted here (a tool is missing, or the kernel image cannot be fetched)."""


# --------------------------------------------------------------------------------------------
# Host prerequisites


def _is_static_elf(path: Path) -> bool:
    """True for a 64-bit little-endian ELF executable without a PT_INTERP (dynamic loader) header."""
    try:
        with open(path, "rb") as fh:
            header = fh.read(64)
            if len(header) < 64 or header[:4] != b"\x7fELF" or header[4] != 2 or header[5] != 1:
                return False
            phoff = int.from_bytes(header[32:40], "little")
            phentsize = int.from_bytes(header[54:56], "little")
            phnum = int.from_bytes(header[56:58], "little")
            fh.seek(phoff)
            table = fh.read(phentsize * phnum)
    except OSError:
        return False
    pt_interp = 3
    return all(
        int.from_bytes(table[i : i + 4], "little") != pt_interp for i in range(0, len(table), phentsize)
    )


def static_busybox() -> Optional[Path]:
    """A statically linked busybox (Debian: ``busybox-static``), or None."""
    candidates = [shutil.which("busybox"), "/bin/busybox", "/usr/bin/busybox"]
    for candidate in candidates:
        if candidate and _is_static_elf(Path(candidate)):
            return Path(candidate)
    return None


def unavailable() -> Optional[str]:
    """Why no guest can be booted on this host (naming what to install), or None."""
    missing = []
    if shutil.which(QEMU) is None:
        missing.append(f"{QEMU} (apt-get install --no-install-recommends qemu-system-x86)")
    if static_busybox() is None:
        missing.append("a statically linked busybox (apt-get install busybox-static)")
    return "missing " + " and ".join(missing) if missing else None


# --------------------------------------------------------------------------------------------
# The kernel image


def kernel_image(kver: str, cache_dir: Optional[Path] = None) -> Path:
    """``vmlinuz-<kver>`` from Debian's image package, fetched once into ``<cache>/kernels/<kver>/``.

    ``linux-image-<kver>-unsigned`` is tried first, then the (EFI-signed) ``linux-image-<kver>``;
    both hold the same bootable bzImage. The package is downloaded with ``apt-get download``
    into a temporary directory and only ``./boot/vmlinuz-*`` and ``./boot/config-*`` are taken
    from it: the package is never installed (its postinst would run depmod and kernel hooks).
    Safe to call concurrently (file lock). Raises :class:`VmUnavailable` when it cannot be fetched.
    """
    base = (cache_dir or default_cache_dir()) / "kernels"
    dest = base / kver
    image = dest / f"vmlinuz-{kver}"
    with _locked(base / ".lock"):
        if image.is_file():
            return image
        for tool in ("apt-get", "dpkg-deb"):
            if shutil.which(tool) is None:
                raise VmUnavailable(f"{tool} is needed to fetch the kernel image of {kver}")
        staging = Path(tempfile.mkdtemp(prefix=".fetch-", dir=base))
        try:
            deb = _download_image_deb(kver, staging)
            unpacked = staging / "boot"
            unpacked.mkdir()
            _extract_boot_files(deb, kver, unpacked)
            if not (unpacked / image.name).is_file():
                raise VmUnavailable(f"{deb.name} holds no boot/{image.name}")
            if dest.exists():
                shutil.rmtree(dest)
            unpacked.rename(dest)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return image


def _download_image_deb(kver: str, directory: Path) -> Path:
    errors = []
    for package in (f"linux-image-{kver}-unsigned", f"linux-image-{kver}"):
        proc = subprocess.run(
            ["apt-get", "download", "-o", "APT::Sandbox::User=root", package],
            cwd=directory,
            capture_output=True,
            text=True,
            check=False,
        )
        found = sorted(directory.glob(f"{package}_*.deb"))
        if proc.returncode == 0 and found:
            return found[-1]
        errors.append(f"apt-get download {package}: exit {proc.returncode}: {proc.stderr.strip()}")
    raise VmUnavailable(
        "cannot download the kernel image:\n" + "\n".join(errors) + "\nhint: run 'apt-get update' once"
    )


def _extract_boot_files(deb: Path, kver: str, dest: Path) -> None:
    wanted = {f"./boot/vmlinuz-{kver}", f"./boot/config-{kver}"}
    with subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(deb)], stdout=subprocess.PIPE) as proc:
        assert proc.stdout is not None
        with tarfile.open(fileobj=proc.stdout, mode="r|") as tar:
            for member in tar:
                if member.name in wanted and member.isfile():
                    source = tar.extractfile(member)
                    assert source is not None
                    with open(dest / Path(member.name).name, "wb") as out:
                        shutil.copyfileobj(source, out)
            # Drain the stream so dpkg-deb does not die of SIGPIPE.
            for _ in tar:
                pass
    if proc.returncode != 0:
        raise VmUnavailable(f"dpkg-deb --fsys-tarfile {deb} failed (exit {proc.returncode})")


# --------------------------------------------------------------------------------------------
# The initramfs


@dataclass(frozen=True)
class GuestStep:
    """A busybox ``sh`` snippet run by the guest's /init, in a subshell, stdout and stderr together."""

    name: str
    script: str

    def __post_init__(self) -> None:
        if not _STEP_NAME.fullmatch(self.name):
            raise ValueError(f"bad step name {self.name!r} (letters, digits, '_', '.', '-')")


class _Cpio:
    """A minimal writer of the "newc" cpio format, the one the kernel unpacks into its rootfs."""

    def __init__(self) -> None:
        self._out = io.BytesIO()
        self._ino = 0

    def _entry(self, name: str, mode: int, data: bytes = b"", rdev: tuple[int, int] = (0, 0)) -> None:
        self._ino += 1
        encoded = name.encode() + b"\0"
        fields = [self._ino, mode, 0, 0, 1, 0, len(data), 0, 0, rdev[0], rdev[1], len(encoded), 0]
        self._out.write(b"070701" + b"".join(b"%08X" % f for f in fields) + encoded)
        self._pad()
        self._out.write(data)
        self._pad()

    def _pad(self) -> None:
        self._out.write(b"\0" * (-self._out.tell() % 4))

    def directory(self, name: str) -> None:
        self._entry(name, 0o040755)

    def file(self, name: str, data: bytes, executable: bool = False) -> None:
        self._entry(name, 0o100755 if executable else 0o100644, data)

    def char_device(self, name: str, major: int, minor: int, perm: int) -> None:
        self._entry(name, 0o020000 | perm, rdev=(major, minor))

    def finish(self) -> bytes:
        self._entry("TRAILER!!!", 0)
        return self._out.getvalue()


def init_script(steps: Sequence[GuestStep]) -> str:
    """The guest's /init: mount the pseudo file systems, run the steps, dump the kernel log, power off.

    Around each step it prints ``@@pydkms-vm begin NAME`` / ``@@pydkms-vm end NAME rc=N`` on the
    console and writes ``@@pydkms-vm step NAME`` to /dev/kmsg, so the kernel log can be cut into
    the part each step caused. Console log level 1 keeps kernel messages out of the steps' output.
    """
    names = [s.name for s in steps]
    if len(set(names)) != len(names):
        raise ValueError(f"step names must be unique: {names}")
    lines = [
        "#!/bin/busybox sh",
        "/bin/busybox --install -s /bin",
        "mount -t proc proc /proc",
        "mount -t sysfs sysfs /sys",
        "mount -t devtmpfs devtmpfs /dev 2>/dev/null",
        "dmesg -n 1",
        f'echo "{MARK} kernel $(uname -r)"',
    ]
    for step in steps:
        lines += [
            f'echo "{MARK} step {step.name}" > /dev/kmsg',
            f'echo "{MARK} begin {step.name}"',
            "(",
            step.script,
            ") </dev/null 2>&1",
            f'echo "{MARK} end {step.name} rc=$?"',
        ]
    lines += [
        f'echo "{MARK} step {_DMESG}" > /dev/kmsg',
        f'echo "{MARK} begin {_DMESG}"',
        "dmesg",
        f'echo "{MARK} end {_DMESG} rc=$?"',
        f'echo "{MARK} done uptime $(cut -d" " -f1 /proc/uptime)"',
        "poweroff -f",
    ]
    return "\n".join(lines) + "\n"


def build_initramfs(
    dest: Path,
    steps: Sequence[GuestStep],
    files: Mapping[str, Path] = {},
    busybox: Optional[Path] = None,
) -> Path:
    """Write a gzip'd cpio to ``dest``: busybox, ``files`` (guest path → host file), /init running ``steps``.

    The guest also gets /dev/console, /dev/null, /proc, /sys, /tmp (writable: the rootfs is a tmpfs).
    """
    bb = busybox or static_busybox()
    if bb is None:
        raise VmUnavailable("no statically linked busybox (apt-get install busybox-static)")
    archive = _Cpio()
    dirs = {"bin", "dev", "proc", "sys", "tmp"}
    for guest_path in files:
        if not guest_path.startswith("/"):
            raise ValueError(f"guest path must be absolute: {guest_path}")
        parent = Path(guest_path.lstrip("/")).parent
        while str(parent) != ".":
            dirs.add(str(parent))
            parent = parent.parent
    for d in sorted(dirs):
        archive.directory(d)
    archive.char_device("dev/console", 5, 1, 0o600)
    archive.char_device("dev/null", 1, 3, 0o666)
    archive.file("bin/busybox", bb.read_bytes(), executable=True)
    for guest_path, host_path in sorted(files.items()):
        archive.file(guest_path.lstrip("/"), host_path.read_bytes())
    archive.file("init", init_script(steps).encode(), executable=True)
    dest.write_bytes(gzip.compress(archive.finish(), compresslevel=1))
    return dest


# --------------------------------------------------------------------------------------------
# Booting and reading the console


@dataclass(frozen=True)
class StepResult:
    name: str
    rc: int
    #: what the step printed (stdout and stderr)
    output: str
    #: kernel log lines from the start of this step to the start of the next one
    kernel_log: str

    def __str__(self) -> str:
        return f"guest step {self.name}: exit {self.rc}\n--- output\n{self.output}--- kernel log\n{self.kernel_log}"


@dataclass(frozen=True)
class BootResult:
    """The parsed serial console of one boot."""

    console: str = field(repr=False)
    console_log: Path
    seconds: float
    timed_out: bool
    #: ``uname -r`` in the guest ('' if /init never ran)
    kernel_release: str = ""
    steps: Mapping[str, StepResult] = field(default_factory=dict, repr=False)
    dmesg: str = field(default="", repr=False)
    #: guest uptime when /init finished ('' if it did not finish)
    uptime: str = ""

    @property
    def completed(self) -> bool:
        """/init ran every step and dumped the kernel log."""
        return bool(self.uptime)

    def step(self, name: str) -> StepResult:
        """The result of step ``name``; an AssertionError quoting the console if it did not finish."""
        if name not in self.steps:
            raise AssertionError(f"guest step {name!r} did not finish; console ({self.console_log}):\n{self}")
        return self.steps[name]

    def __str__(self) -> str:
        state = "timed out" if self.timed_out else ("completed" if self.completed else "incomplete")
        return f"[boot {state} after {self.seconds:.1f} s]\n{self.console}"


def parse_console(console: str) -> tuple[str, dict[str, StepResult], str, str]:
    """(kernel release, step results, full kernel log, uptime) from a console written by :func:`init_script`."""
    release = uptime = ""
    outputs: dict[str, tuple[int, str]] = {}
    current: Optional[str] = None
    buffer: list[str] = []
    for raw in console.splitlines():
        # A marker may follow output without a newline, or the terminal resets the BIOS prints.
        prefix, sep, rest = raw.partition(MARK + " ")
        line = sep + rest if sep else raw
        if current is not None:
            end = re.fullmatch(rf"{MARK} end (\S+) rc=(\d+)", line)
            if end and end.group(1) == current:
                buffer += [prefix] if prefix else []
                outputs[current] = (int(end.group(2)), "".join(f"{b}\n" for b in buffer))
                current, buffer = None, []
            else:
                buffer.append(raw)
        elif line.startswith(f"{MARK} begin "):
            current = line[len(MARK) + len(" begin ") :]
        elif line.startswith(f"{MARK} kernel "):
            release = line[len(MARK) + len(" kernel ") :]
        elif line.startswith(f"{MARK} done uptime "):
            uptime = line[len(MARK) + len(" done uptime ") :]
    dmesg = outputs.pop(_DMESG, (0, ""))[1]
    logs = _split_kernel_log(dmesg)
    steps = {name: StepResult(name, rc, out, logs.get(name, "")) for name, (rc, out) in outputs.items()}
    return release, steps, dmesg, uptime


def _split_kernel_log(dmesg: str) -> dict[str, str]:
    parts: dict[str, list[str]] = {}
    current: Optional[str] = None
    marker = re.compile(rf"^\[\s*[\d.]+\] {MARK} step (\S+)$")
    for line in dmesg.splitlines():
        found = marker.match(line)
        if found:
            current = found.group(1)
            parts[current] = []
        elif current is not None:
            parts[current].append(line)
    return {name: "".join(f"{line}\n" for line in lines) for name, lines in parts.items()}


def qemu_command(image: Path, initramfs: Path, append: Sequence[str] = ()) -> list[str]:
    return [
        QEMU,
        "-accel", "tcg",
        "-m", "512",
        "-nographic",
        "-no-reboot",
        "-nic", "none",  # no NIC: skips the iPXE option ROM
        "-kernel", str(image),
        "-initrd", str(initramfs),
        "-append", " ".join((*APPEND, *append)),
    ]  # fmt: skip


def boot(
    image: Path,
    initramfs: Path,
    console_log: Path,
    timeout: float = 120,
    append: Sequence[str] = (),
) -> BootResult:
    """Boot ``image`` with ``initramfs`` under QEMU (TCG) and return the parsed console.

    qemu's stdout and stderr (the serial console) go to ``console_log``. After ``timeout``
    seconds qemu is killed and the result has ``timed_out`` set. ``append`` adds kernel
    parameters (for example ``module.sig_enforce=1``).
    """
    start = time.monotonic()
    timed_out = False
    with open(console_log, "wb") as log:
        proc = subprocess.Popen(
            qemu_command(image, initramfs, append),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    seconds = time.monotonic() - start
    console = console_log.read_bytes().decode("utf-8", "replace").replace("\r", "")
    release, steps, dmesg, uptime = parse_console(console)
    return BootResult(console, console_log, seconds, timed_out, release, steps, dmesg, uptime)


def run_in_guest(
    kver: str,
    steps: Sequence[GuestStep],
    files: Mapping[str, Path],
    workdir: Path,
    timeout: float = 120,
    append: Sequence[str] = (),
) -> BootResult:
    """Boot Debian's kernel ``kver`` once with ``files`` in the initramfs and run ``steps``.

    ``workdir`` receives ``initrd.cpio.gz`` and ``console.log``. Raises :class:`VmUnavailable`
    when qemu or busybox is missing or the image cannot be fetched.
    """
    reason = unavailable()
    if reason:
        raise VmUnavailable(reason)
    image = kernel_image(kver)
    initramfs = build_initramfs(workdir / "initrd.cpio.gz", steps, files)
    return boot(image, initramfs, workdir / "console.log", timeout=timeout, append=append)
