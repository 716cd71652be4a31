"""Run upstream (Debian bookworm's bash) dkms side by side with pydkms, in identical sandboxes.

* :func:`upstream_dkms` fetches Debian's ``dkms`` .deb once (``apt-get download``; or the file
  named by ``$PYDKMS_UPSTREAM_DEB``), unpacks it into the test cache and returns its
  ``usr/sbin/dkms``. Nothing is installed and nothing is put on PATH.
* :func:`run_isolated` runs any command (upstream or pydkms) in a private mount namespace where
  ``/lib/modules``, ``/var/lib/dkms``, ``/etc/dkms`` and ``/usr/src`` cannot touch the host.
  **Needs root and ``unshare`` (util-linux)**, plus tmpfs and overlayfs; tests should skip
  when :func:`isolation_unavailable` returns a reason. Overhead: about 50 ms per call.
* :class:`ScratchTrees` (``--dkmstree/--sourcetree/--installtree`` under one dir) and
  :class:`PrivateSystem` (persistent private ``/var/lib/dkms``, ``/lib/modules``, ``/usr/src``
  for running with the default paths) hold state across calls.
* :func:`snapshot_tree` turns a tree into a comparable ``{path: kind}`` dict.

Quirks of upstream dkms 3.0.10 (Debian 3.0.10-8+deb12u1), found running it in scratch trees
with the fixtures of tests/fixtures/modules (all through :func:`run_isolated`, LC_ALL=C):

Sandboxing / what it still touches
  - ``--dkmstree/--sourcetree/--installtree`` relocate only the three trees. Headers are still
    looked up at the hard-coded ``/lib/modules/K/build`` (``_get_kernel_dir``; ``--installtree``
    does not change that; ``--kernelsourcedir`` does, but for every kernel of the invocation),
    the compression probe greps ``/lib/modules/K/modules.dep`` (not the install tree), and
    ``depmod -a K`` rebuilds ``/lib/modules/K/modules.*``: with a scratch install tree the
    installed .ko is never in modules.dep. Pass ``lib_modules=`` (or use :class:`PrivateSystem`)
    to inspect depmod's output.
  - Signing always uses the fixed ``/var/lib/dkms/mok.key`` + ``mok.pub`` (created by openssl
    on the first build, whatever ``--dkmstree`` says); sign-file is
    ``/usr/lib/linux-kbuild-6.1/scripts/sign-file``, hash from the kernel .config (sha256).
    Every run_isolated call without ``var_lib_dkms=`` starts with an empty /var/lib/dkms, so each
    build prints "Certificate or key are missing, generating self signed certificate for MOK..."
    and uses a new key: pass ``var_lib_dkms`` for stable output across calls.
  - Reads ``/etc/dkms/framework.conf`` (+ ``framework.conf.d/*.conf``) and the override files
    ``/etc/dkms/<m>[-<v>[-<K>[-<A>]]].conf``, ``/etc/os-release`` (Debian → install dir
    ``/updates/dkms`` regardless of DEST_MODULE_LOCATION), ``/etc/sysconfig/module-init-tools``
    and ``/boot/System.map-K`` (for ``depmod -F``) if present; writes temp files under
    ``$TMPDIR`` (default /tmp) and removes them. Nothing else on the root filesystem changed
    during add/install/status/remove (checked with ``find / -xdev -newer``).
  - ``add <path>`` copies the tree to ``$source_tree/<m>-<v>`` (so without ``--sourcetree`` it
    writes to /usr/src: :func:`run_isolated` overlays /usr/src for that reason).
  - ``install`` refuses a kernel without ``$install_tree/K`` (exit 6 "doesn't exist"), but only
    after building it (the build stays); :meth:`ScratchTrees.create` pre-creates those dirs.
  - It unsets CC CXX CFLAGS CXXFLAGS LDFLAGS and appends /usr/lib/dkms to PATH (absent here;
    not needed by the actions tested).

Command line and exit codes
  - ``dkms`` with no action, or with an unknown word (``dkms foo`` is taken as module "foo"):
    usage on stdout, ``Error! Unknown action specified: ""`` on stderr, **exit 0**.
    ``--help`` is an unknown option: usage + ``Error!  Unknown option: --help``, exit 2.
  - No ``-k``: uses ``uname -r`` (no headers on CI) → exit 1 "Your kernel headers for kernel
    ... cannot be found", after printing the sign-file lines. Always pass ``-k``.
  - ``build`` of a m/v whose source dir is missing: exit 2 "Could not find module source
    directory". ``add`` twice: exit 3. ``remove`` of an unknown m/v: exit 3.
  - Idempotent successes: build of a built module ("already built ... skip"), install of an
    installed one ("already installed ... skip"), uninstall of a not-installed one
    ("is not installed ... Skipping...") all exit 0. ``unbuild`` of an installed module
    uninstalls it first.
  - A compile error: exit 10, only "(bad exit status: 2)" on stdout; compiler output only in
    ``$dkms_tree/m/v/build/make.log`` (build/ kept with the objects). autoinstall with any
    failure: exit 11.
  - BUILD_EXCLUSIVE mismatch: exit 77 with the odd path
    ``Error! The $dkms_tree/m/v/K/A/dkms.conf for module m includes a BUILD_EXCLUSIVE directive``.
  - ``-q`` silences everything (exec >/dev/null 2>&1). ``--no-depmod`` skips depmod but still
    prints "depmod...". ``--symlink-modules`` sets a misspelt variable and has no effect.

dkms.conf handling (differences from spec/dkms-conf.md, which follows current upstream)
  - CRLF is NOT handled: the ``crlf`` fixture adds as module ``crlf\\r`` version ``1.0\\r``
    (directories with CRs, status line ``crlf\\r/1.0\\r: added``); build/install then fail with
    exit 2 (source dir ``crlf-1.0`` not found).
  - Zero modules is an error: ``zeromod`` → "No 'DEST_MODULE_LOCATION' directive specified.",
    exit 8 at add.
  - Validation: records are counted with ``${#ARRAY[@]}`` (number of set elements), not
    highest index + 1, so the sparse example reports only record #0. Record errors come
    before the PACKAGE_NAME/PACKAGE_VERSION ones; BUILT_MODULE_NAME ending in .o/.ko also
    reports DEST_MODULE_NAME (which defaults to it); an empty DEST_MODULE_LOCATION also reports
    the bad prefix. The trailer is ``Error! Bad conf file.`` / ``File:  does not represent a
    valid dkms.conf file.`` (empty file name). Exit 8. NOT rejected by 3.0.10 (add exits 0):
    AUTOINSTALL=maybe, BUILD_DEPENDS_REBUILD=sometimes, NO_WEAK_MODULES=perhaps, duplicate
    built or dest modules.
  - BUILT_MODULE_NAME defaults to PACKAGE_NAME only when DEST_MODULE_LOCATION has exactly one
    element.

Scripts, patches, dependencies
  - PRE_BUILD/POST_BUILD exit codes are ignored (build with HOOKS_FAIL_PRE_BUILD=1 exits 0)
    and their output goes to the terminal, not make.log. PRE_INSTALL failure → exit 101
    ("pre_install failed, aborting install"), run once, after the first module's version check.
  - Script cwd: POST_ADD, PRE_INSTALL, POST_INSTALL, POST_REMOVE run in
    ``$dkms_tree/m/v/source`` (``$PWD`` shows the symlink path, unresolved); PRE/POST_BUILD in
    ``$dkms_tree/m/v/build``. The value is word-split and exec'd (``exec $run``).
    POST_REMOVE runs on uninstall only: ``remove --all`` of a module installed nowhere runs no
    script.
  - Patches: "applying patch X...patching file ..." on stdout; PATCH_MATCH honoured (only56
    applied on 6.1.0-56-amd64, not 6.1.0-50-amd64).
  - BUILD_DEPENDS is only used to order autoinstall; build does not check it (depuser without
    depbase fails in make: exit 10, not 13), and Module.symvers is NOT copied to ``module/``,
    so the ``depuser`` fixture cannot be built by 3.0.10 even with depbase installed.
  - On Debian the original in-tree module (``replaceme`` 1.0 under kernel/drivers/misc) is
    neither archived nor moved: install prints " - Original module" with no detail, uninstall
    says "No original module was found". The version check still compares against it
    (older → install proceeds). Same version (hello 1.0 built by hand and put under
    kernel/drivers/misc): "exactly matches ... DKMS will not replace this module" on stderr,
    nothing copied, yet exit 0, the kernel-K-A link is created and status says
    ``installed (WARNING! Diff between built and installed module!)``.

Tree layout and status
  - ``add`` creates an empty ``m/v/build/``; a successful build removes it; the built dir holds
    ``module/*.ko`` and ``log/{make.log,.config}``. ``kernel-K-A`` is a relative link, ``source``
    an absolute one. uninstall deletes ``updates/dkms/*.ko`` and prunes the empty ``updates/dkms``
    and ``updates`` dirs. STRIP[i]=no keeps the module unstripped (but signed).
  - ``status`` enumerates with bash globs, so its order follows LC_COLLATE (the harness sets
    LC_ALL=C; this machine has only C/C.utf8/POSIX locales); kernels are only found in dirs
    matching ``+([0-9]).*``. ``status`` with nothing added prints nothing, exit 0. A module not
    built for a ``-k`` kernel prints ``m/v: added`` (also with several ``-k``).

Timings here (2 cores): add 0.2-0.3 s, build of hello 1.9-2.5 s (about 0.3 s of it creating the
MOK key), install of a built module 0.15 s, status 0.1-0.2 s per line.
"""

