"""The build pipeline for one (module, version, kernel, arch) (spec/build-install.md §1)."""

from __future__ import annotations

import os
import shlex
import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import Dict, List, Optional

from . import COMPAT_VERSION, runner
from .errors import DkmsError
from .installer import discard
from .kernel import Kernel, compressed_or_uncompressed, module_suffix
from .moduleconf import ModuleConf
from .postprocess import StageInput
from .scripts import logged_step, run_script
from .session import Session
from .tree import Target
from .version import version_sort_key

APPORT = Path("/usr/share/apport/apport")
_PREPARE_LOCK = threading.Lock()
APPORT_HOOK = Path("/usr/share/apport/package-hooks/dkms_packages.py")


def make_command_line(conf: ModuleConf, jobs: str) -> str:
    """Replace a leading ``make`` by ``make -j<N> KERNELRELEASE=<K>`` (dkms-conf.md §7)."""
    cmd = conf.make_command
    if cmd.startswith("make"):
        n = "" if jobs == "0" else shlex.quote(jobs)
        return f"make -j{n} KERNELRELEASE={shlex.quote(conf.kernel)}" + cmd[4:]
    return cmd


def _report_problem(
    session: Session, m: str, v: str, k: str, code: int, message: str, hint: str = ""
) -> DkmsError:
    """Build failures with codes 5, 6, 7, 10 first run Ubuntu's crash-report hook, like upstream."""
    if os.access(APPORT, os.X_OK) and runner.which("python3"):
        try:
            runner.run(["python3", str(APPORT_HOOK), "-m", m, "-v", v, "-k", k])
        except DkmsError:
            pass
    return DkmsError(code, message, hint or None)


def prepare_kernel(session: Session, kernel: Kernel) -> None:
    """Once per (K, A) per process: header check (21), then the post-processing preparation."""
    if session.is_prepared(kernel.release, kernel.arch):
        return
    with _PREPARE_LOCK:  # concurrent builds for one kernel prepare it (and sign keys) once
        if session.is_prepared(kernel.release, kernel.arch):
            return
        _prepare(session, kernel)


def kernels_with_headers(install_tree: Path) -> List[str]:
    """The kernels under ``install_tree`` whose headers are installed, oldest first."""
    try:
        names = [n for n in os.listdir(install_tree) if not n.startswith(".")]
    except OSError:
        return []
    return sorted(
        (n for n in names if (install_tree / n / "build" / "include").is_dir()), key=version_sort_key
    )


def missing_headers(session: Session, kernel: Kernel) -> DkmsError:
    """The error (21) for a kernel whose headers are not installed, naming the kernels that have them."""
    it = session.settings.install_tree
    if session.options.kernel_source_dir is not None:
        return DkmsError(
            21,
            f"The kernel build directory {kernel.source_dir} given with --kernelsourcedir has no "
            f"include/ directory: it holds no kernel headers (for kernel {kernel.release}).",
            hint="Point --kernelsourcedir at the build directory of the kernel's headers.",
        )
    others = [k for k in kernels_with_headers(it) if k != kernel.release]
    if others:
        also = (
            f"These kernels have their headers installed: {', '.join(others)}; choose one with -k <kernel>."
        )
    else:
        also = f"No kernel under {it} has its headers installed."
    return DkmsError(
        21,
        f"Your kernel headers for kernel {kernel.release} cannot be found at "
        f"{it}/{kernel.release}/build or {it}/{kernel.release}/source.",
        hint=f"Install the linux-headers-{kernel.release} package, or point --kernelsourcedir at the "
        f"kernel build directory.\n{also}",
    )


def _prepare(session: Session, kernel: Kernel) -> None:
    if not kernel.headers_present():
        raise missing_headers(session, kernel)
    session.pipeline.prepare(kernel, session.console)
    session.mark_prepared(kernel.release, kernel.arch)


def _copy_tree(src: Path, dst: Path) -> None:
    """Copy the source into build/ preserving modes, times and links (reflink when possible)."""
    proc = runner.run(["cp", "-a", "--reflink=auto", f"{src}/.", str(dst)])
    if proc.returncode != 0:
        shutil.rmtree(dst, ignore_errors=True)
        raise DkmsError(1, f"Copying {src} to {dst} failed: {proc.stderr.decode(errors='replace').strip()}")


