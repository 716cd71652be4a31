"""Install, uninstall, unbuild and remove for one kernel (spec/build-install.md §4, §5, §7).

Every change is made so that a crash leaves either the old or the new state: module files are
written under a temporary name in their directory and renamed; the kernel link is replaced by
renaming a new link over it, last; an original in-tree module is moved (same filesystem rename
when possible) before anything replaces it and its origin is recorded first.
"""

from __future__ import annotations

import errno
import glob
import os
import shutil
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

from . import kernel as kernel_mod
from . import runner
from .errors import DkmsError
from .failure import describe_os_error
from .installed import (
    FingerprintEntry,
    fingerprint_for,
    fingerprinted_install,
    locate_installed,
    remove_fingerprint,
    same_contents,
    write_fingerprint,
)
from .kernel import built_module_files, compressed_or_uncompressed, module_suffix
from .modinfo import version_info
from .moduleconf import ModuleConf, ModuleRecord, is_obsolete
from .scripts import run_script
from .session import Session
from .tree import Target
from .version import ver

FORCE_INSTALL_DIR = Path("/usr/share/dkms/modules_to_force_install")


# ---- small atomic file operations --------------------------------------------------------------
def atomic_symlink(target: str, link: Path) -> None:
    """Create or replace ``link`` -> ``target`` atomically."""
    tmp = link.parent / f".{link.name}.pydkms-{os.getpid()}"
    try:
        os.unlink(tmp)
    except OSError:
        pass
    os.symlink(target, tmp)
    os.replace(tmp, link)


def atomic_copy(src: Path, dest: Path) -> None:
    """Copy ``src`` to ``dest`` (mode of the source) through a temporary file in dest's directory."""
    tmp = dest.parent / f".{dest.name}.pydkms-{os.getpid()}"
    try:
        shutil.copyfile(src, tmp)
        shutil.copymode(src, tmp)
        os.replace(tmp, dest)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def move_file(src: Path, dest: Path) -> None:
    """Move a file, atomically when on the same filesystem (copy to temp + rename otherwise)."""
    try:
        os.replace(src, dest)
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise
        atomic_copy(src, dest)
        os.unlink(src)


# ---- install -------------------------------------------------------------------------------------
def forced_install(m: str) -> Optional[str]:
    """'force' or 'version-override' if /usr/share/dkms/modules_to_force_install lists m."""
    try:
        files = sorted(FORCE_INSTALL_DIR.iterdir())
    except OSError:
        return None
    words: List[str] = []
    for f in files:
        try:
            words.extend(f.read_text(errors="replace").split())
        except OSError:
            continue
    for w in words:
        if w == m:
            return "force"
        if w == f"{m}_version-override":
            return "version-override"
    return None


def version_sanity(
    session: Session,
    conf: ModuleConf,
    record: ModuleRecord,
    target: Target,
    suffix: str,
    force: bool,
    force_version_override: bool,
) -> bool:
    """build-install.md §4.1: may this record be installed?"""
    console = session.console
    k = target.kernel
    if conf.obsolete_by and not force and is_obsolete(k, conf.obsolete_by):
        console.notice("")
        console.notice(f"Module has been obsoleted due to being included in kernel {conf.obsolete_by}.")
        console.notice(f"We will avoid installing for future kernels above {conf.obsolete_by}.")
        console.notice("You may override by specifying --force.")
        return False
    install_dir = session.settings.install_tree / k
    existing = list(kernel_mod.find_module_files(install_dir, record.dest_name, suffix))
    if not existing or force_version_override:
        return True
    if len(existing) > 1:
        console.warn(
            f"Cannot do version sanity checking because multiple {record.dest_name}.ko{suffix} modules were "
            f"found in kernel {k}."
        )
        return True
    e = existing[0]
    built = compressed_or_uncompressed(
        session.tree.built_module_dir(conf.module, conf.version, k, target.arch), record.dest_name, suffix
    )
    if built is None:
        return True
    if e == Path(f"{install_dir}{record.install_location}") / built.name and same_contents(e, built):
        # our own copy, left by an install that was interrupted before its kernel link was made:
        # finishing that install is not "replacing a module with the same version"
        return True
    e_ver, e_src = version_info(e)
    d_ver, d_src = version_info(built)
    if e_ver == d_ver:
        # same version and srcversion: refused if it carries version information, or if it is
        # the very same file
        if e_src == d_src and not force and ((d_ver or d_src) or same_contents(e, built)):
            if d_ver:
                console.notice(
                    f"Module {e} already installed at version {d_ver}, override by specifying --force"
                )
            else:
                console.notice(
                    f"Module {e} already installed (unversioned module), override by specifying --force"
                )
            return False
        return True
    if ver(e_ver).encode() > ver(d_ver).encode() and not force:
        if d_ver:
            what = f"Module version {d_ver} for {record.dest_name}.ko{suffix} is not newer than"
        else:
            what = (
                f"The built {built} has no version (no MODULE_VERSION, or modinfo cannot read it), older than"
            )
        console.error(
            f"{what} what is already found in kernel {k} ({e_ver}).\nYou may override by specifying --force."
        )
        return False
    return True