from __future__ import annotations

import fcntl
import fnmatch
import os
import shlex
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

StrPath = Union[str, "os.PathLike[str]"]

#: Environment variable naming the cache directory (default ``~/.cache/pydkms-tests``).
CACHE_ENV = "PYDKMS_TEST_CACHE"
#: Environment variable naming a ``dkms_*.deb`` to use instead of downloading bookworm's.
UPSTREAM_DEB_ENV = "PYDKMS_UPSTREAM_DEB"
#: The Debian package that is downloaded (never installed).
UPSTREAM_PACKAGE = "dkms"

#: Host directories that upstream dkms writes to or reads behind ``--dkmstree`` & co.
#: Inside :func:`run_isolated` each is replaced by a private, initially empty directory.
LIB_MODULES = Path("/lib/modules")
VAR_LIB_DKMS = Path("/var/lib/dkms")
ETC_DKMS = Path("/etc/dkms")
#: The default source tree: inside :func:`run_isolated` an overlay of the host's (headers stay visible).
USR_SRC = Path("/usr/src")

#: Glob patterns (see :func:`snapshot_tree`) for files whose presence legitimately differs
#: between runs or implementations: depmod output, logs, pydkms' private files and lock.
DEFAULT_SNAPSHOT_IGNORE: tuple[str, ...] = ("modules.*", "log/*", ".pydkms-*", ".lock")