def check_build_depends(session: Session, conf: ModuleConf, target: Target) -> None:
    """Every BUILD_DEPENDS module must have some version installed on (K, A) (exit 13)."""
    missing = [
        d for d in conf.build_depends if session.tree.installed_version(d, target.kernel, target.arch) is None
    ]
    if not missing:
        return
    what = f"{conf.module}/{conf.version} for kernel {target.kernel} ({target.arch})"
    if session.options.force:
        session.console.warn(
            f"Building {what} although BUILD_DEPENDS are not installed: {' '.join(missing)}."
        )
        return
    raise DkmsError(
        13,
        f"Aborting build of {what}: BUILD_DEPENDS not installed: {' '.join(missing)}.",
        hint="Install those modules for this kernel first, or override with --force.",
    )


def build(session: Session, m: str, v: str, target: Target, *, replace: bool = False) -> int:
    """Build m/v for one target. Returns 0, 77 (excluded) or a script's status; raises DkmsError.

    ``replace`` (build --force): an existing K/A stays until the new build is committed in its
    place, so a failed rebuild leaves the previous good one (and an install that uses it) alone.
    """
    tree = session.tree
    console = session.console
    k, a = target.kernel, target.arch
    if not k or not a:
        raise DkmsError(16, "Empty kernel version or architecture.")
    final = tree.target_dir(m, v, k, a)
    if (final.exists() or final.is_symlink()) and not tree.is_built(m, v, k, a):
        # no module/ in it: what an interrupted build (ours or upstream's) leaves; not a build
        console.info(f"Removing {final}: left incomplete by an earlier build.")
        discard(final)
    if final.exists() and not replace:
        raise DkmsError(
            3,
            f"{m}/{v} has already been built for {k} ({a}): {final} exists.",
            hint="Use 'dkms unbuild' (or --force) before building again.",
        )
    suffix = module_suffix(session.settings.install_tree, k)
    kernel = session.kernel(k, a)
    conf = session.read_conf(m, v, kernel, strict=True)
    if conf.excluded:
        console.warn(
            f"{m}/{v} is not built for kernel {k} ({a}): its dkms.conf has a BUILD_EXCLUSIVE directive that "
            f"does not match ({'; '.join(conf.exclusion)})."
        )
        return 77
    source = tree.source_link(m, v)
    if len(tree.source_entries(m, v)) < 2:
        raise DkmsError(
            8,
            f"The directory {source} does not appear to contain module source (binaries only?). Build halted.",
        )
    prepare_kernel(session, kernel)
    build_env = kernel.detect_compiler()
    check_build_depends(session, conf, target)

    build_dir = tree.private_build_dir(m, v, k, a) if session.private_build else tree.build_dir(m, v)
    log = build_dir / "make.log"
    shutil.rmtree(build_dir, ignore_errors=True)
    build_dir.parent.mkdir(parents=True, exist_ok=True)
    build_dir.mkdir()
    _copy_tree(Path(os.path.realpath(source)), build_dir)
    with open(log, "w", encoding="utf-8", errors="surrogateescape") as fh:
        fh.write(f"DKMS ({COMPAT_VERSION}) make.log for {m}/{v} for kernel {k} ({a})\n")
        fh.write(time.strftime("%a %b %e %H:%M:%S %Z %Y") + "\n")
    env = session.command_env(build_env)

    for p in conf.patches:
        if "/../" in f"patches/{p}":
            raise _report_problem(
                session, m, v, k, 5, f"Patch {p} as specified in dkms.conf contains a '..' path component."
            )
        if not (build_dir / "patches" / p).exists():
            raise _report_problem(
                session,
                m,
                v,
                k,
                5,
                f"Patch {p} as specified in dkms.conf cannot be found in {build_dir}/patches/.",
            )
        status = logged_step(
            console,
            f"Applying patch {p}",
            f"patch -p1 < {shlex.quote(f'./patches/{p}')}",
            log=log,
            cwd=build_dir,
            env=env,
        )
        if status:
            raise _report_problem(
                session, m, v, k, 6, f"Applying patch {p} failed.", f"Consult {log} for details."
            )

    status = run_script("pre_build", conf.pre_build, build_dir, console, env, log)
    if status:
        raise DkmsError(
            status, f"The pre_build script of {m}/{v} failed for {k} ({a}).", f"Consult {log} for details."
        )

    command = make_command_line(conf, session.settings.parallel_jobs)
    if session.private_build:
        # MAKE commands name build/ (the default one does: M=$dkms_tree/m/v/build); this
        # concurrent build has its own directory instead
        shared = str(tree.build_dir(m, v))
        command = command.replace(shlex.quote(shared), shlex.quote(str(build_dir)))
        command = command.replace(shared, str(build_dir))
    status = logged_step(console, "Building module(s)", command, log=log, cwd=build_dir, env=env)
    if status:
        raise _report_problem(
            session,
            m,
            v,
            k,
            10,
            f"Bad return status for module build on kernel: {k} ({a})",
            f"Consult {log} for more information.",
        )
    for r in conf.records:
        if not (build_dir / f"{r.built_path}.ko").exists():
            raise _report_problem(
                session,
                m,
                v,
                k,
                7,
                f"Build of {r.built_path}.ko failed for: {k} ({a})",
                f"Make sure the name and location of the generated module are correct, or consult {log}.",
            )

    _stage_and_commit(session, conf, kernel, suffix, build_dir, final, build_env, replace=replace)

    status = run_script("post_build", conf.post_build, build_dir, console, env, log)
    if status:
        raise DkmsError(
            status, f"The post_build script of {m}/{v} failed for {k} ({a}).", f"Consult {log} for details."
        )
    (final / "log").mkdir(exist_ok=True)
    try:
        os.replace(log, final / "log" / "make.log")
    except OSError:
        pass
    shutil.rmtree(build_dir, ignore_errors=True)
    if session.private_build:
        # a serial build would have deleted the shared build/ too (step 17): same layout
        try:
            tree.build_dir(m, v).rmdir()
        except OSError:
            pass
    if conf.build_depends_rebuild and not session.options.force:
        write_dependency_records(session, conf, target)
    return 0


