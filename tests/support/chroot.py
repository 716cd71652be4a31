"""A cached Debian bookworm chroot for system tests: debootstrap once, a fresh copy per test.

* :func:`base_chroot` runs ``debootstrap --variant=minbase bookworm`` once into
  ``<test cache>/chroot/bookworm-minbase-v<N>/`` (the test cache is ``$PYDKMS_TEST_CACHE`` or
  ``~/.cache/pydkms-tests``), from the mirror the host's apt uses, under a file lock so that two
  pytest processes never build it at once. A completion marker beside it is written last: a base
  without one (an interrupted build) is removed and built again. The base is never changed after
  that; a new recipe gets a new ``v<N>``.
* :class:`Chroot` is one test's copy of the base: an overlayfs mount with the base as its lower
  layer (or, where overlayfs is not available, ``cp -a``), with ``/proc``, ``/sys`` (read-only),
  ``/dev`` and ``/dev/pts`` bind-mounted from the host and ``/var/cache/apt/archives`` bound to a
  shared download cache, so a .deb (linux-headers-*, gcc) is downloaded once for all runs.
  Closing it (the ``with`` block ends, also on an exception or Ctrl-C; and at interpreter exit)
  kills what still runs inside, unmounts everything below it (lazily if busy) and deletes the
  copy. Copies live under ``<test cache>/chroot/copies/``, named after the pid of their pytest
  process: :func:`base_chroot` unmounts and deletes those a killed run left behind.
* :meth:`Chroot.run` runs a command inside with a clean environment (``env -i`` with PATH,
  HOME=/root, DEBIAN_FRONTEND=noninteractive, LC_ALL=C); :meth:`Chroot.apt_install` installs
  packages (one ``apt-get update`` per chroot, ``--no-install-recommends`` by default).
* :func:`header_packages` names the ``linux-headers-<K>`` packages of the host's kernels.

Measured on a 2-core Debian 12 machine shared with other test runs: the first debootstrap with
the ``apt-get update`` after it takes 50 to 90 s (mostly dpkg setting up the base; the download
cache only saves its 31 MB of .debs), a fresh overlay copy with its mounts 0.05 s (``cp -a`` of
the 250 MB base: 1.3 to 9 s), ``apt-get update`` in a copy about 2 s, and installing
``linux-headers-<K>`` (it pulls gcc-12) about 20 to 30 s. Each copy stores only what a test
changes (headers with gcc: about 380 MB) and is deleted when it closes; the download cache
grows with what the tests install.

Inside, dpkg runs with ``force-unsafe-io`` (no fsync: a test chroot never survives a crash; this
makes installing headers three times faster), ``/usr/sbin/policy-rc.d`` stops packages from
starting services, and apt fetches no translations. The host's CA certificates and pip.conf are
copied in; :meth:`Chroot.enable_https` installs ``ca-certificates`` so that they are trusted
(plain apt over the mirror needs none of that).

Needs root, ``debootstrap``, ``mount``/``umount`` and ``chroot``; :func:`unavailable` says what is
missing.
"""

from __future__ import annotations

import atexit
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Union

from .upstream import _locked, default_cache_dir

SUITE = "bookworm"
#: Bump when the recipe of the base changes; the base directory carries it in its name.
BASE_RECIPE = 1
BASE_NAME = f"{SUITE}-minbase-v{BASE_RECIPE}"
DEFAULT_MIRROR = "http://deb.debian.org/debian"
HOST_SOURCES = Path("/etc/apt/sources.list.d/debian.sources")
HOST_SOURCES_LIST = Path("/etc/apt/sources.list")
KEYRING = Path("/usr/share/keyrings/debian-archive-keyring.gpg")
#: The host's trust anchors for HTTPS inside (pip, curl); apt over the plain-HTTP mirror needs none.
HOST_CA_DIR = Path("/usr/local/share/ca-certificates")
HOST_PIP_CONF = Path("/etc/pip.conf")
CHROOT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
#: Prefix of the per-test copies: ``pydkms-chroot-<pid>-<random>``.
COPY_PREFIX = "pydkms-chroot-"
DEFAULT_TIMEOUT = 600.0
APT_TIMEOUT = 1800.0
#: Host directories bound into every chroot, in mount order; ``/sys`` is made read-only.
PSEUDO_FILESYSTEMS = ("proc", "sys", "dev", "dev/pts")
_COPY_NAME = re.compile(rf"{re.escape(COPY_PREFIX)}(\d+)-[^/]+")