def archive_original(
    session: Session, m: str, record: ModuleRecord, target: Target, suffix: str, built: Path
) -> None:
    """tree.md §10: move one pre-existing module of this name into original_module/K/A.

    A file identical to ``built`` is not an original: it is this build's own copy, left by an
    install that was interrupted before the kernel link was made, and is simply overwritten.
    """
    k, a = target.kernel, target.arch
    kdir = session.settings.install_tree / k
    backup = session.tree.original_module_dir(m, k, a)
    n = record.dest_name
    candidates: List[Path] = []
    for d in (kdir / "extra", kdir / "updates", Path(f"{kdir}{record.install_location}")):
        found = compressed_or_uncompressed(d, n, suffix)
        if found is not None:
            candidates.append(found)
    candidates.extend(kernel_mod.find_module_files(kdir, n, suffix))
    for original in candidates:
        if not original.is_file() or same_contents(original, built):
            continue
        session.console.info(f"Found pre-existing {original}, archiving for uninstallation")
        backup.mkdir(parents=True, exist_ok=True)
        origin = backup / f"{original.name}.origin"
        tmp_origin = backup / f".{original.name}.origin.tmp"
        tmp_origin.write_text(f"{original}\n")
        os.replace(tmp_origin, origin)
        try:
            move_file(original, backup / original.name)
        except BaseException:
            origin.unlink()
            raise
        return