# --------------------------------------------------------------------------------------------
# Getting upstream dkms


def default_cache_dir() -> Path:
    """The test cache: ``$PYDKMS_TEST_CACHE`` or ``~/.cache/pydkms-tests``."""
    env = os.environ.get(CACHE_ENV)
    return Path(env) if env else Path.home() / ".cache" / "pydkms-tests"


@contextmanager
def _locked(lock_file: Path) -> Iterator[None]:
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_file, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _download_deb(dest: Path) -> Path:
    """``apt-get download dkms`` into ``dest`` unless a ``dkms_*.deb`` is already there."""
    existing = sorted(dest.glob(f"{UPSTREAM_PACKAGE}_*.deb"))
    if existing:
        return existing[-1]
    proc = subprocess.run(
        ["apt-get", "download", "-o", "APT::Sandbox::User=root", UPSTREAM_PACKAGE],
        cwd=dest,
        capture_output=True,
        text=True,
        check=False,
    )
    found = sorted(dest.glob(f"{UPSTREAM_PACKAGE}_*.deb"))
    if proc.returncode != 0 or not found:
        raise RuntimeError(
            f"'apt-get download {UPSTREAM_PACKAGE}' failed (exit {proc.returncode}) in {dest}:\n"
            f"{proc.stdout}{proc.stderr}\n"
            f"hint: run 'apt-get update' once, or set {UPSTREAM_DEB_ENV} to a dkms .deb file"
        )
    return found[-1]


