"""The Python API of pydkms: one function per lifecycle action (spec/cli.md §8).

The CLI is a thin layer over these. Every function takes a :class:`~pydkms.session.Session`,
works on one module/version and a list of targets, and returns the action's exit status
(aggregated over kernels as cli.md §7 says [fix D-02]); failures the user must see for one kernel
are printed and folded into that status, failures of the whole request raise DkmsError.
"""

from __future__ import annotations

import os
import shutil
from contextlib import nullcontext
from pathlib import Path
from typing import Callable, ContextManager, List, Optional, Sequence, Tuple

from . import builder, installer, runner
from .errors import DkmsError
from .installed import installed_file_missing
from .names import check_module_name, check_module_version, check_target
from .scripts import logged_step, run_script
from .session import Session
from .tree import Target


def aggregate(codes: Sequence[int]) -> int:
    """First non-zero code other than 77 in kernel order; else 77 if all were 77; else 0."""
    for c in codes:
        if c not in (0, 77):
            return c
    if codes and all(c == 77 for c in codes):
        return 77
    return 0


def _each_target(session: Session, targets: Sequence[Target], fn: Callable[[Target], int]) -> int:
    codes: List[int] = []
    for t in targets:
        try:
            code = fn(t)
        except DkmsError as exc:
            session.console.info("")
            session.console.failure(exc)
            code = exc.code
        codes.append(code)
    return _aggregate_targets(session, targets, codes)


def _aggregate_targets(session: Session, targets: Sequence[Target], codes: Sequence[int]) -> int:
    """:func:`aggregate`, after naming every failed kernel when there were several [fix D-02]."""
    failed = [f"{t.kernel} ({t.arch}): exit {c}" for t, c in zip(targets, codes) if c not in (0, 77)]
    if len(targets) > 1 and failed:
        session.console.error("failed for " + "; ".join(failed))
    return aggregate(codes)


# ---- checks shared by actions (cli.md §6) ------------------------------------------------------
def require_mv(m: Optional[str], v: Optional[str], action: str) -> None:
    """Module and version must both be given (exit 1) and be valid names (exit 3)."""
    if not m or not v:
        raise DkmsError(
            1,
            f"Invalid number of arguments passed: '{action}' needs a module and a version.",
            hint=f"Usage: dkms {action} <module>/<module-version> or -m <module> -v <module-version>",
        )
    check_module_version(m, v)


def check_request(m: str, v: str, targets: Sequence[Target]) -> None:
    """The names of a request, before any path is built from them: m/v (exit 3), K/A (16 if empty, else 2)."""
    check_module_name(m, "module name")
    check_module_name(v, "module version")
    for t in targets:
        if not t.kernel or not t.arch:
            raise DkmsError(16, "Empty kernel version or architecture.")
        check_target(t.kernel, t.arch)


def check_not_broken(session: Session, m: str, v: str) -> None:
    if session.tree.is_broken(m, v):
        raise DkmsError(
            4,
            f"{m}/{v} is broken: its source directory or the symbolic link pointing to it is missing.",
            hint=f"Manual intervention is required: re-create the source, or delete {session.tree.version_dir(m, v)}.",
        )


def check_added(session: Session, m: str, v: str) -> None:
    if not session.tree.is_added(m, v):
        raise DkmsError(3, f"The module/version combo {m}/{v} is not located in the DKMS tree.")


def check_root(action: str) -> None:
    if os.geteuid() != 0:
        raise DkmsError(1, f"You must be root to use the '{action}' action.")


def check_rw_dkms_tree(session: Session) -> None:
    d = session.settings.dkms_tree
    probe = d
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not os.access(probe, os.W_OK):
        raise DkmsError(1, f"No write access to the DKMS tree at {d}.", hint="Run as root.")


