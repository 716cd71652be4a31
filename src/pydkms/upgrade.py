"""Kernel upgrades: autoinstall, kernel_postinst/preinst/prerm and match (autoinstall-hooks.md §1-3).

Every request becomes a plan of (module, version, kernel, arch) jobs for :mod:`pydkms.planner`:
modules build at the same time under one -j budget, dependents after their dependencies, installs
one at a time, depmod once per kernel. One broken module never stops the others [fix D-01].
"""

from __future__ import annotations

import dataclasses
import os
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Set, Tuple

from . import api, builder, installer, runner
from .cliargs import Invocation, resolve_targets
from .errors import DkmsError
from .failure import contained
from .kernel import installed_releases
from .moduleconf import ModuleConf
from .names import check_kernel_name, check_module_name
from .output import Console, join_words
from .planner import UNRESOLVED, Executor, Job, Outcome
from .session import Session
from .tree import Target
from .version import ver_greater


def run_action(session: Session, inv: Invocation) -> int:
    """Entry point of the CLI for the actions of this module (the tree lock is held)."""
    from .cli import default_arch_for, default_kernel

    action = inv.action
    api.check_root(action or "")
    if action in ("autoinstall", "match") and len(inv.kernels) > 1:
        raise DkmsError(
            4,
            f"The action {action} works on one kernel at a time ({len(inv.kernels)} given).",
            hint="Use --all-kernels for every kernel whose headers are installed.",
        )
    if inv.all_kernels:
        targets = kernels_with_headers(session)
        if not targets:
            session.console.info(
                f"No kernel under {session.settings.install_tree} has headers; nothing to do."
            )
            return 0
    else:
        pairs = resolve_targets(inv, default_kernel=default_kernel, default_arch=default_arch_for(session))
        targets = [Target(k, a) for k, a in pairs]
    if action in ("autoinstall", "kernel_postinst"):
        return autoinstall(session, targets)
    if action in ("kernel_prerm", "kernel_preinst"):
        return kernel_remove(session, targets[0], preinst=action == "kernel_preinst")
    assert action == "match"
    return match(session, inv.template_kernel or "", targets[0], inv.module or None)


def kernels_with_headers(session: Session) -> List[Target]:
    """``--all-kernels``: every kernel under the install tree whose headers are installed."""
    from .cli import default_arch_for

    names = installed_releases(session.settings.install_tree, session.report_skipped)
    arch = default_arch_for(session)
    targets = [Target(k, arch(k)) for k in names]
    return [t for t in targets if session.kernel(t.kernel, t.arch).headers_present()]


# ---- autoinstall ------------------------------------------------------------------------------------
@dataclass
class KernelReport:
    """What autoinstall did on one (K, A) (the summary of spec §1.7)."""

    target: Target
    newly: List[str] = field(default_factory=list)
    already: List[str] = field(default_factory=list)
    skipped: List[str] = field(default_factory=list)
    no_source: List[str] = field(default_factory=list)
    failed: List[Tuple[str, int]] = field(default_factory=list)
    unresolved: List[Tuple[str, Tuple[str, ...]]] = field(default_factory=list)
    logs: List[str] = field(default_factory=list)


def latest_versions(session: Session) -> Dict[str, str]:
    """Per module (first appearance, byte order) its latest added version; broken entries reported."""
    tree = session.tree
    latest: Dict[str, str] = {}
    for m, v in tree.module_versions():
        try:
            broken = tree.is_broken(m, v)
            added = broken or tree.is_added(m, v)
        except Exception as exc:  # one module that cannot be looked at must not stop the others
            _report_contained(session.console, exc, f"{m}/{v}", "it is skipped")
            continue
        if broken:
            session.console.error(
                f"{m}/{v} is broken: its source directory or the symbolic link pointing to it is missing. "
                "Manual intervention is required; it is skipped."
            )
            continue
        if not added:
            continue
        if m not in latest or ver_greater(v, latest[m]):
            latest[m] = v
    return latest