class ChrootUnavailable(Exception):
    """No chroot can be made here: a tool is missing, debootstrap or a mount failed."""


class CommandFailed(AssertionError):
    """A command in the chroot exited non-zero (with ``check=True``) or timed out."""


@dataclass(frozen=True)
class RunResult:
    """What a command run in a chroot did."""

    argv: tuple[str, ...]
    rc: int
    stdout: str
    stderr: str

    def __str__(self) -> str:
        return f"(chroot) $ {shlex.join(self.argv)}\n[exit {self.rc}]\n--- stdout\n{self.stdout}--- stderr\n{self.stderr}"


@dataclass(frozen=True)
class Base:
    """The cached, debootstrapped base tree, and how long building it took."""

    root: Path
    mirror: str
    #: seconds debootstrap and the set-up took when the base was built
    build_seconds: float
    #: True if this call built it, False if it came from the cache
    built_now: bool


# --------------------------------------------------------------------------------------------
# Host prerequisites and configuration


def unavailable() -> Optional[str]:
    """Why no chroot can be made on this host (naming what to install), or None."""
    if os.geteuid() != 0:
        return "chroots need root"
    missing = [tool for tool in ("debootstrap", "chroot", "mount", "umount") if shutil.which(tool) is None]
    if missing:
        hint = " (apt-get install --no-install-recommends debootstrap)" if "debootstrap" in missing else ""
        return "missing " + ", ".join(missing) + hint
    return None


def mirror_from_deb822(text: str, suite: str = SUITE) -> Optional[str]:
    """The first ``URIs:`` of a deb822 sources stanza of type ``deb`` that lists ``suite`` itself."""
    for stanza in re.split(r"\n\s*\n", text):
        fields: dict[str, str] = {}
        for line in stanza.splitlines():
            key, sep, value = line.partition(":")
            if sep and not line.startswith((" ", "\t", "#")):
                fields[key.strip().lower()] = value.strip()
        if fields.get("enabled", "yes").lower() == "no":
            continue
        if "deb" in fields.get("types", "").split() and suite in fields.get("suites", "").split():
            uris = fields.get("uris", "").split()
            if uris:
                return uris[0]
    return None


def mirror_from_sources_list(text: str, suite: str = SUITE) -> Optional[str]:
    """The URI of the first one-line ``deb [options] URI suite ...`` entry for ``suite``."""
    for line in text.splitlines():
        words = re.sub(r"\[[^\]]*\]", " ", line.split("#", 1)[0]).split()
        if len(words) >= 3 and words[0] == "deb" and words[2] == suite:
            return words[1]
    return None


def host_mirror() -> str:
    """The Debian mirror the host's apt uses for bookworm (deb822 sources first, then sources.list)."""
    for path, parse in ((HOST_SOURCES, mirror_from_deb822), (HOST_SOURCES_LIST, mirror_from_sources_list)):
        try:
            found = parse(path.read_text())
        except OSError:
            continue
        if found:
            return found
    return DEFAULT_MIRROR


def header_packages(kernels: Iterable[str]) -> list[str]:
    """Debian's header package of each kernel release (``6.1.0-57-amd64`` → ``linux-headers-6.1.0-57-amd64``).

    Give it the host's kernels (the ``kernels`` fixture), so no test names an ABI.
    """
    names = []
    for kernel in kernels:
        if not re.fullmatch(r"[0-9][A-Za-z0-9.+~-]*", kernel):
            raise ValueError(f"not a kernel release: {kernel!r}")
        names.append(f"linux-headers-{kernel}")
    return names