def upstream_dkms(cache_dir: Optional[Path] = None) -> Path:
    """Return the path of an upstream ``usr/sbin/dkms`` script extracted from a Debian package.

    ``cache_dir`` defaults to :func:`default_cache_dir`. The package is ``$PYDKMS_UPSTREAM_DEB``
    if that names a .deb file, else bookworm's ``dkms`` fetched once with ``apt-get download``
    into ``<cache>/upstream`` (the first downloaded .deb is reused until the cache is cleared). It is unpacked with
    ``dpkg-deb -x`` into ``<cache>/upstream/<deb name>/`` and never installed or put on PATH.
    Safe to call concurrently (file lock).
    """
    base = (cache_dir or default_cache_dir()) / "upstream"
    base.mkdir(parents=True, exist_ok=True)
    override = os.environ.get(UPSTREAM_DEB_ENV)
    if override:
        deb = Path(override).resolve()
        if not deb.is_file():
            raise FileNotFoundError(f"{UPSTREAM_DEB_ENV}={override}: not a file")
    else:
        with _locked(base / ".download.lock"):
            deb = _download_deb(base)
    return extract_deb(deb, cache_dir)


# --------------------------------------------------------------------------------------------
# The sandbox


def installed_kernels() -> list[str]:
    """Kernel versions that have headers: ``/lib/modules/K/build`` exists (sorted)."""
    if not LIB_MODULES.is_dir():
        return []
    return sorted(p.name for p in LIB_MODULES.iterdir() if (p / "build").exists())


def _kernel_links() -> list[tuple[str, str, str]]:
    """(K, link name, target text) for every ``build``/``source`` symlink of the host's kernels."""
    links: list[tuple[str, str, str]] = []
    for kver in installed_kernels():
        for name in ("build", "source"):
            link = LIB_MODULES / kver / name
            if link.is_symlink():
                links.append((kver, name, os.readlink(link)))
    return links


def populate_lib_modules(root: Path) -> None:
    """Create ``root/K/build`` and ``root/K/source`` symlinks like the host's (existing ones kept)."""
    for kver, name, target in _kernel_links():
        (root / kver).mkdir(parents=True, exist_ok=True)
        link = root / kver / name
        if not link.is_symlink() and not link.exists():
            link.symlink_to(target)


_isolation_problem: Optional[str] = None
_isolation_checked = False


def isolation_unavailable() -> Optional[str]:
    """None if :func:`run_isolated` works here, else the reason (for ``pytest.skip``)."""
    global _isolation_checked, _isolation_problem
    if not _isolation_checked:
        _isolation_checked = True
        if os.geteuid() != 0:
            _isolation_problem = "run_isolated needs root (mount namespaces and tmpfs mounts)"
        elif shutil.which("unshare") is None:
            _isolation_problem = "run_isolated needs unshare(1) from util-linux"
        else:
            probe = subprocess.run(
                ["unshare", "-m", "--propagation", "private", "sh", "-c", "mount -t tmpfs probe /mnt"],
                capture_output=True,
                text=True,
                check=False,
            )
            if probe.returncode != 0:
                _isolation_problem = f"unshare -m does not work here: {probe.stderr.strip()}"
    return _isolation_problem


