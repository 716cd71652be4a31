"""The ``dkms`` command: parse, lock, dispatch to :mod:`pydkms.api`, print.

Errors end here: a :class:`~pydkms.errors.DkmsError` becomes one message on stderr and its exit
code; a traceback is printed only with ``--debug``.
"""

from __future__ import annotations

import dataclasses
import io
import os
import signal
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Callable, List, Optional, Sequence, Tuple

from . import COMPAT_VERSION, __version__, framework, runner
from .cliargs import (
    CommandLineError,
    Invocation,
    help_text,
    pair_kernels_arches,
    parse_args,
    prescan_framework_files,
    resolve_targets,
    usage,
)
from .errors import DkmsError
from .failure import describe_os_error
from .output import Console
from .session import SCRUBBED_ENV, Options, Session
from .tree import Target

if TYPE_CHECKING:
    from .lock import TreeLock

MV_ACTIONS = ("add", "build", "install", "uninstall", "unbuild", "remove")
#: actions of the kernel-upgrade machinery (autoinstall-hooks.md §1-3), in :mod:`pydkms.upgrade`
UPGRADE_ACTIONS = ("autoinstall", "kernel_preinst", "kernel_postinst", "kernel_prerm", "match")
#: key management and re-signing (build-install.md §3, autoinstall-hooks.md §4), in :mod:`pydkms.signing`
SIGNING_ACTIONS = ("generate_mok", "sign")
IMPLEMENTED = (*MV_ACTIONS, *UPGRADE_ACTIONS, *SIGNING_ACTIONS, "status")


def default_kernel() -> str:
    return os.uname().release


def default_arch_for(session: Session) -> Callable[[str], str]:
    def arch(first_kernel: str) -> str:
        machine = os.uname().machine
        if session.family.uses_uname_arch:
            return machine
        kdir = session.settings.install_tree / first_kernel
        try:
            owner = runner.run(["rpm", "-qf", str(kdir)])
            names = [n for n in owner.stdout.decode(errors="replace").split() if "kernel" in n]
            if owner.returncode == 0 and names:
                q = runner.run(["rpm", "-q", "--queryformat", "%{ARCH}", names[0]])
                value = q.stdout.decode(errors="replace").strip()
                if q.returncode == 0 and value:
                    return value
        except DkmsError:
            pass
        if machine == "x86_64":
            try:
                cpu = Path("/proc/cpuinfo").read_text(errors="replace")
                configs = os.listdir(kdir / "build" / "configs")
                if "Intel" in cpu and any("ia32e" in c for c in configs):
                    return "ia32e"
            except OSError:
                pass
        return machine

    return arch


def _print_usage(console: Console, to_stderr: bool) -> None:
    text = usage("dkms")
    if to_stderr:
        console.notice(text.rstrip("\n"))
    else:
        console.info(text.rstrip("\n"))