def install(session: Session, m: str, v: str, target: Target, *, build_if_needed: bool = True) -> int:
    """Install m/v on one target (build-install.md §4). Returns 0 or raises DkmsError."""
    from .builder import build

    tree = session.tree
    console = session.console
    opts = session.options
    k, a = target.kernel, target.arch
    if not k or not a:
        raise DkmsError(16, "Empty kernel version or architecture.")
    if not tree.is_built(m, v, k, a):
        status = build(session, m, v, target)
        if status:
            return status
    force = opts.force
    force_vo = opts.force_version_override
    forced = forced_install(m)
    if forced == "force":
        force = True
        console.info(f"Forcing installation of {m}")
    elif forced == "version-override":
        force_vo = True
        console.info(f"Forcing version override of {m}")

    kdir = session.settings.install_tree / k
    if not kdir.exists():
        raise DkmsError(
            6,
            f"The directory {kdir} doesn't exist.",
            "You cannot install a module onto a non-existent kernel.",
        )
    suffix = module_suffix(session.settings.install_tree, k)
    kernel = session.kernel(k, a)
    conf = session.read_conf(m, v, kernel, strict=True)
    module_dir = tree.built_module_dir(m, v, k, a)
    for r in conf.records:
        f = compressed_or_uncompressed(module_dir, r.dest_name, suffix)
        if f is None or not f.is_file():
            raise DkmsError(6, f"Missing module {r.dest_name} in {module_dir}.")
    if tree.is_installed(m, v, k, a):
        raise DkmsError(5, f"{m}/{v} is already installed for kernel {k} ({a}).")
    if opts.rpm_safe_upgrade:
        force = True

    source = tree.source_link(m, v)
    env = session.command_env()
    status = run_script("pre_install", conf.pre_install, source, console, env)
    if status and not force:
        raise DkmsError(
            101, "The pre_install script failed, aborting install.", "You may override by specifying --force."
        )

    link = tree.kernel_link(m, k, a)
    was_linked = link.is_symlink()
    installed_files: List[tuple[ModuleRecord, Path, Path]] = []
    try:
        for r in conf.records:
            if not version_sanity(session, conf, r, target, suffix, force, force_vo):
                continue
            src = compressed_or_uncompressed(module_dir, r.dest_name, suffix)
            assert src is not None
            dest_dir = Path(f"{kdir}{r.install_location}")
            dest = dest_dir / src.name
            try:
                if not was_linked:
                    archive_original(session, m, r, target, suffix, src)
                elif compressed_or_uncompressed(tree.original_module_dir(m, k, a), r.dest_name, suffix):
                    console.info("An original module was already stored during a previous install")
                console.info(f"Installing {dest}")
                dest_dir.mkdir(parents=True, exist_ok=True)
                if session.settings.symlink_modules:
                    atomic_symlink(str(src), dest)
                else:
                    atomic_copy(src, dest)
            except OSError as exc:
                what = exc.strerror or str(exc)
                raise DkmsError(6, f"Installing {dest} failed: {what} ({exc.filename or src}).") from exc
            installed_files.append((r, src, dest))
        if conf.num_modules > 0 and not installed_files:
            raise DkmsError(6, "Installation aborted: no module of the package was installed.")
        atomic_symlink(tree.kernel_link_target(v, k, a), link)
    except BaseException:
        # nothing is installed until the kernel link exists: put the kernel back as it was
        _undo_install(session, m, conf, target, suffix, [d for _r, _s, d in installed_files], was_linked)
        raise

    weak_modules(session, conf, [d for _r, _s, d in installed_files], add=True)
    run_script("post_install", conf.post_install, source, console, env)
    if not run_depmod(session, k, a):
        uninstall(session, m, v, target, conf=conf)
        raise DkmsError(
            6,
            "Problems with depmod detected; the module was uninstalled again.",
            "Install failed (depmod problems). Module rolled back to built state.",
        )
    if session.settings.modprobe_on_install and k == os.uname().release:
        modprobe_present_devices()
    entries: List[FingerprintEntry] = []
    for r, src, dest in installed_files:
        e = fingerprint_for(r, src, dest)
        if e is not None:
            entries.append(e)
    write_fingerprint(tree.target_dir(m, v, k, a), entries)
    return 0


def _undo_install(
    session: Session,
    m: str,
    conf: ModuleConf,
    target: Target,
    suffix: str,
    copied: Sequence[Path],
    was_linked: bool,
) -> None:
    """Remove the copies an install made before it failed, and bring back the originals it archived."""
    _take_back(session, m, target, suffix, copied, () if was_linked else conf.records, announce=False)


def _take_back(
    session: Session,
    m: str,
    target: Target,
    suffix: str,
    copies: Sequence[Path],
    records: Sequence[ModuleRecord],
    *,
    announce: bool,
) -> None:
    """Delete our copies from the kernel, then put back the originals archived for ``records``."""
    kdir = session.settings.install_tree / target.kernel
    for p in copies:
        if announce:
            session.console.info(f"Deleting {p}")
        try:
            p.unlink()
        except OSError:
            continue
        _prune_dirs(kdir, p.parent, not session.family.uses_uname_arch)
    for r in records:
        try:
            restore_originals(session, m, r, target, suffix)
        except OSError as exc:
            session.console.warn(f"Could not restore the original of {r.dest_name}: {describe_os_error(exc)}")
    _rmdir_quiet(session.tree.original_module_root(m))