def _private_dir_script(
    path: Path, source: Optional[Path], state: Path, tag: str, *, read_only: bool = False
) -> str:
    """Shell lines that make ``path`` a private directory: ``source`` bound there, else empty tmpfs.

    If ``path`` does not exist on the host, its parent is covered by an overlay whose upper
    layer is a tmpfs, so the directory can be created without touching the host.
    ``read_only``: instead, the host's ``path`` itself (or that new empty one) becomes a
    read-only bind mount of itself, so any write to it fails.
    """
    q = shlex.quote
    p = q(str(path))
    ov = q(str(state / f"overlay-{tag}"))
    parent = q(str(path.parent))
    if read_only:
        mount = f"mount --bind {p} {p} && mount -o remount,ro,bind {p}"
    elif source:
        mount = f"mount --bind {q(str(source))} {p}"
    else:
        mount = f"mount -t tmpfs -o mode=0755 pydkms-{tag} {p}"
    return (
        f"if [ ! -d {p} ]; then\n"
        f"  mkdir -p {ov} && mount -t tmpfs pydkms-ov-{tag} {ov} && mkdir {ov}/upper {ov}/work\n"
        f"  mount -t overlay pydkms-ov-{tag} -o lowerdir={parent},upperdir={ov}/upper,workdir={ov}/work {parent}\n"
        f"  mkdir -p {p}\n"
        f"fi\n"
        f"{mount}\n"
    )


def overlay_script(path: Path, upper: Optional[Path], state: Path, tag: str) -> str:
    """Shell lines that cover ``path`` with an overlay: host content visible, writes go elsewhere.

    Writes land in ``upper/upper`` (persistent; ``upper/work`` is overlayfs' work dir) or, without
    ``upper``, in a tmpfs that disappears with the namespace.
    """
    q = shlex.quote
    p = q(str(path))
    if upper is not None:
        base = q(str(upper))
        prepare = f"mkdir -p {base}/upper {base}/work\n"
    else:
        base = q(str(state / f"overlay-{tag}"))
        prepare = (
            f"mkdir -p {base} && mount -t tmpfs pydkms-ov-{tag} {base} && mkdir {base}/upper {base}/work\n"
        )
    return (
        f"if [ -d {p} ]; then\n"
        f"  {prepare}"
        f"  mount -t overlay pydkms-ov-{tag} -o lowerdir={p},upperdir={base}/upper,workdir={base}/work {p}\n"
        f"fi\n"
    )