def _silence_fds(keep_stdout: bool = False) -> None:
    """``-q``: discard stdout and stderr from here on, for us and for every child process.

    ``keep_stdout``: ``status -q --json`` still prints the document; it is the data the user
    asked for, not the human text ``-q`` hides.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    devnull = os.open(os.devnull, os.O_WRONLY)
    if not keep_stdout:
        os.dup2(devnull, 1)
    os.dup2(devnull, 2)
    os.close(devnull)


def _session(inv: Invocation, console: Console) -> Session:
    # status only reads, and goes on without a framework file it cannot read; the others stop
    settings = framework.load(inv.framework_files, strict=inv.action != "status")
    settings = framework.with_cli(
        settings,
        dkms_tree=inv.dkms_tree,
        source_tree=inv.source_tree,
        install_tree=inv.install_tree,
        verbose=inv.verbose,
        symlink_modules=inv.symlink_modules,
        modprobe_on_install=inv.modprobe_on_install,
        jobs=inv.jobs or None,
    )
    console.verbose = settings.verbose
    options = Options(
        force=inv.force,
        force_version_override=inv.force_version_override,
        no_depmod=inv.no_depmod,
        rpm_safe_upgrade=inv.rpm_safe_upgrade,
        kernel_source_dir=inv.kernel_source_dir,
        kernel_config=inv.kernel_config,
        conf=inv.conf,
        directives=inv.directives,
    )
    return Session(settings=settings, options=options, console=console)


def run_status(session: Session, inv: Invocation) -> int:
    from .status import StatusReader, passes_for, render_json, render_text

    passes: List[Tuple[Optional[str], Optional[str]]]
    if inv.kernels:
        passes = [(k, a) for k, a in pair_kernels_arches(inv.kernels, inv.arches)]
    else:
        passes = passes_for((), inv.arches)
    per_pass = StatusReader(session).entries(inv.module, inv.version, passes)
    if inv.json:
        render_json(session, per_pass)
    else:
        render_text(session, per_pass)
    return 0


def run_mv_action(session: Session, inv: Invocation) -> int:
    from . import api

    action = inv.action
    assert action is not None
    tree = session.tree
    m, v = inv.module or None, inv.version or None
    if action in ("remove", "unbuild", "uninstall"):
        api.require_mv(m, v, action)
        assert m and v
        api.check_not_broken(session, m, v)
        api.check_added(session, m, v)
        if action == "uninstall":
            api.check_root(action)
        else:
            api.check_rw_dkms_tree(session)
    elif action in ("build", "install"):
        if m and v:
            api.check_not_broken(session, m, v)
        if action == "install":
            api.check_root(action)
        else:
            api.check_rw_dkms_tree(session)
    else:
        api.check_rw_dkms_tree(session)

    def built() -> List[tuple[str, str]]:
        assert m and v
        return [(t.kernel, t.arch) for t in tree.all_targets(m, v)]

    if action == "remove" and not inv.kernels and not inv.arches and not inv.all:
        # `dkms remove m/v` means "remove m/v": every kernel it is built for, said out loud
        # (upstream and spec P-01 act on the running kernel only; issue 2 asks for this).
        assert m and v
        inv = dataclasses.replace(inv, all=True)
        names = ", ".join(f"{k} ({a})" for k, a in built()) or "none"
        session.console.info(f"No kernel given: removing {m}/{v} from every kernel it is built for: {names}.")
    pairs = resolve_targets(
        inv, default_kernel=default_kernel, default_arch=default_arch_for(session), built_targets=built
    )
    targets = [Target(k, a) for k, a in pairs]
    if inv.all_kernels:
        from .upgrade import kernels_with_headers

        targets = kernels_with_headers(session)
        if not targets:
            raise DkmsError(21, f"No kernel under {session.settings.install_tree} has its headers installed.")
    first = targets[0] if targets else Target(default_kernel(), default_arch_for(session)(default_kernel()))
    if action == "add":
        api.add(session, m, v, first, source_path=inv.source_path, archive=inv.archive)
        return 0
    if action in ("build", "install"):
        if inv.archive is not None and not m and not v:
            raise DkmsError(
                1, f"Loading archives ({inv.archive}) is not supported by this version of pydkms yet."
            )
        m, v = api.ensure_added(session, m, v, first, action=action, source_path=inv.source_path)
        api.check_not_broken(session, m, v)
        if action == "build":
            return api.build(session, m, v, targets)
        return api.install(session, m, v, targets)
    assert m and v
    if action == "uninstall":
        return api.uninstall(session, m, v, targets)
    if action == "unbuild":
        return api.unbuild(session, m, v, targets)
    return api.remove(session, m, v, targets)


def _traceback_if(debug: bool) -> None:
    """With ``--debug``, the traceback of the exception being handled."""
    if debug:
        import traceback

        traceback.print_exc()


class Terminated(BaseException):
    """SIGTERM: unwind like Ctrl-C, so that a half-done install is rolled back and make is stopped."""


def _terminate(_signum: int, _frame: object) -> None:
    raise Terminated()


def main(argv: Optional[Sequence[str]] = None) -> int:
    """The ``dkms`` command; returns its exit status."""
    if threading.current_thread() is not threading.main_thread():
        return _main(argv)
    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        return _main(argv)
    except Terminated:  # before or after the action's own handling
        return 143
    finally:
        signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)


def _raw_bytes_out() -> None:
    """Names that are not UTF-8 are printed as the bytes they are, as upstream does, whatever the locale.

    Python keeps such bytes as lone surrogates; in a UTF-8 locale its streams would refuse them.
    """
    for stream in (sys.stdout, sys.stderr):
        if isinstance(stream, io.TextIOWrapper) and stream.errors != "surrogateescape":
            stream.reconfigure(errors="surrogateescape")


def _main(argv: Optional[Sequence[str]]) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    _raw_bytes_out()
    for name in SCRUBBED_ENV:
        os.environ.pop(name, None)
    console = Console()
    debug = "--debug" in args
    runner.DEBUG = debug
    try:
        prescan_framework_files(args)
        inv = parse_args(args)
    except CommandLineError as exc:
        if not exc.quiet:
            for n in exc.notices:
                console.notice(n.text)
            console.error(str(exc))
            if exc.show_usage:
                _print_usage(console, to_stderr=True)
        return exc.code
    except DkmsError as exc:
        console.failure(exc)
        return exc.code
    for n in inv.notices:
        if n.before_quiet:
            console.notice(n.text)
    if inv.show_version:
        console.info(COMPAT_VERSION)
        return 0
    if inv.show_help:
        console.info(f"pydkms {__version__} (compatible with {COMPAT_VERSION})")
        console.info(help_text(inv.action))
        return 0
    if inv.quiet:
        _silence_fds(keep_stdout=inv.json and inv.action == "status")
    for n in inv.notices:
        if not n.before_quiet:
            console.notice(n.text)
    lock: Optional[TreeLock] = None
    try:
        session = _session(inv, console)
        if inv.action == "status":
            return run_status(session, inv)
        if inv.action not in IMPLEMENTED:
            raise DkmsError(1, f"The '{inv.action}' action is not implemented by this version of pydkms yet.")
        if inv.action == "generate_mok":
            from . import signing

            return signing.run_generate_mok(session, inv)
        from .lock import TreeLock

        lock = TreeLock(session.settings.dkms_tree, session.tree.lock_file())
        lock.acquire(console.notice)
        if inv.action in UPGRADE_ACTIONS:
            from . import upgrade

            return upgrade.run_action(session, inv)
        if inv.action == "sign":
            from . import signing

            return signing.run_sign(session, inv)
        return run_mv_action(session, inv)
    except DkmsError as exc:
        _traceback_if(debug)
        console.failure(exc)
        return exc.code
    except KeyboardInterrupt:
        runner.kill_running()
        console.error("Interrupted.")
        return 130
    except Terminated:
        runner.kill_running()
        console.error("Terminated.")
        return 143
    except OSError as exc:
        # the system said no (disk full, read-only, permissions) where no step expected it
        _traceback_if(debug)
        console.error(describe_os_error(exc))
        return 1
    except Exception:
        _traceback_if(debug)
        if not debug:
            exc_type, value, _tb = sys.exc_info()
            console.error(
                f"internal error: {exc_type.__name__ if exc_type else 'unknown'}: {value} (run with --debug for a traceback)"
            )
        return 1
    finally:
        if lock is not None:
            lock.release()


if __name__ == "__main__":
    sys.exit(main())