def _identical_copies(session: Session, kdir: Path, built: Path) -> List[Path]:
    """Installed copies of ``built`` (same name, same bytes, or a symlink to it) in kernel dir ``kdir``.

    Looked for in the family's destination dir first, else anywhere under ``kdir``.
    """

    def copies(root: Path) -> List[Path]:
        found = []
        for dirpath, _dirs, files in os.walk(root):
            for fn in files:
                p = Path(dirpath) / fn
                if fn != built.name:
                    continue
                if (p.is_symlink() and os.path.realpath(p) == os.path.realpath(built)) or same_contents(
                    p, built
                ):
                    found.append(p)
        return found

    family_dir = Path(f"{kdir}{session.family.dest_dir('', session.addon_modules_dir)}")
    found = copies(family_dir) if family_dir.is_dir() else []
    return found or copies(kdir)


def _copies_of_built_files(
    session: Session, m: str, v: str, target: Target
) -> Tuple[List[Path], List[ModuleRecord]]:
    """Without dkms.conf: the kernel's copies of the files in ``T/module/``, and a record per file."""
    kdir = session.settings.install_tree / target.kernel
    copies: List[Path] = []
    records: List[ModuleRecord] = []
    for built in built_module_files(session.tree.built_module_dir(m, v, target.kernel, target.arch)):
        name = built.name[: built.name.index(".ko")]
        copies += _identical_copies(session, kdir, built)
        records.append(ModuleRecord(0, name, "", name, "", "", False))
    return copies, records


def recover_interrupted_install(session: Session, m: str, v: str, target: Target) -> None:
    """Undo what an install killed before its kernel link left behind (copies, archived originals).

    Called where m/v is about to be forgotten for this kernel while not installed (uninstall,
    unbuild, remove): without it the copies would stay in the kernel and the originals in the
    archive, unknown to anyone. Works from the built files, like the D-17 fallback.
    """
    tree = session.tree
    k, a = target.kernel, target.arch
    if tree.kernel_link(m, k, a).is_symlink():
        return  # installed (this or another version): the archive belongs to that install
    if not tree.built_module_dir(m, v, k, a).is_dir():
        return
    copies, records = _copies_of_built_files(session, m, v, target)
    if not copies and not tree.original_module_dir(m, k, a).is_dir():
        return
    session.console.info(f"Undoing an interrupted install of {m}/{v} for kernel {k} ({a}).")
    suffix = module_suffix(session.settings.install_tree, k)
    _take_back(session, m, target, suffix, copies, records, announce=True)


def modprobe_present_devices() -> None:
    aliases = set()
    for dirpath, _dirs, files in os.walk("/sys/devices"):
        if "modalias" in files:
            try:
                aliases.add(Path(dirpath, "modalias").read_text().strip())
            except OSError:
                continue
    aliases.discard("")
    try:
        if aliases:
            runner.run(["modprobe", "-a", "-b", "-q", *sorted(aliases)])
        if Path("/lib/systemd/system/systemd-modules-load.service").exists():
            runner.run(["systemctl", "restart", "systemd-modules-load.service"])
    except DkmsError:
        pass


def weak_modules(session: Session, conf: ModuleConf, files: List[Path], *, add: bool) -> None:
    """tree.md §8: rhel*/suse* weak-modules registration."""
    if os.environ.get("NO_WEAK_MODULES") or conf.no_weak_modules or not files:
        return
    family = session.family
    if family.matches("rhel*"):
        argv = ["/usr/sbin/weak-modules", "--no-initramfs", "--add-modules" if add else "--remove-modules"]
    elif family.matches("sles*", "suse*", "opensuse*"):
        argv = [
            "/usr/lib/module-init-tools/weak-modules2",
            "--add-kernel-modules" if add else "--remove-kernel-modules",
            conf.kernel,
        ]
    else:
        return
    session.console.info("Adding linked weak modules..." if add else "Removing linked weak modules...")
    try:
        runner.run(argv, input="".join(f"{f}\n" for f in files).encode())
    except DkmsError as exc:
        session.console.warn(exc.message)