def run_isolated(
    argv: Sequence[StrPath],
    *,
    env: Optional[Mapping[str, Optional[str]]] = None,
    cwd: Optional[StrPath] = None,
    timeout: Optional[float] = 600,
    input: Optional[str] = None,
    lib_modules: Optional[Path] = None,
    var_lib_dkms: Optional[Path] = None,
    etc_dkms: Optional[Path] = None,
    usr_src: Optional[Path] = None,
    setup: Optional[str] = None,
    read_only_system: bool = False,
) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` in a private mount namespace that hides the host's dkms state.

    Needs root and ``unshare`` (util-linux); check :func:`isolation_unavailable` first.
    Inside the namespace (``unshare -m --propagation private``, so no mount leaks out):

    * ``/lib/modules`` is a tmpfs holding only ``K/build`` and ``K/source`` symlinks for every
      kernel with headers, or ``lib_modules`` (a host dir, populated the same way) bind-mounted;
      depmod and whatever else writes to ``/lib/modules/K`` stays private.
    * ``/var/lib/dkms`` and ``/etc/dkms`` are empty tmpfs mounts, or ``var_lib_dkms`` /
      ``etc_dkms`` bind-mounted (to keep a MOK key across runs, or to provide framework.conf
      and override files). If the host lacks the directory it is created on a tmpfs overlay of
      its parent, so both implementations always see the directory, and the host is never touched.
    * ``/usr/src`` is an overlay of the host's: kernel headers stay visible, anything written
      there (``dkms add`` from a path without ``--sourcetree``) goes to ``usr_src/upper`` if
      given (kept across calls), else to a throw-away tmpfs.
    * ``setup`` (sh code) runs after the mounts and before ``argv``.
    * ``read_only_system``: instead of all that, the host's real ``/lib/modules``, ``/var/lib/dkms``,
      ``/etc/dkms`` and ``/usr/src`` are read-only bind mounts of themselves (a missing one is an
      empty read-only directory on a tmpfs overlay of its parent): ``argv`` sees the real system
      and cannot change it (``lib_modules``, ``var_lib_dkms``, ``etc_dkms``, ``usr_src`` are ignored).

    Together ``lib_modules``, ``var_lib_dkms`` and ``usr_src`` allow running with upstream's
    default paths (no ``--dkmstree``/``--sourcetree``/``--installtree``) with persistent state.
    Everything else (``/tmp``, ``/boot``, ``/etc/os-release``) is the host's.

    ``env`` is applied on top of ``os.environ`` (a value of None removes the variable); ``LC_ALL``
    defaults to ``C``. Returns the completed process with text stdout/stderr; raises
    :class:`subprocess.TimeoutExpired` after killing the whole process group on timeout.
    """
    full_env = dict(os.environ)
    full_env["LC_ALL"] = "C"
    for key, value in (env or {}).items():
        if value is None:
            full_env.pop(key, None)
        else:
            full_env[key] = value
    if lib_modules is not None:
        lib_modules.mkdir(parents=True, exist_ok=True)
        populate_lib_modules(lib_modules)

    q = shlex.quote
    state = Path(tempfile.mkdtemp(prefix="pydkms-isolated-"))
    try:
        script = ["set -eu"]
        if read_only_system:
            for path in (LIB_MODULES, VAR_LIB_DKMS, ETC_DKMS, USR_SRC):
                tag = str(path).strip("/").replace("/", "-")
                script.append(_private_dir_script(path, None, state, tag, read_only=True))
        else:
            script.append(_private_dir_script(LIB_MODULES, lib_modules, state, "lib-modules"))
            if lib_modules is None:
                for kver, name, target in _kernel_links():
                    script.append(f"mkdir -p {q(str(LIB_MODULES / kver))}")
                    script.append(f"ln -s {q(target)} {q(str(LIB_MODULES / kver / name))}")
            script.append(_private_dir_script(VAR_LIB_DKMS, var_lib_dkms, state, "var-lib-dkms"))
            script.append(_private_dir_script(ETC_DKMS, etc_dkms, state, "etc-dkms"))
            script.append(overlay_script(USR_SRC, usr_src, state, "usr-src"))
        if setup:
            script.append(setup)
        script.append(f"cd {q(str(cwd))}" if cwd is not None else f"cd {q(os.getcwd())}")
        script.append('exec "$@"')
        cmd = [
            "unshare",
            "-m",
            "--propagation",
            "private",
            "sh",
            "-c",
            "\n".join(script),
            "pydkms-isolated",
            *(os.fspath(a) for a in argv),
        ]
        # Output goes to files, not pipes: upstream's progress-dot loop leaves an orphaned
        # `sleep 3` holding its stdout, and a pipe would make us wait for it.
        # (a name that is not UTF-8 reaches the output as its bytes: read them back as they are)
        with (
            tempfile.TemporaryFile(mode="w+", errors="surrogateescape") as out_f,
            tempfile.TemporaryFile(mode="w+", errors="surrogateescape") as err_f,
        ):
            proc = subprocess.Popen(
                cmd,
                stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
                stdout=out_f,
                stderr=err_f,
                text=True,
                env=full_env,
                cwd=str(state),
                start_new_session=True,
            )
            try:
                proc.communicate(input, timeout=timeout)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait()
                out_f.seek(0)
                err_f.seek(0)
                raise subprocess.TimeoutExpired(
                    cmd, timeout or 0, output=out_f.read(), stderr=err_f.read()
                ) from None
            out_f.seek(0)
            err_f.seek(0)
            out, err = out_f.read(), err_f.read()
        return subprocess.CompletedProcess([os.fspath(a) for a in argv], proc.returncode, out, err)
    finally:
        shutil.rmtree(state, ignore_errors=True)


# --------------------------------------------------------------------------------------------
# Scratch trees


@dataclass(frozen=True)
class ScratchTrees:
    """``--dkmstree``/``--sourcetree``/``--installtree`` directories under one root."""

    root: Path

    @property
    def dkms_tree(self) -> Path:
        return self.root / "dkms"

    @property
    def source_tree(self) -> Path:
        return self.root / "src"

    @property
    def install_tree(self) -> Path:
        return self.root / "modules"

    @classmethod
    def create(cls, root: Path, kernels: Optional[Sequence[str]] = None) -> ScratchTrees:
        """Create the three trees, with ``install_tree/K/`` for each kernel (default: all with headers).

        ``install`` refuses a kernel whose ``$install_tree/K`` does not exist, so the kernel
        directories are pre-created (empty; headers are still found through ``/lib/modules/K/build``).
        """
        trees = cls(root)
        for d in (trees.dkms_tree, trees.source_tree, trees.install_tree):
            d.mkdir(parents=True, exist_ok=True)
        for kver in installed_kernels() if kernels is None else kernels:
            (trees.install_tree / kver).mkdir(exist_ok=True)
        return trees

    def args(self) -> list[str]:
        """The command-line options that relocate all three trees."""
        return [
            "--dkmstree",
            str(self.dkms_tree),
            "--sourcetree",
            str(self.source_tree),
            "--installtree",
            str(self.install_tree),
        ]

    def replacements(self) -> dict[str, str]:
        """``replace`` mapping for :func:`snapshot_tree`: scratch paths → stable placeholders."""
        return {
            str(self.dkms_tree): "<DKMS_TREE>",
            str(self.source_tree): "<SOURCE_TREE>",
            str(self.install_tree): "<INSTALL_TREE>",
            str(self.root): "<ROOT>",
        }


@dataclass(frozen=True)
class PrivateSystem:
    """Host directories for :func:`run_isolated`, so state persists across calls with default paths.

    Run ``dkms add/build/install`` without tree options and inspect the result on the host:
    ``run_isolated(cmd, **system.isolation())`` then ``snapshot_tree(system.var_lib_dkms)``.
    """

    root: Path

    @property
    def lib_modules(self) -> Path:
        return self.root / "lib-modules"

    @property
    def var_lib_dkms(self) -> Path:
        return self.root / "var-lib-dkms"

    @property
    def etc_dkms(self) -> Path:
        return self.root / "etc-dkms"

    @property
    def usr_src(self) -> Path:
        """Overlay state; files added under /usr/src appear in ``usr_src/upper``."""
        return self.root / "usr-src"

    @classmethod
    def create(cls, root: Path) -> PrivateSystem:
        system = cls(root)
        for d in (system.lib_modules, system.var_lib_dkms, system.etc_dkms, system.usr_src):
            d.mkdir(parents=True, exist_ok=True)
        populate_lib_modules(system.lib_modules)
        return system

    def isolation(self) -> dict[str, Path]:
        """Keyword arguments for :func:`run_isolated`."""
        return {
            "lib_modules": self.lib_modules,
            "var_lib_dkms": self.var_lib_dkms,
            "etc_dkms": self.etc_dkms,
            "usr_src": self.usr_src,
        }


# --------------------------------------------------------------------------------------------
# Comparing trees


def _ignored(rel: str, patterns: Sequence[str]) -> bool:
    """True if a glob matches ``rel`` or any of its trailing component sequences.

    So ``modules.*`` matches ``6.1.0-56-amd64/modules.dep`` and ``log/*`` matches
    ``hello/1.0/K/x86_64/log/make.log``. ``*`` also matches ``/``.
    """
    parts = rel.split("/")
    tails = ["/".join(parts[i:]) for i in range(len(parts))]
    return any(fnmatch.fnmatchcase(tail, pat) for pat in patterns for tail in tails)


def _replace_prefixes(text: str, replace: Mapping[str, str]) -> str:
    for old in sorted(replace, key=len, reverse=True):
        if old:
            text = text.replace(old, replace[old])
    return text


def snapshot_tree(
    root: Path,
    replace: Optional[Mapping[str, str]] = None,
    ignore: Sequence[str] = (),
) -> dict[str, str]:
    """Describe the tree under ``root``: relative path → ``dir`` | ``file`` | ``symlink -> T``.

    Symlinks are not followed. In symlink targets every key of ``replace`` is replaced by its
    value (longest key first), e.g. ``{str(tmp_path): "<ROOT>"}``. Paths matching an ``ignore``
    glob (see :func:`_ignored`; :data:`DEFAULT_SNAPSHOT_IGNORE` is a good start) are left out,
    with everything below them. Keys are sorted (byte order); ``root`` itself is not listed.
    """
    replace = replace or {}
    result: dict[str, str] = {}

    def walk(directory: Path, prefix: str) -> None:
        try:
            entries = sorted(os.scandir(directory), key=lambda e: e.name.encode())
        except FileNotFoundError:
            return
        for entry in entries:
            rel = prefix + entry.name
            if _ignored(rel, ignore):
                continue
            if entry.is_symlink():
                result[rel] = "symlink -> " + _replace_prefixes(os.readlink(entry.path), replace)
            elif entry.is_dir():
                result[rel] = "dir"
                walk(Path(entry.path), rel + "/")
            else:
                result[rel] = "file"

    walk(root, "")
    return dict(sorted(result.items(), key=lambda kv: kv[0].encode()))


def format_snapshot(snapshot: Mapping[str, str]) -> str:
    """One ``path: kind`` line per entry, for printing and for readable assertion diffs."""
    return "\n".join(f"{path}: {kind}" for path, kind in snapshot.items())


# --------------------------------------------------------------------------------------------
# The spec's compatibility level: upstream 3.2.2 as packaged by Debian 13 (trixie)

TRIXIE_MIRROR = "http://deb.debian.org/debian"


def fetch_trixie_deb(cache_dir: Optional[Path] = None, mirror: str = TRIXIE_MIRROR) -> Path:
    """Download trixie's ``dkms`` .deb (upstream 3.2.x) into the cache and return its path.

    The file name is looked up in trixie's ``Packages`` index, so a point-release update is
    followed automatically. Raises ``OSError`` (URLError) when the mirror cannot be reached.
    """
    import lzma
    import urllib.request

    base = (cache_dir or default_cache_dir()) / "upstream-trixie"
    base.mkdir(parents=True, exist_ok=True)
    with _locked(base / ".lock"):
        existing = sorted(base.glob("dkms_*.deb"))
        if existing:
            return existing[-1]
        with urllib.request.urlopen(f"{mirror}/dists/trixie/main/binary-all/Packages.xz", timeout=60) as resp:
            index = lzma.decompress(resp.read()).decode("utf-8", "replace")
        filename = None
        for stanza in index.split("\n\n"):
            fields = dict(
                line.split(": ", 1)
                for line in stanza.splitlines()
                if ": " in line and not line.startswith(" ")
            )
            if fields.get("Package") == "dkms":
                filename = fields.get("Filename")
                break
        if not filename:
            raise RuntimeError("no dkms package in trixie's Packages index")
        dest = base / Path(filename).name
        tmp = base / f".{dest.name}.part"
        with urllib.request.urlopen(f"{mirror}/{filename}", timeout=120) as resp, open(tmp, "wb") as fh:
            shutil.copyfileobj(resp, fh)
        tmp.rename(dest)
        return dest


def extract_deb(deb: Path, cache_dir: Optional[Path] = None) -> Path:
    """Unpack ``deb`` once into the cache (never installed); return its ``usr/sbin/dkms``."""
    base = (cache_dir or default_cache_dir()) / "upstream"
    base.mkdir(parents=True, exist_ok=True)
    with _locked(base / ".lock"):
        root = base / deb.name[: -len(".deb")]
        script = root / "usr" / "sbin" / "dkms"
        if not script.is_file():
            staging = Path(tempfile.mkdtemp(prefix=".extract-", dir=base))
            try:
                subprocess.run(["dpkg-deb", "-x", str(deb), str(staging)], check=True, capture_output=True)
                if not (staging / "usr" / "sbin" / "dkms").is_file():
                    raise RuntimeError(f"{deb} contains no usr/sbin/dkms")
                if root.exists():
                    shutil.rmtree(root)
                staging.rename(root)
            finally:
                if staging.exists():
                    shutil.rmtree(staging)
        return script