def autoinstall(session: Session, targets: Sequence[Target]) -> int:
    """``dkms autoinstall`` / ``kernel_postinst`` on every target (exit 0, 11 or 21)."""
    console = session.console
    if (session.settings.etc_dir / "no-autoinstall").exists():
        console.info("Automatic installation of modules has been disabled.")
        return 0
    tree = session.tree
    latest = latest_versions(session)
    reports: Dict[Target, KernelReport] = {t: KernelReport(t) for t in targets}
    jobs: List[Job] = []
    for t in targets:
        report = reports[t]
        queued: List[Job] = []
        for m, v in latest.items():
            try:
                job = _autoinstall_job(session, report, m, v, t)
            except Exception as exc:  # one bad module never stops the others [fix D-01]
                code = _report_contained(console, exc, f"{m}/{v}")
                report.failed.append((m, code))
                continue
            if job is not None:
                queued.append(job)
        if any(not tree.is_built(j.module, j.version, t.kernel, t.arch) for j in queued):
            kernel = session.kernel(t.kernel, t.arch)
            if not kernel.headers_present():
                console.failure(builder.missing_headers(session, kernel))
                console.notice(f"Modules not built for {t.kernel} yet are not attempted.")
                for j in list(queued):
                    if not tree.is_built(j.module, j.version, t.kernel, t.arch):
                        report.failed.append((j.module, 21))
                        queued.remove(j)
        jobs.extend(queued)
    if not jobs and not any(r.failed for r in reports.values()):
        return 0

    already: Dict[Target, Set[str]] = {
        t: {mv.split("/", 1)[0] for mv in r.already} for t, r in reports.items()
    }
    executor = Executor.for_session(session)

    def work(js: Session, job: Job) -> int:
        return api.install_one(js, job.module, job.version, job.target, executor.commit_lock)

    def header(job: Job) -> str:
        t = job.target
        return f"Autoinstall of module {job.module}/{job.version} for kernel {t.kernel} ({t.arch})"

    outcomes = executor.run(
        jobs, work, satisfied=lambda name, t: name in already.get(t, set()), header=header, trailer=""
    )
    depmod_status = executor.run_deferred_depmod()
    for job in jobs:
        _record(session, reports[job.target], job, outcomes[job])
    for t in targets:
        _summary(session, reports[t])
    if any(r.newly for r in reports.values()):
        api.run_post_transaction(session, [t for t in targets if reports[t].newly])
    failures = [c for r in reports.values() for _m, c in r.failed]
    unresolved = any(r.unresolved for r in reports.values())
    if depmod_status:
        failures.append(depmod_status)
    if not failures and not unresolved:
        return 0
    if failures and all(c == 21 for c in failures) and not unresolved:
        return 21
    raise DkmsError(
        11,
        "One or more modules failed to install during autoinstall.",
        hint="Refer to the messages above (and the make.log files named there) for the reasons.",
    )


def _report_contained(console: Console, exc: BaseException, subject: str, then: str = "") -> int:
    """Report a failure of one module (``--debug``: with its traceback); returns its exit status."""
    if runner.DEBUG and not isinstance(exc, DkmsError):
        console.raw(traceback.format_exc(), True)
    error = contained(exc, subject)
    if then:
        error = DkmsError(error.code, f"{error.message.rstrip('.')}; {then}.", error.hint)
    console.failure(error)
    return error.code


def _autoinstall_job(session: Session, report: KernelReport, m: str, v: str, t: Target) -> Optional[Job]:
    """The job autoinstall queues for m/v on t, or None (already installed, not AUTOINSTALL, no source)."""
    tree = session.tree
    if tree.is_installed(m, v, t.kernel, t.arch):
        report.already.append(f"{m}/{v}")
        return None
    conf = session.read_conf(m, v, session.kernel(t.kernel, t.arch), strict=False)
    if not conf.autoinstall:
        return None
    built = tree.is_built(m, v, t.kernel, t.arch)
    if not built and tree.is_binaries_only_stub(m, v):
        report.no_source.append(f"{m}/{v}")
        return None
    return Job(m, v, t, conf.build_depends)


def _record(session: Session, report: KernelReport, job: Job, outcome: Outcome) -> None:
    mv = f"{job.module}/{job.version}"
    if outcome.code == 0:
        report.newly.append(mv)
    elif outcome.code == 77:
        report.skipped.append(mv)
    elif outcome.code == UNRESOLVED:
        report.unresolved.append((mv, outcome.missing))
    else:
        report.failed.append((job.module, outcome.code))
        t = job.target
        tree = session.tree
        for d in (
            tree.private_build_dir(job.module, job.version, t.kernel, t.arch),
            tree.build_dir(job.module, job.version),
        ):
            if (d / "make.log").is_file():
                report.logs.append(f"{mv}: {d / 'make.log'}")
                break


def _summary(session: Session, r: KernelReport) -> None:
    console = session.console
    k = r.target.kernel
    if r.newly:
        console.info(f"Autoinstall on {k} succeeded for module(s) {' '.join(r.newly)}.")
    if r.already:
        console.info(
            f"Autoinstall on {k}: already installed, nothing to do for module(s) {' '.join(r.already)}."
        )
    if r.skipped:
        console.info(f"Autoinstall on {k} was skipped for module(s) {' '.join(r.skipped)}.")
    if r.no_source:
        console.info(
            f"Autoinstall on {k} was skipped for module(s) {' '.join(r.no_source)}: binaries only, no source to build."
        )
    if r.failed:
        console.info(f"Autoinstall on {k} failed for module(s) {' '.join(f'{m}({c})' for m, c in r.failed)}.")
        for line in r.logs:
            console.info(f"  build log of {line}")
    for mv, missing in r.unresolved:
        console.info(f"{mv} autoinstall failed due to missing dependencies: {' '.join(missing)}.")