def _stage_and_commit(
    session: Session,
    conf: ModuleConf,
    kernel: Kernel,
    suffix: str,
    build_dir: Path,
    final: Path,
    build_env: Dict[str, str],
    *,
    replace: bool = False,
) -> None:
    """Steps 14-15: post-process into a hidden staging dir, then rename it to K/A atomically."""
    console = session.console
    kernel_dir = final.parent
    kernel_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".tmp_{kernel.arch}_", dir=kernel_dir))
    try:
        (staging / "log").mkdir()
        module_dir = staging / "module"
        module_dir.mkdir()
        symvers = build_dir / "Module.symvers"
        if symvers.is_file():
            shutil.copyfile(symvers, module_dir / "Module.symvers")
        for r in conf.records:
            built = build_dir / f"{r.built_path}.ko"
            if not built.is_file():
                console.warn(f"{built} has disappeared.")
                continue
            staged = module_dir / f"{r.dest_name}.ko"
            shutil.copy2(built, staged)
            result = session.pipeline.process(StageInput(staged, r, kernel, suffix, build_env), console)
            if result != staged and staged.exists() and result.exists():
                staged.unlink()
        for r in conf.records:
            if compressed_or_uncompressed(module_dir, r.dest_name, suffix) is None:
                raise DkmsError(7, f"Missing module '{r.dest_name}' in {module_dir}.")
        os.chmod(staging, 0o755)
        previous: Optional[Path] = None
        if final.exists():
            if not replace:
                raise DkmsError(3, f"{final} appeared while building; not replacing it.")
            previous = staging.with_name(f".old_{kernel.arch}_{os.getpid()}")
            shutil.rmtree(previous, ignore_errors=True)
            os.rename(final, previous)
        try:
            os.rename(staging, final)
        except OSError as exc:
            if previous is not None:
                os.rename(previous, final)
            raise DkmsError(7, f"Could not move the built module into {final}: {exc.strerror}.") from exc
        if previous is not None:
            shutil.rmtree(previous, ignore_errors=True)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def highest_known_version(session: Session, module: str) -> Optional[str]:
    """The highest version (version sort) of a module known to the tree, in any state."""
    tree = session.tree
    versions: List[str] = [
        v for v in tree.versions(module) if tree.is_added(module, v) or tree.is_broken(module, v)
    ]
    return max(versions, key=version_sort_key) if versions else None


def write_dependency_records(session: Session, conf: ModuleConf, target: Target) -> None:
    """BUILD_DEPENDS_REBUILD: record the highest known version of each dependency (dkms-conf.md §11)."""
    final = session.tree.target_dir(conf.module, conf.version, target.kernel, target.arch)
    for dep in conf.build_depends:
        best = highest_known_version(session, dep)
        if best is not None:
            (final / f".dep_{dep}").write_text(best + "\n")