# ---- add ---------------------------------------------------------------------------------------
def add(
    session: Session,
    m: Optional[str],
    v: Optional[str],
    kernel: Target,
    *,
    source_path: Optional[Path] = None,
    archive: Optional[Path] = None,
) -> Tuple[str, str]:
    """``dkms add`` (cli.md §8.1); returns the module and version added. Raises DkmsError."""
    check_module_version(m, v)
    created: Optional[Path] = None
    try:
        if archive is not None and not m and not v:
            raise DkmsError(
                1,
                f"Adding from an archive ({archive}) is not supported by this version of pydkms yet.",
                hint="Unpack the archive into /usr/src/<module>-<version> and add it by name.",
            )
        if source_path is not None and not m and not v:
            m, v, created = _add_from_path(session, source_path, kernel)
        require_mv(m, v, "add")
        assert m and v
        _register(session, m, v, kernel)
        return m, v
    except BaseException:
        if created is not None:
            shutil.rmtree(created, ignore_errors=True)
        raise


def _add_from_path(session: Session, path: Path, target: Target) -> tuple[str, str, Optional[Path]]:
    tree = session.tree
    console = session.console
    real = Path(os.path.realpath(path))
    conf_file = real / "dkms.conf"
    if not conf_file.is_file():
        raise DkmsError(9, f"There is no dkms.conf in {real}.")
    check_root("add")
    kernel = session.kernel(target.kernel, target.arch)
    conf = session.confs.read("", "", kernel, conf_file, strict=True, report=console)
    m, v = conf.package_name, conf.package_version
    if tree.is_added(m, v) and not session.options.force:
        raise DkmsError(
            3,
            f"DKMS tree already contains {m}/{v}.",
            hint="You cannot add the same module/version combo more than once (use --force to replace its source).",
        )
    dest = tree.source_dir(m, v)
    created: Optional[Path] = None
    skip = {os.path.realpath(p) for p in (dest, tree.source_link(m, v), tree.build_dir(m, v))}
    if str(real) not in skip:
        if not os.path.lexists(dest):
            created = dest  # removed again if a later step fails [fix D-12]
        elif session.options.force:
            _delete_old_source(session, dest)
        dest.mkdir(parents=True, exist_ok=True)
        proc = runner.run(["cp", "-a", "--reflink=auto", f"{real}/.", str(dest)])
        if proc.returncode != 0:
            if created is not None:
                shutil.rmtree(created, ignore_errors=True)
            raise DkmsError(
                1, f"Copying {real} to {dest} failed: {proc.stderr.decode(errors='replace').strip()}"
            )
        console.info(f"Copied {real} to {dest}")
    return m, v, created


def _delete_old_source(session: Session, dest: Path) -> None:
    """``add --force`` from a path: the old ``$source_tree/m-v`` goes first.

    A symbolic link is removed, not what it points to (upstream's ``rm -rf`` does the same):
    the directory it names may be someone else's.
    """
    try:
        if dest.is_symlink() or not dest.is_dir():
            what = f"symbolic link {dest} -> {os.readlink(dest)}" if dest.is_symlink() else f"file {dest}"
            session.console.info(f"Removing the {what} (--force)")
            dest.unlink()
        else:
            shutil.rmtree(dest)
    except OSError as exc:
        raise DkmsError(
            1, f"Could not delete the old source {dest} to replace it (--force): {exc.strerror or exc}."
        ) from exc


def _register(session: Session, m: str, v: str, target: Target) -> None:
    """Steps 4-8 of cli.md §8.1."""
    tree = session.tree
    if session.options.rpm_safe_upgrade:
        _write_rpm_lock(session, m, v)
    if tree.is_added(m, v):
        raise DkmsError(
            3,
            f"DKMS tree already contains {m}/{v}.",
            hint="You cannot add the same module/version combo more than once.",
        )
    src = tree.source_dir(m, v)
    if not src.is_dir():
        raise DkmsError(2, f"Could not find module source directory {src}.")
    conf_path = session.options.conf or src / "dkms.conf"
    kernel = session.kernel(target.kernel, target.arch)
    conf = session.read_conf(m, v, kernel, strict=True, conf=conf_path)
    link = tree.source_link(m, v)
    session.console.info(f"Creating symlink {link} -> {src}")
    tree.build_dir(m, v).mkdir(parents=True, exist_ok=True)
    if link.is_symlink():
        link.unlink()
    installer.atomic_symlink(str(src), link)
    run_script("post_add", conf.post_add, link, session.console, session.command_env())