# ---- kernel_prerm / kernel_preinst ------------------------------------------------------------------
def kernel_remove(session: Session, t: Target, *, preinst: bool) -> int:
    """Uninstall and unbuild every module built for (K, A) before the kernel goes (spec §2.2, §2.3)."""
    s = dataclasses.replace(session, options=dataclasses.replace(session.options, delayed_depmod=True))
    tree = s.tree
    console = s.console
    k, a = t.kernel, t.arch
    failed: List[str] = []
    for m, v in tree.module_versions():
        try:
            if not tree.is_built(m, v, k, a):
                continue
            conf = None
            if preinst:
                conf = s.read_conf(m, v, s.kernel(k, a), strict=False)
                if not conf.autoinstall:
                    continue
        except Exception as exc:  # one module never stops the others
            failed.append(f"{m}/{v}({_report_contained(console, exc, f'{m}/{v}')})")
            continue
        console.notice(f"dkms: removing module {m}/{v} for kernel {k} ({a})")
        try:
            _remove_build(s, m, v, t, conf)
        except Exception as exc:
            failed.append(f"{m}/{v}({_report_contained(console, exc, f'{m}/{v}')})")
    pending = tree.depmod_pending(k, a)
    if pending.exists():
        pending.unlink()
        installer.depmod_now(session, k, a)
    kdir = s.settings.install_tree / k
    if kdir.is_dir():
        _delete_empty_dirs_below(kdir)
    if failed:
        raise DkmsError(
            14,
            f"dkms {'kernel_preinst' if preinst else 'kernel_prerm'} for kernel {k} ({a}) failed for module(s) {' '.join(failed)}.",
        )
    return 0


def _remove_build(s: Session, m: str, v: str, t: Target, conf: Optional[ModuleConf]) -> None:
    tree = s.tree
    try:
        if tree.is_installed(m, v, t.kernel, t.arch):
            installer.uninstall(s, m, v, t, conf=conf)
        installer.unbuild_target(s, m, v, t)
    except Exception as exc:
        unexpected = not isinstance(exc, DkmsError)
        if conf is not None or not (unexpected or getattr(exc, "code", 0) in (4, 8)):
            raise
        # the conf is unusable (or reading it failed in a way nobody foresaw): work from the built
        # files [fix D-17]
        reason = contained(exc, f"{m}/{v}").message if unexpected else getattr(exc, "message", str(exc))
        s.console.warn(
            f"The dkms.conf of {m}/{v} cannot be read ({reason}); removing it using its built files."
        )
        installer.uninstall_from_files(s, m, v, t)
        installer.unbuild_target(s, m, v, t)


def _delete_empty_dirs_below(root: Path) -> None:
    for dirpath, _dirs, _files in sorted(os.walk(root), key=lambda e: -len(e[0])):
        if dirpath == str(root):
            continue
        try:
            os.rmdir(dirpath)
        except OSError:
            pass


# ---- match ------------------------------------------------------------------------------------------------
def match(session: Session, template: str, t: Target, module: Optional[str]) -> int:
    """Install on (K, A) every module installed on the template kernel (spec §3) [fix D-07]."""
    console = session.console
    tree = session.tree
    if not template:
        raise DkmsError(1, "The match action needs a template kernel: --templatekernel=<kernel>.")
    check_kernel_name(template, "template kernel version")
    if template == t.kernel:
        raise DkmsError(2, f"The template kernel and the target kernel are the same ({template}).")
    if module:
        check_module_name(module, "module name")
    if module and not tree.module_dir(module).is_dir():
        raise DkmsError(3, f"The module {module} is not located in the DKMS tree.")
    entries = [
        (m, v)
        for m, v in tree.module_versions(module or None)
        if tree.is_installed(m, v, template, t.arch) or tree.is_broken(m, v)
    ]
    console.info(
        f"Matching modules in kernel {t.kernel} ({t.arch}) to the configuration of {template} ({t.arch})."
    )
    good = []
    for m, v in entries:
        if tree.is_broken(m, v):
            console.error(f"{m}/{v} is broken (source missing); it is skipped.")
        else:
            good.append((m, v))
    if not good:
        console.info(f"There is nothing to be done: no module is installed on {template} ({t.arch}).")
        return 0
    if any(not tree.is_built(m, v, t.kernel, t.arch) for m, v in good):
        builder.prepare_kernel(session, session.kernel(t.kernel, t.arch))
    executor = Executor.for_session(session)

    def work(js: Session, job: Job) -> int:
        status = api.build_one(js, job.module, job.version, t)
        if status:
            return status
        if js.tree.is_installed(job.module, job.version, t.kernel, t.arch):
            return 0
        with executor.commit_lock:
            status = installer.install(js, job.module, job.version, t)
        if status == 0:
            newly.append(job)
        return status

    newly: List[Job] = []
    jobs = [Job(m, v, t) for m, v in good]
    outcomes = executor.run(jobs, work)
    depmod_status = executor.run_deferred_depmod()
    codes = [outcomes[j].code for j in jobs]
    failed = [f"{j.module}/{j.version}({c})" for j, c in zip(jobs, codes) if c not in (0, 77)]
    if failed:
        console.error(f"match failed for {join_words(failed)}.")
    if newly:
        api.run_post_transaction(session, [t])
    status = api.aggregate(codes)
    return status if status or not depmod_status else depmod_status