def cache_root(cache: Optional[Path] = None) -> Path:
    """``<test cache>/chroot``: the base, its marker, lock and log, the .deb cache and the copies."""
    return (cache or default_cache_dir()) / "chroot"


# --------------------------------------------------------------------------------------------
# Mounts


def _unescape_mountinfo(field: str) -> str:
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def mount_points(mountinfo: Optional[str] = None) -> list[str]:
    """The mount points of ``/proc/self/mountinfo`` (or of the given text), in mount order."""
    if mountinfo is None:
        with open("/proc/self/mountinfo") as fh:
            mountinfo = fh.read()
    return [_unescape_mountinfo(line.split()[4]) for line in mountinfo.splitlines() if line.strip()]


def mounts_below(top: Path, mountinfo: Optional[str] = None) -> list[str]:
    """Mount points at ``top`` or below it, in mount order (unmount them in reverse)."""
    prefix = str(top).rstrip("/") + "/"
    return [m for m in mount_points(mountinfo) if m == str(top) or m.startswith(prefix)]


def _mount(*args: str) -> None:
    proc = subprocess.run(["mount", *args], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise ChrootUnavailable(f"mount {shlex.join(args)}: exit {proc.returncode}: {proc.stderr.strip()}")


def unmount_below(top: Path) -> None:
    """Unmount everything at or below ``top``, deepest first, lazily where a mount is busy.

    Raises ChrootUnavailable if something is still mounted there afterwards.
    """
    for point in reversed(mounts_below(top)):
        if subprocess.run(["umount", point], capture_output=True, check=False).returncode != 0:
            subprocess.run(["umount", "-l", point], capture_output=True, check=False)
    left = mounts_below(top)
    if left:
        raise ChrootUnavailable(f"cannot unmount {', '.join(left)}")


def remove_tree(top: Path) -> None:
    """Delete ``top`` after unmounting what is below it, so no host /dev or /sys is ever deleted through a bind mount."""
    if not top.exists() and not top.is_symlink():
        return
    unmount_below(top)
    shutil.rmtree(top)


def _bind(source: Path, target: Path, read_only: bool = False) -> None:
    # private: nothing mounted on the host later shows up inside, and nothing mounted inside leaks out
    _mount("--bind", "--make-private", str(source), str(target))
    if read_only:
        _mount("-o", "remount,bind,ro", str(target))


def _bind_pseudo_filesystems(root: Path) -> None:
    for name in PSEUDO_FILESYSTEMS:
        target = root / name
        target.mkdir(parents=True, exist_ok=True)
        _bind(Path("/") / name, target, read_only=name == "sys")


# --------------------------------------------------------------------------------------------
# Processes


def _processes_in(root: Path) -> list[int]:
    """Pids of the processes whose root directory is ``root`` (or below it)."""
    found = []
    prefix = str(root).rstrip("/") + "/"
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            proc_root = os.readlink(f"/proc/{entry}/root")
        except OSError:
            continue
        if proc_root == str(root) or proc_root.startswith(prefix):
            found.append(int(entry))
    return found


def kill_processes_in(root: Path, wait: float = 5.0) -> list[int]:
    """SIGKILL every process running in the chroot at ``root``; wait until they are gone. Returns their pids."""
    victims = _processes_in(root)
    for pid in victims:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline and any(_alive(pid) for pid in victims):
        time.sleep(0.05)
    return victims


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            state = fh.read().rpartition(")")[2].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def _run_host(argv: Sequence[str], log: Optional[Path] = None, timeout: float = DEFAULT_TIMEOUT) -> None:
    """Run a set-up command on the host; a failure raises ChrootUnavailable with its output."""
    proc = subprocess.run(
        list(argv),
        capture_output=True,
        text=True,
        errors="replace",
        stdin=subprocess.DEVNULL,
        timeout=timeout,
        check=False,
    )
    output = proc.stdout + proc.stderr
    if log is not None:
        with open(log, "a") as fh:
            fh.write(f"$ {shlex.join(argv)}\n{output}[exit {proc.returncode}]\n")
    if proc.returncode != 0:
        tail = "\n".join(output.splitlines()[-20:])
        raise ChrootUnavailable(f"{shlex.join(argv)}: exit {proc.returncode}\n{tail}")


# --------------------------------------------------------------------------------------------
# The base


@dataclass(frozen=True)
class _BasePaths:
    top: Path

    @property
    def root(self) -> Path:
        return self.top / BASE_NAME

    @property
    def marker(self) -> Path:
        return self.top / f"{BASE_NAME}.complete"

    @property
    def lock(self) -> Path:
        return self.top / f"{BASE_NAME}.lock"

    @property
    def log(self) -> Path:
        return self.top / f"{BASE_NAME}.log"

    @property
    def archives(self) -> Path:
        return self.top / "archives"

    @property
    def copies(self) -> Path:
        return self.top / "copies"


def _read_marker(marker: Path) -> Optional[dict[str, object]]:
    try:
        data = json.loads(marker.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("recipe") == BASE_RECIPE else None


def ensure_base(top: Path, build: Callable[[Path, Path], str]) -> Base:
    """The base under ``top``, made by ``build(root, log)`` (which returns the mirror) if it is missing or incomplete.

    Holds ``top/<base>.lock`` while checking and building. The marker is written after
    everything else (and after a sync), so a base without it is an interrupted build: it is
    removed and built again.
    """
    paths = _BasePaths(top)
    top.mkdir(parents=True, exist_ok=True)
    with _locked(paths.lock):
        marker = _read_marker(paths.marker)
        if marker is not None and paths.root.is_dir():
            seconds = marker.get("seconds")
            built = float(seconds) if isinstance(seconds, (int, float)) else 0.0
            return Base(paths.root, str(marker.get("mirror", "")), built, False)
        paths.marker.unlink(missing_ok=True)
        remove_tree(paths.root)
        paths.log.write_text("")
        started = time.monotonic()
        mirror = build(paths.root, paths.log)
        seconds = round(time.monotonic() - started, 1)
        os.sync()
        record = {"recipe": BASE_RECIPE, "mirror": mirror, "seconds": seconds, "built": time.time()}
        tmp = paths.marker.with_name(paths.marker.name + ".tmp")
        tmp.write_text(json.dumps(record) + "\n")
        tmp.replace(paths.marker)
        return Base(paths.root, mirror, seconds, True)


def base_chroot(cache: Optional[Path] = None) -> Base:
    """The debootstrapped bookworm minbase, built once into the test cache (see the module docstring).

    Also unmounts and deletes the copies a killed test run left behind. Raises
    ChrootUnavailable when the host cannot make one (see :func:`unavailable`) or debootstrap fails.
    """
    why = unavailable()
    if why:
        raise ChrootUnavailable(why)
    top = cache_root(cache)
    paths = _BasePaths(top)
    with _locked(top / "copies.lock"):
        sweep_stale_copies(paths.copies)
    paths.archives.joinpath("partial").mkdir(parents=True, exist_ok=True)
    return ensure_base(top, lambda root, log: _debootstrap(root, log, paths.archives))


def _debootstrap(root: Path, log: Path, archives: Path) -> str:
    mirror = host_mirror()
    argv = ["debootstrap", "--variant=minbase", f"--cache-dir={archives}"]
    if KEYRING.is_file():
        argv.append(f"--keyring={KEYRING}")
    try:
        _run_host([*argv, SUITE, str(root), mirror], log=log, timeout=1800)
    finally:
        # debootstrap mounts /proc and /sys in the target while it runs; a failed run may leave them
        unmount_below(root)
    _configure(root)
    for deb in (root / "var/cache/apt/archives").glob("*.deb"):
        deb.unlink()
    # Fill apt's lists once, so that the update in each copy only revalidates them.
    try:
        _bind_pseudo_filesystems(root)
        _run_host(["chroot", str(root), *_clean_env_argv(), "apt-get", "update", "-q"], log=log)
    finally:
        unmount_below(root)
    return mirror


def _configure(root: Path) -> None:
    """The host's apt sources, resolver and trust anchors, and the settings that suit a test chroot."""
    apt = root / "etc/apt"
    if HOST_SOURCES.is_file():
        (apt / "sources.list.d").mkdir(parents=True, exist_ok=True)
        shutil.copyfile(HOST_SOURCES, apt / "sources.list.d" / HOST_SOURCES.name)
        (apt / "sources.list").unlink(missing_ok=True)
    elif HOST_SOURCES_LIST.is_file():
        shutil.copyfile(HOST_SOURCES_LIST, apt / "sources.list")
    resolv = root / "etc/resolv.conf"
    if resolv.is_symlink():
        resolv.unlink()
    if Path("/etc/resolv.conf").exists():
        shutil.copyfile("/etc/resolv.conf", resolv)
    if HOST_CA_DIR.is_dir():
        ca_dir = root / HOST_CA_DIR.relative_to("/")
        ca_dir.mkdir(parents=True, exist_ok=True)
        for crt in HOST_CA_DIR.glob("*.crt"):
            shutil.copyfile(crt, ca_dir / crt.name)
    if HOST_PIP_CONF.is_file():
        shutil.copyfile(HOST_PIP_CONF, root / "etc/pip.conf")
    (apt / "apt.conf.d").mkdir(parents=True, exist_ok=True)
    (apt / "apt.conf.d/90pydkms-tests").write_text('Acquire::Languages "none";\n')
    (root / "etc/dpkg/dpkg.cfg.d").mkdir(parents=True, exist_ok=True)
    (root / "etc/dpkg/dpkg.cfg.d/pydkms-tests").write_text("force-unsafe-io\n")
    policy = root / "usr/sbin/policy-rc.d"
    policy.write_text("#!/bin/sh\n# a test chroot starts no services\nexit 101\n")
    policy.chmod(0o755)


def sweep_stale_copies(copies: Path) -> list[Path]:
    """Unmount and delete the copies under ``copies`` whose pytest process is gone. Returns them.

    A copy of a dead process mounted elsewhere (the test cache moved) is unmounted, not deleted.
    """
    stale_mounts: set[Path] = set()
    for point in mount_points():
        for part in Path(point).parents:
            found = _COPY_NAME.fullmatch(part.name)
            if found and not _alive(int(found.group(1))):
                stale_mounts.add(part)
    stale_copies = []
    if copies.is_dir():
        for entry in sorted(copies.iterdir()):
            found = _COPY_NAME.fullmatch(entry.name)
            if found and not _alive(int(found.group(1))):
                stale_copies.append(entry)
    for path in sorted(stale_mounts.union(stale_copies)):
        kill_processes_in(path)
        unmount_below(path)
    for path in stale_copies:
        remove_tree(path)
    return stale_copies


def _clean_env_argv(extra: Optional[Mapping[str, str]] = None, cwd: str = "/") -> list[str]:
    """``env -i -C cwd`` with the variables a command inside gets (plus ``extra``)."""
    env = {"PATH": CHROOT_PATH, "HOME": "/root", "DEBIAN_FRONTEND": "noninteractive", "LC_ALL": "C"}
    env.update(extra or {})
    return ["/usr/bin/env", "-i", "-C", cwd, *(f"{key}={value}" for key, value in env.items())]


# --------------------------------------------------------------------------------------------
# One test's chroot

_OPEN: dict[int, Chroot] = {}


@atexit.register
def _close_all() -> None:
    for chroot in list(_OPEN.values()):
        chroot.close()


class Chroot:
    """A fresh copy of the base with the pseudo file systems mounted; use it as a context manager.

    ``method`` is ``"overlay"``, ``"copy"`` (``cp -a``) or ``"auto"`` (overlay, else copy).
    """

    def __init__(self, base: Base, method: str = "auto") -> None:
        if method not in ("auto", "overlay", "copy"):
            raise ValueError(f"method must be auto, overlay or copy, not {method!r}")
        self.base = base
        self._requested = method
        self._paths = _BasePaths(base.root.parent)
        self._dir: Optional[Path] = None
        self._root: Optional[Path] = None
        self._apt_updated = False
        #: "overlay" or "copy", once open
        self.method = ""
        #: seconds it took to make the copy and mount everything
        self.setup_seconds = 0.0

    # -- life cycle

    def __enter__(self) -> Chroot:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def open(self) -> None:
        """Make the copy and mount the pseudo file systems and the download cache."""
        if self._dir is not None:
            raise RuntimeError("this chroot is already open")
        started = time.monotonic()
        self._paths.copies.mkdir(parents=True, exist_ok=True)
        self._dir = Path(tempfile.mkdtemp(prefix=f"{COPY_PREFIX}{os.getpid()}-", dir=self._paths.copies))
        _OPEN[id(self)] = self
        try:
            self._root = self._dir / "root"
            self._root.mkdir()
            self.method = self._make_copy(self._dir, self._root)
            _bind_pseudo_filesystems(self._root)
            archives = self._paths.archives
            archives.joinpath("partial").mkdir(parents=True, exist_ok=True)
            _bind(archives, self._root / "var/cache/apt/archives")
            _configure(self._root)
        except BaseException:
            self.close()
            raise
        self.setup_seconds = time.monotonic() - started

    def _make_copy(self, work: Path, root: Path) -> str:
        if self._requested in ("auto", "overlay"):
            upper, scratch = work / "upper", work / "work"
            upper.mkdir()
            scratch.mkdir()
            options = f"lowerdir={self.base.root},upperdir={upper},workdir={scratch}"
            try:
                if any(c in str(p) for p in (self.base.root, upper, scratch) for c in ",:"):
                    raise ChrootUnavailable(f"overlayfs cannot take paths with ',' or ':': {options}")
                _mount("-t", "overlay", "overlay", "-o", options, str(root))
                _mount("--make-private", str(root))
                return "overlay"
            except ChrootUnavailable:
                if self._requested == "overlay":
                    raise
                unmount_below(root)
        _run_host(["cp", "-a", "--reflink=auto", f"{self.base.root}/.", str(root)])
        # a mount of its own, so that everything below it is private like the overlay
        _bind(root, root)
        return "copy"

    def close(self) -> None:
        """Kill what still runs inside, unmount everything below the copy and delete it. Idempotent."""
        work, self._dir = self._dir, None
        _OPEN.pop(id(self), None)
        if work is None:
            return
        if self._root is not None:
            kill_processes_in(self._root)
        remove_tree(work)

    @property
    def root(self) -> Path:
        """The chroot's ``/`` on the host."""
        if self._root is None or self._dir is None:
            raise RuntimeError("the chroot is not open")
        return self._root

    def mounts(self) -> list[str]:
        """The host's mount points inside this copy (empty once it is closed)."""
        return mounts_below(self._root) if self._root is not None else []

    # -- commands

    def run(
        self,
        *argv: str,
        check: bool = True,
        input: Optional[str] = None,
        timeout: float = DEFAULT_TIMEOUT,
        env: Optional[Mapping[str, str]] = None,
        cwd: str = "/",
    ) -> RunResult:
        """Run ``argv`` inside with a clean environment (plus ``env``), in ``cwd`` inside.

        ``check``: raise CommandFailed (with the output) on a non-zero exit. A command still
        running after ``timeout`` seconds is killed with everything it started, and
        CommandFailed is raised whatever ``check`` says.
        """
        if not argv:
            raise ValueError("run() needs a command")
        full = ["chroot", str(self.root), *_clean_env_argv(env, cwd), *argv]
        proc = subprocess.Popen(
            full,
            stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            errors="replace",
            env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"},
            start_new_session=True,
        )
        try:
            stdout, stderr = proc.communicate(input, timeout=timeout)
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            stdout, stderr = proc.communicate()
            result = RunResult(tuple(argv), proc.returncode, stdout, stderr)
            raise CommandFailed(f"timed out after {timeout:g} s: {result}") from None
        except BaseException:
            _kill_group(proc)
            proc.communicate()
            raise
        result = RunResult(tuple(argv), proc.returncode, stdout, stderr)
        if check and result.rc != 0:
            raise CommandFailed(str(result))
        return result

    def sh(
        self,
        script: str,
        check: bool = True,
        input: Optional[str] = None,
        timeout: float = DEFAULT_TIMEOUT,
        env: Optional[Mapping[str, str]] = None,
        cwd: str = "/",
    ) -> RunResult:
        """Run a bash script inside with ``set -e -o pipefail``; the other arguments as for :meth:`run`."""
        return self.run(
            "/bin/bash", "-e", "-o", "pipefail", "-c", script,
            check=check, input=input, timeout=timeout, env=env, cwd=cwd,
        )  # fmt: skip

    def apt_update(self, force: bool = False) -> Optional[RunResult]:
        """``apt-get update``, once per chroot unless ``force``; None if it already ran."""
        if self._apt_updated and not force:
            return None
        result = self.run("apt-get", "update", "-q", timeout=APT_TIMEOUT)
        self._apt_updated = True
        return result

    def apt_install(
        self, *packages: str, recommends: bool = False, timeout: float = APT_TIMEOUT, check: bool = True
    ) -> RunResult:
        """``apt-get install -y`` the packages (names, or paths of .debs inside); no Recommends unless asked."""
        if not packages:
            raise ValueError("apt_install() needs at least one package")
        self.apt_update()
        options = ["-y", "-q", "-o", "Dpkg::Use-Pty=0"]
        if not recommends:
            options.append("--no-install-recommends")
        return self.run("apt-get", "install", *options, *packages, timeout=timeout, check=check)

    def enable_https(self) -> None:
        """Install ca-certificates, so the host's trust anchors copied in are trusted (pip, curl)."""
        self.apt_install("ca-certificates")
        self.run("update-ca-certificates")

    # -- files

    def path(self, inside: str) -> Path:
        """The host path of ``inside``, resolving symlinks as the chroot would (an absolute link stays inside).

        Missing trailing parts are fine (for a file about to be written).
        """
        if not inside.startswith("/"):
            raise ValueError(f"a path in the chroot must be absolute: {inside!r}")
        root = self.root
        resolved: list[str] = []
        pending = [p for p in inside.split("/") if p]
        hops = 0
        while pending:
            part = pending.pop(0)
            if part == ".":
                continue
            if part == "..":
                if resolved:
                    resolved.pop()
                continue
            candidate = root.joinpath(*resolved, part)
            if candidate.is_symlink():
                hops += 1
                if hops > 40:
                    raise ValueError(f"too many symbolic links in the chroot path {inside!r}")
                target = os.readlink(candidate)
                if target.startswith("/"):
                    resolved = []
                pending = [p for p in target.split("/") if p] + pending
                continue
            resolved.append(part)
        return root.joinpath(*resolved)

    def exists(self, inside: str) -> bool:
        """Whether ``inside`` exists in the chroot."""
        return self.path(inside).exists()

    def read(self, inside: str) -> str:
        """The text of a file in the chroot."""
        return self.path(inside).read_text(errors="replace")

    def read_bytes(self, inside: str) -> bytes:
        """The bytes of a file in the chroot."""
        return self.path(inside).read_bytes()

    def put(self, inside: str, content: Union[str, bytes], mode: int = 0o644) -> Path:
        """Write a file into the chroot (parents are created, owned by root); returns its host path."""
        dest = self.path(inside)
        dest.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, str):
            dest.write_text(content)
        else:
            dest.write_bytes(content)
        dest.chmod(mode)
        return dest

    def copy_in(self, source: Path, inside: str) -> Path:
        """Copy a host file or directory (with its symlinks) to ``inside``; returns its host path."""
        dest = self.path(inside)
        dest.parent.mkdir(parents=True, exist_ok=True)
        if source.is_dir():
            shutil.copytree(source, dest, symlinks=True, dirs_exist_ok=True)
        else:
            shutil.copy2(source, dest)
        return dest

    def copy_out(self, inside: str, dest: Path) -> Path:
        """Copy a file out of the chroot to the host path ``dest``; returns ``dest``."""
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(self.path(inside), dest)
        return dest


def _kill_group(proc: subprocess.Popen[str]) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