def _parent_of_parent_pid() -> int:
    try:
        with open(f"/proc/{os.getppid()}/status", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("PPid:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


def _process_start(pid: int) -> str:
    try:
        proc = runner.run(["ps", "-o", "lstart", "--no-headers", "-p", str(pid)])
    except DkmsError:
        return ""
    return proc.stdout.decode(errors="replace").strip() if proc.returncode == 0 else ""


def _write_rpm_lock(session: Session, m: str, v: str) -> None:
    import tempfile

    pppid = _parent_of_parent_pid()
    fd, _name = tempfile.mkstemp(
        prefix=f"dkms_rpm_safe_upgrade_lock.{pppid}.", dir=session.settings.tmp_location
    )
    with os.fdopen(fd, "w") as fh:
        fh.write(f"{m}-{v}\n")
        start = _process_start(pppid)
        if start:
            fh.write(start + "\n")


def _rpm_upgrade_in_progress(session: Session, m: str, v: str) -> bool:
    pppid = _parent_of_parent_pid()
    stamp = _process_start(pppid)
    for lock in sorted(session.settings.tmp_location.glob(f"dkms_rpm_safe_upgrade_lock.{pppid}.*")):
        try:
            lines = lock.read_text().splitlines()
        except OSError:
            continue
        if lines and lines[0] == f"{m}-{v}" and stamp and lines[-1] == stamp:
            lock.unlink()
            return True
    return False


def ensure_added(
    session: Session,
    m: Optional[str],
    v: Optional[str],
    target: Target,
    *,
    action: str,
    source_path: Optional[Path] = None,
) -> Tuple[str, str]:
    """The auto-add of build/install (cli.md §8.2): add unless m/v is already added."""
    if m and v and session.tree.is_added(m, v):
        return m, v
    if not (source_path is not None and not m and not v):
        require_mv(m, v, action)
    m, v = add(session, m, v, target, source_path=source_path)
    session.console.info("")
    return m, v


# ---- build / install -----------------------------------------------------------------------------
def _already(session: Session, m: str, v: str, t: Target, done: bool, what: str) -> bool:
    """True (after saying so) if m/v is already built/installed on t and --force was not given."""
    if done and not session.options.force:
        session.console.info(
            f"Module {m}/{v} already {what} for kernel {t.kernel} ({t.arch}), skip. "
            "You may override by specifying --force."
        )
        return True
    return False


def build_one(session: Session, m: str, v: str, t: Target) -> int:
    built = session.tree.is_built(m, v, t.kernel, t.arch)
    if _already(session, m, v, t, built, "built"):
        return 0
    # --force: the new build replaces K/A only once it succeeded
    return builder.build(session, m, v, t, replace=built)


def build(session: Session, m: str, v: str, targets: Sequence[Target]) -> int:
    """``dkms build``: every target; several targets are built at the same time (planner)."""
    check_request(m, v, targets)
    if len(targets) < 2:
        return _each_target(session, targets, lambda t: build_one(session, m, v, t))
    return _run_plan(session, m, v, targets, lambda s, t, _lock: build_one(s, m, v, t))


def install_one(session: Session, m: str, v: str, t: Target, commit: ContextManager[object]) -> int:
    """One-kernel install (cli.md §8.3); the build part runs outside ``commit``, the rest inside."""
    tree = session.tree
    installed = tree.is_installed(m, v, t.kernel, t.arch)
    missing = installed_file_missing(tree.target_dir(m, v, t.kernel, t.arch)) if installed else None
    if missing is not None:
        # e.g. an uninstall killed after deleting the file, before removing the kernel link
        session.console.info(
            f"Module {m}/{v} is installed for kernel {t.kernel} ({t.arch}), but {missing} is missing: "
            "installing it again."
        )
    elif _already(session, m, v, t, installed, "installed"):
        return 0
    if not installed and not tree.is_built(m, v, t.kernel, t.arch):
        status = builder.build(session, m, v, t)
        if status:
            return status
    with commit:
        if installed:
            installer.uninstall(session, m, v, t)
            session.console.info("")
        status = installer.install(session, m, v, t)
        if status == 0:
            rebuild_dependents(session, t)
    return status


def install(session: Session, m: str, v: str, targets: Sequence[Target]) -> int:
    """``dkms install``: every target (built concurrently when several), post_transaction on success."""
    check_request(m, v, targets)
    if len(targets) < 2:
        status = _each_target(session, targets, lambda t: install_one(session, m, v, t, nullcontext()))
    else:
        status = _run_plan(session, m, v, targets, lambda s, t, lock: install_one(s, m, v, t, lock))
    if status == 0:
        run_post_transaction(session, targets)
    return status


def _run_plan(
    session: Session,
    m: str,
    v: str,
    targets: Sequence[Target],
    one: Callable[[Session, Target, ContextManager[object]], int],
) -> int:
    """One m/v on several targets through the planner; aggregated like :func:`_each_target`."""
    from .planner import Executor, Job

    executor = Executor.for_session(session)
    jobs = [Job(m, v, t) for t in targets]
    outcomes = executor.run(jobs, lambda s, job: one(s, job.target, executor.commit_lock))
    codes = [outcomes[j].code for j in jobs]
    depmod_status = executor.run_deferred_depmod()
    status = _aggregate_targets(session, targets, codes)
    return status if status not in (0, 77) or not depmod_status else depmod_status


# ---- BUILD_DEPENDS_REBUILD (dkms-conf.md §11) -------------------------------------------------------
def stale_dependents(session: Session, t: Target) -> List[Tuple[str, str, Tuple[str, ...]]]:
    """m/v built on t whose BUILD_DEPENDS_REBUILD records differ from the tree (with their deps)."""
    tree = session.tree
    out: List[Tuple[str, str, Tuple[str, ...]]] = []
    if session.options.force:
        return out
    for m, v in tree.module_versions():
        if not tree.is_built(m, v, t.kernel, t.arch) or not tree.is_added(m, v):
            continue
        try:
            conf = session.confs.read(
                m, v, session.kernel(t.kernel, t.arch), session.conf_file(m, v), strict=False
            )
        except Exception:  # another module's conf, however broken, must not fail this install
            continue
        if not conf.build_depends_rebuild or not conf.build_depends:
            continue
        record_dir = tree.target_dir(m, v, t.kernel, t.arch)
        for dep in conf.build_depends:
            current = builder.highest_known_version(session, dep)
            if current is None:
                continue
            try:
                recorded: Optional[str] = (record_dir / f".dep_{dep}").read_text().strip()
            except OSError:
                recorded = None
            if recorded != current:
                out.append((m, v, tuple(conf.build_depends)))
                break
    return out


def rebuild_dependents(session: Session, t: Target) -> None:
    """After an install on t: rebuild (and reinstall if they were installed) stale dependents.

    Dependencies first; modules in a cycle are left alone with a warning; failures are reported and
    never change the status of the install that triggered the check [fix D-23].
    """
    stale = stale_dependents(session, t)
    if not stale:
        return
    from .planner import Job, simulate

    names = {m for m, _v, _d in stale}
    jobs = [Job(m, v, t, tuple(d for d in deps if d in names)) for m, v, deps in stale]
    console = session.console

    def rebuild(job: Job) -> int:
        m, v = job.module, job.version
        console.info("")
        console.info(f"Rebuilding module {m}/{v} for {t.kernel} ({t.arch}) because a dependency changed")
        console.info("")
        tree = session.tree
        was_installed = tree.is_installed(m, v, t.kernel, t.arch)
        try:
            if was_installed:
                installer.uninstall(session, m, v, t)
            installer.unbuild_target(session, m, v, t)
            status = builder.build(session, m, v, t)
            if status == 0 and was_installed:
                status = installer.install(session, m, v, t)
        except DkmsError as exc:
            console.failure(exc)
            status = exc.code
        if status not in (0, 77):
            console.warn(f"Rebuilding {m}/{v} for {t.kernel} ({t.arch}) failed (exit {status}).")
        return status

    _order, outcomes = simulate(jobs, rebuild, lambda _n, _t: True)
    cyclic = [f"{j.module}/{j.version}" for j, o in outcomes.items() if o.code < 0]
    if cyclic:
        console.warn(
            "These modules were not rebuilt because their BUILD_DEPENDS form a cycle: "
            + ", ".join(cyclic)
            + "."
        )


# ---- uninstall / unbuild / remove ----------------------------------------------------------------
def _not_installed(session: Session, m: str, v: str, t: Target) -> int:
    session.console.info(f"Module {m}/{v} is not installed for kernel {t.kernel} ({t.arch}). Skipping...")
    installer.recover_interrupted_install(session, m, v, t)
    return 0


def uninstall(session: Session, m: str, v: str, targets: Sequence[Target]) -> int:
    """``dkms uninstall`` on every target (post_transaction on success)."""
    check_request(m, v, targets)

    def one(t: Target) -> int:
        if not session.tree.is_installed(m, v, t.kernel, t.arch):
            return _not_installed(session, m, v, t)
        return installer.uninstall(session, m, v, t)

    status = _each_target(session, targets, one)
    if status == 0:
        run_post_transaction(session, targets)
    return status


def _unbuild_one(session: Session, m: str, v: str, t: Target) -> int:
    tree = session.tree
    if tree.is_installed(m, v, t.kernel, t.arch):
        installer.uninstall(session, m, v, t)
    else:
        _not_installed(session, m, v, t)
    if not tree.is_built(m, v, t.kernel, t.arch):
        session.console.info(f"Module {m}/{v} is not built for kernel {t.kernel} ({t.arch}). Skipping...")
        if os.path.lexists(tree.target_dir(m, v, t.kernel, t.arch)):
            installer.unbuild_target(session, m, v, t)  # an incomplete leftover: it goes too
        return 0
    installer.unbuild_target(session, m, v, t)
    return 0


def unbuild(session: Session, m: str, v: str, targets: Sequence[Target]) -> int:
    """``dkms unbuild`` on every target (post_transaction on success)."""
    check_request(m, v, targets)
    status = _each_target(session, targets, lambda t: _unbuild_one(session, m, v, t))
    if status == 0:
        run_post_transaction(session, targets)
    return status


def remove(session: Session, m: str, v: str, targets: Sequence[Target]) -> int:
    """build-install.md §7 (remove)."""
    check_request(m, v, targets)
    tree = session.tree
    vdir = tree.version_dir(m, v)
    for staging in vdir.glob("*/.tmp_*"):
        shutil.rmtree(staging, ignore_errors=True)
    for entry in list(vdir.iterdir()) if vdir.is_dir() else []:
        if entry.is_dir() and not entry.is_symlink():
            try:
                entry.rmdir()
            except OSError:
                pass
    if session.options.rpm_safe_upgrade and _rpm_upgrade_in_progress(session, m, v):
        session.console.error("Remove cancelled because --rpm_safe_upgrade scenario detected.")
        return 0

    def one(t: Target) -> int:
        code = _unbuild_one(session, m, v, t)
        session.console.info("")
        return code

    status = _each_target(session, targets, one)
    if status == 0:
        remaining = tree.kernel_entries(m, v)
        if not remaining:
            session.console.info(f"Deleting module {m}/{v} completely from the DKMS tree.")
            stub = tree.is_binaries_only_stub(m, v)
            installer.discard(vdir)
            if stub:
                shutil.rmtree(tree.source_dir(m, v), ignore_errors=True)
            mdir = tree.module_dir(m)
            for trash in mdir.glob(".removing-*"):  # left by a remove that was killed (we hold the lock)
                shutil.rmtree(trash, ignore_errors=True)
            try:
                mdir.rmdir()
            except OSError:
                pass
        run_post_transaction(session, targets)
    return status


# ---- post_transaction (framework-conf.md §6) -----------------------------------------------------
def run_post_transaction(session: Session, targets: Sequence[Target]) -> None:
    settings = session.settings
    if not settings.post_transaction:
        return
    log = session.tree.post_transaction_log()
    try:
        log.parent.mkdir(parents=True, exist_ok=True)
        log.write_text("")
    except OSError as exc:
        session.console.warn(f"Cannot write {log}: {exc.strerror}")
        return
    first = targets[0] if targets else Target("", "")
    command = settings.reread(["post_transaction"], first.kernel, first.arch)["post_transaction"]
    if not command:
        return
    env = session.command_env({"kernelver": first.kernel, "arch": first.arch})
    logged_step(
        session.console, "Executing post-transaction command", command, log=log, cwd=Path.cwd(), env=env
    )