def run_depmod(session: Session, k: str, a: str) -> bool:
    """depmod for K after a change (tree.md §11). Returns False if depmod failed."""
    if session.options.no_depmod:
        return True
    if session.options.delayed_depmod:
        session.tree.depmod_pending(k, a).touch()
        return True
    if session.depmod_sink is not None:
        session.depmod_sink(k, a)
        return True
    return depmod_now(session, k, a)


def depmod_now(session: Session, k: str, a: str) -> bool:
    """Run depmod for K now (tree.md §11); False if it failed."""
    console = session.console
    plan = kernel_mod.depmod_plan(session.settings.install_tree, k)
    if isinstance(plan, str):
        console.info(plan)
        return True
    with console.step("Running depmod", " ".join(plan)) as step:
        try:
            result = kernel_mod.depmod(session.settings.install_tree, k, plan)
        except DkmsError as exc:  # depmod missing or not runnable: a depmod failure (D-18)
            step.fail(1)
            console.warn(exc.message)
            return False
        if result.returncode:
            step.fail(result.returncode)
    if result.output and (console.verbose or result.returncode):
        console.write(result.output if result.output.endswith("\n") else result.output + "\n")
    return result.returncode == 0


# ---- uninstall -----------------------------------------------------------------------------------
def _prune_dirs(kdir: Path, start: Path, rpm_family: bool) -> None:
    """``rmdir -p --ignore-fail-on-non-empty`` from ``start`` up to (not including) ``kdir``."""
    d = start
    while d != kdir and kdir in d.parents:
        if rpm_family:
            rel = os.path.relpath(d, kdir)
            try:
                if runner.run(["rpm", "-qf", rel], cwd=kdir).returncode == 0:
                    return
            except DkmsError:
                pass
        try:
            d.rmdir()
        except OSError:
            return
        d = d.parent


def restore_originals(session: Session, m: str, record: ModuleRecord, target: Target, suffix: str) -> None:
    """tree.md §10: put archived modules of this record back."""
    k, a = target.kernel, target.arch
    backup = session.tree.original_module_dir(m, k, a)
    kdir = session.settings.install_tree / k
    console = session.console
    if backup.is_dir():
        for dirpath, _dirs, files in os.walk(backup):
            for fn in sorted(files):
                if not (fn.startswith(f"{record.dest_name}.") and fn.endswith(".origin")):
                    continue
                origin = Path(dirpath) / fn
                data = Path(dirpath) / fn[: -len(".origin")]
                if not data.is_file():
                    continue
                try:
                    location = origin.read_text(errors="replace").splitlines()[0]
                except (OSError, IndexError):
                    continue
                if location.startswith(f"{kdir}/"):
                    console.info(f"Restoring archived original module {location}")
                    Path(location).parent.mkdir(parents=True, exist_ok=True)
                    move_file(data, Path(location))
                    origin.unlink()
                else:
                    console.warn(f"Bad original location '{location}' in {origin}")
        for dirpath, _dirs, _files in sorted(os.walk(backup.parent), key=lambda t: -len(t[0])):
            try:
                os.rmdir(dirpath)
            except OSError:
                pass
    legacy = compressed_or_uncompressed(backup, record.dest_name, suffix)
    if legacy is not None and not (backup / f"{legacy.name}.origin").exists():
        console.info("Restoring archived original module")
        dest_dir = Path(f"{kdir}{record.dest_location}")
        dest_dir.mkdir(parents=True, exist_ok=True)
        try:
            move_file(legacy, dest_dir / legacy.name)
        except OSError:
            pass


def uninstall(session: Session, m: str, v: str, target: Target, *, conf: Optional[ModuleConf] = None) -> int:
    """build-install.md §5 (the caller checked that it is installed, or wants the inactive report)."""
    tree = session.tree
    console = session.console
    k, a = target.kernel, target.arch
    console.info(f"Module {m}/{v} for kernel {k} ({a}):")
    suffix = module_suffix(session.settings.install_tree, k)
    if conf is None:
        conf = session.read_conf(m, v, session.kernel(k, a), strict=False)
    kdir = session.settings.install_tree / k
    T = tree.target_dir(m, v, k, a)
    active = tree.installed_version(m, k, a) == v
    if active:
        console.info("Before uninstall, this module version was ACTIVE on this kernel.")
        located: List[tuple[ModuleRecord, Optional[Path]]] = []
        for r in conf.records:
            built = compressed_or_uncompressed(T / "module", r.dest_name, suffix)
            found = locate_installed(kdir, r, built, suffix) if built is not None else None
            if found is None:  # the built module is gone or unreadable: what did we install?
                found = fingerprinted_install(T, r, kdir)
            located.append((r, found))
        weak_modules(session, conf, [f for _r, f in located if f is not None], add=False)
        for r, found in located:
            if found is not None:
                console.info(f"Deleting {found}")
                for p in found.parent.glob(f"{glob.escape(r.dest_name)}.ko*"):
                    try:
                        p.unlink()
                    except OSError:
                        pass
                _prune_dirs(kdir, found.parent, not session.family.uses_uname_arch)
            else:
                console.info(f"Module {r.dest_name}.ko{suffix} was not found within {kdir}/")
            restore_originals(session, m, r, target, suffix)
        try:
            tree.kernel_link(m, k, a).unlink()
        except OSError:
            pass
    else:
        console.info("This module version was INACTIVE for this kernel.")
    run_script("post_remove", conf.post_remove, tree.source_link(m, v), console, session.command_env())
    run_depmod(session, k, a)
    orig = tree.original_module_dir(m, k, a)
    if active and orig.is_dir():
        console.info(f"Removing original module(s) from DKMS tree for kernel {k} ({a})")
        shutil.rmtree(orig, ignore_errors=True)
        _rmdir_quiet(orig.parent)
    _rmdir_quiet(tree.original_module_root(m))
    remove_fingerprint(T)
    return 0


def _rmdir_quiet(path: Path) -> None:
    try:
        path.rmdir()
    except OSError:
        pass


# ---- unbuild / remove ----------------------------------------------------------------------------
def discard(path: Path) -> None:
    """Delete a file, link or directory of the tree so that a crash leaves it whole or invisible.

    A directory is renamed to a hidden name first, which every listing of the tree skips: a
    ``remove`` killed during the deletion does not leave a "broken" module (whose source link
    went first), nor an unbuild a half-deleted K/A.
    """
    if not path.is_dir() or path.is_symlink():
        try:
            path.unlink()
        except OSError:
            pass
        return
    trash = path.with_name(f".removing-{path.name}-{os.getpid()}")
    try:
        os.rename(path, trash)
    except OSError:
        trash = path
    shutil.rmtree(trash, ignore_errors=True)


def unbuild_target(session: Session, m: str, v: str, target: Target) -> None:
    """Delete K/A, then K if no non-hidden directory remains (hidden staging dirs go with it)."""
    tree = session.tree
    discard(tree.target_dir(m, v, target.kernel, target.arch))
    kdir = tree.kernel_dir(m, v, target.kernel)
    try:
        remaining = [e for e in os.scandir(kdir) if not e.name.startswith(".") and e.is_dir()]
    except OSError:
        return
    if not remaining:
        shutil.rmtree(kdir, ignore_errors=True)


def uninstall_from_files(session: Session, m: str, v: str, target: Target) -> None:
    """Uninstall m/v from one kernel without its dkms.conf (build-install.md §5.1) [fix D-17].

    The record list is the files in ``T/module/``; installed copies that are byte-identical to them
    (or symlinks to them) are deleted, first in the family's destination dir, else anywhere under
    ``$install_tree/K``; archived originals come back; the kernel link goes.
    """
    tree = session.tree
    console = session.console
    k, a = target.kernel, target.arch
    if tree.installed_version(m, k, a) != v:
        console.info("This module version was INACTIVE for this kernel.")
        return
    suffix = module_suffix(session.settings.install_tree, k)
    copies, records = _copies_of_built_files(session, m, v, target)
    _take_back(session, m, target, suffix, copies, records, announce=True)
    try:
        tree.kernel_link(m, k, a).unlink()
    except OSError:
        pass
    run_depmod(session, k, a)
    remove_fingerprint(tree.target_dir(m, v, k, a))
