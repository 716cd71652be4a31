"""Module signing (spec/build-install.md §3), ``dkms generate_mok`` and ``dkms sign``.

Signing is prepared once per (K, A) per process (:func:`plan_for`): the signing keys are re-read
from the framework files with ``kernelver`` bound, the hash comes from the kernel's
``CONFIG_MODULE_SIG_HASH``, the sign tool from ``sign_file`` or the family's location, and a
missing key pair is generated with openssl. Anything that makes signing impossible turns it off
with a one-line reason; a build never fails because of signing.

Where ``mokutil`` and EFI are present, the summary says whether Secure Boot is enabled and whether
the certificate is enrolled, with the command that enrolls it; pydkms never enrolls [fix D-25].
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Dict, Iterator, List, Optional, Protocol, Tuple

from . import compress, runner
from .distro import Distro
from .errors import DkmsError
from .framework import SIGNING_KEYS, Settings
from .installed import (
    fingerprint_for,
    locate_installed,
    read_fingerprint,
    same_contents,
    stat_tuple,
    write_fingerprint,
)
from .kernel import MODULE_FILE_SUFFIXES, Kernel, built_module_files, module_suffix
from .modinfo import parse_signature, split_signature
from .tree import Target
from .version import version_sort_key

if TYPE_CHECKING:
    from .cliargs import Invocation
    from .moduleconf import ModuleRecord
    from .session import Session

#: default key pair: fixed paths that do not follow --dkmstree (framework-conf.md §4)
DEFAULT_KEY = "/var/lib/dkms/mok.key"
DEFAULT_CERT = "/var/lib/dkms/mok.pub"
UBUNTU_KEY = "/var/lib/shim-signed/mok/MOK.priv"
UBUNTU_CERT = "/var/lib/shim-signed/mok/MOK.der"
GENTOO_MAKE_CONF = Path("/etc/portage/make.conf")

#: the certificate request of build-install.md §3.3 (key and output paths appended)
OPENSSL_REQ = (
    "openssl", "req", "-new", "-x509", "-nodes", "-days", "36500",
    "-subj", "/CN=DKMS module signing key", "-newkey", "rsa:2048",
)  # fmt: skip

#: ``PYDKMS_EFI_DIR`` relocates /sys/firmware/efi (tests fake an EFI system with it)
EFI_DIR_ENV = "PYDKMS_EFI_DIR"


class Reporter(Protocol):
    def info(self, text: str = "") -> None: ...

    def warn(self, text: str) -> None: ...

    def notice(self, text: str) -> None: ...


@dataclass(frozen=True)
class KeyPair:
    key: str  # a file or a ``pkcs11:`` URI
    cert: str  # a DER file


@dataclass(frozen=True)
class SigningPlan:
    """How modules for one (K, A) are signed; ``reason`` says why they are not ('' = they are)."""

    hash_algo: str = ""
    tool: str = ""
    key: str = ""
    cert: str = ""
    reason: str = ""
    #: the reason is a problem to fix (missing tool, no key), not a choice or a kernel property
    problem: bool = False

    @property
    def enabled(self) -> bool:
        return not self.reason


def report_off(plan: SigningPlan, console: Reporter) -> None:
    """The one-line explanation of why modules are not signed (nothing when they are)."""
    if plan.problem:
        console.warn(plan.reason)
    elif plan.reason:
        console.info(plan.reason)


# ---- where things are ------------------------------------------------------------------------
def in_chroot() -> bool:
    """Our root differs from PID 1's, or fakechroot is active (try_sign_modules=not_in_chroot)."""
    if os.environ.get("FAKECHROOT") == "true":
        return True
    try:
        ours = os.stat("/")
        init = os.stat("/proc/1/root/")
    except OSError:
        return False
    return (ours.st_dev, ours.st_ino) != (init.st_dev, init.st_ino)


def default_sign_tool(distro: Distro, release: str, install_tree: Path) -> str:
    """The family's sign-file (build-install.md §3.1 step 4)."""
    tool = ""
    if distro.matches("debian*"):
        tool = f"/usr/lib/linux-kbuild-{release.rsplit('.', 1)[0]}/scripts/sign-file"
    elif distro.matches("ubuntu*"):
        tool = runner.which("kmodsign") or ""
        if not (tool and os.access(tool, os.X_OK)):
            tool = f"/usr/src/linux-headers-{release}/scripts/sign-file"
    elif distro.matches("gentoo*"):
        tool = f"/usr/src/linux-{release}/scripts/sign-file"
    if not (tool and os.path.isfile(tool)):
        tool = f"{install_tree}/{release}/build/scripts/sign-file"
    return tool


def _make_conf_value(name: str) -> str:
    try:
        text = GENTOO_MAKE_CONF.read_text(errors="replace")
    except OSError:
        return ""
    for line in text.splitlines():
        if line.startswith(f"{name}="):
            return line.split("=", 2)[1].replace('"', "")
    return ""


def _ubuntu_policy_keys() -> Optional[str]:
    """Have update-secureboot-policy create (and queue for enrollment) Ubuntu's MOK; a reason on failure."""
    policy = runner.which("update-secureboot-policy")
    if policy is None:
        return "Binary update-secureboot-policy not found, modules won't be signed"
    try:
        os.unlink(UBUNTU_CERT)  # it does not create a new key while the certificate exists
    except OSError:
        pass
    env = dict(os.environ, SHIM_NOTRIGGER="y")
    for step in ("--new-key", "--enroll-key"):
        try:
            runner.run([policy, step], env=env)
        except DkmsError as exc:
            return f"{exc.message} Modules won't be signed"
    return None


def select_keys(values: Dict[str, str], distro: Distro, kernel: Kernel) -> Tuple[KeyPair, str]:
    """Key and certificate (build-install.md §3.2) and a reason if the family's tooling failed."""
    key = values.get("mok_signing_key", "")
    cert = values.get("mok_certificate", "")
    if not key:
        if distro.matches("ubuntu*"):
            key, cert = UBUNTU_KEY, UBUNTU_CERT
            if not (os.path.isfile(key) and os.path.isfile(cert)):
                reason = _ubuntu_policy_keys()
                if reason:
                    return KeyPair(key, cert), reason
        elif distro.matches("gentoo*"):
            key = os.environ.get("MODULES_SIGN_KEY", "")
            cert = os.environ.get("MODULES_SIGN_CERT", "")
            key = key or _make_conf_value("MODULES_SIGN_KEY")
            cert = cert or _make_conf_value("MODULES_SIGN_CERT")
            if not key and kernel.has_config():
                key = (kernel.config_value("CONFIG_MODULE_SIG_KEY") or "").replace('"', "")
                cert = key  # a PEM file holding both
    return KeyPair(key or DEFAULT_KEY, cert or DEFAULT_CERT), ""


# ---- key generation ----------------------------------------------------------------------------
@contextmanager
def _directory_lock(directory: Path) -> Iterator[None]:
    """flock the directory itself, so concurrent dkms runs generate one key pair, not two halves."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def generate_key_pair(key: Path, cert: Path) -> Optional[str]:
    """Create a self-signed code-signing key pair (§3.3): key 0600 PEM, cert 0644 DER; a reason on failure.

    openssl writes into a private directory next to the key; the old key is removed first and the
    new key is renamed into place last, so nobody ever sees a complete but mismatched pair.
    """
    from .installer import move_file

    if runner.which("openssl") is None:
        return "openssl not found, can't generate key and certificate; modules won't be signed"
    try:
        key.parent.mkdir(parents=True, exist_ok=True)
        cert.parent.mkdir(parents=True, exist_ok=True)
        with _directory_lock(key.parent):
            if key.is_file() and cert.is_file():
                return None  # another dkms made them while we waited
            tmp = Path(tempfile.mkdtemp(prefix=".pydkms-mok-", dir=key.parent))
            try:
                new_key, new_cert = tmp / "mok.key", tmp / "mok.der"
                argv = [*OPENSSL_REQ, "-keyout", str(new_key), "-addext", "extendedKeyUsage=codeSigning"]
                proc = runner.run([*argv, "-outform", "DER", "-out", str(new_cert)])
                if proc.returncode != 0 or not new_key.is_file() or not new_cert.is_file():
                    detail = (proc.stderr or b"").decode(errors="replace").strip().splitlines()
                    return (
                        f"Key file {key} not found and can't be generated (openssl exited with status "
                        f"{proc.returncode}{': ' + detail[-1] if detail else ''}), modules won't be signed"
                    )
                os.chmod(new_key, 0o600)
                os.chmod(new_cert, 0o644)
                try:
                    key.unlink()
                except FileNotFoundError:
                    pass
                move_file(new_cert, cert)
                os.replace(new_key, key)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
    except OSError as exc:
        return f"Key file {key} not found and can't be generated ({exc.strerror}: {exc.filename}), modules won't be signed"
    return None


def prepare_keys(
    values: Dict[str, str], distro: Distro, kernel: Kernel, console: Reporter
) -> Tuple[Optional[KeyPair], str]:
    """Select, report and if needed generate the key pair; (pair, '') or (None, reason)."""
    pair, reason = select_keys(values, distro, kernel)
    if reason:
        return None, reason
    console.info(f"Signing key: {pair.key}")
    console.info(f"Public certificate (MOK): {pair.cert}")
    if not pair.key.startswith("pkcs11:") and not (os.path.isfile(pair.key) and os.path.isfile(pair.cert)):
        console.info("Certificate or key are missing, generating self signed certificate for MOK...")
        problem = generate_key_pair(Path(pair.key), Path(pair.cert))
        if problem:
            return None, problem
        if not os.path.isfile(pair.key):
            return None, f"Key file {pair.key} not found and can't be generated, modules won't be signed"
    if not os.path.isfile(pair.cert):
        return None, f"Certificate file {pair.cert} not found and can't be generated, modules won't be signed"
    return pair, ""


# ---- Secure Boot -------------------------------------------------------------------------------
@dataclass
class SecureBoot:
    """``mokutil`` answers, asked at most once per process (state) and once per certificate."""

    _state: Optional[str] = None
    _checked: bool = False
    _enrolled: Dict[str, str] = field(default_factory=dict)

    @staticmethod
    def _mokutil() -> Optional[str]:
        efi = Path(os.environ.get(EFI_DIR_ENV) or "/sys/firmware/efi")
        if not efi.is_dir():
            return None
        return runner.which("mokutil")

    def state(self) -> Optional[str]:
        """'enabled', 'disabled', or None when there is no mokutil, no EFI, or no answer."""
        if not self._checked:
            self._checked = True
            tool = self._mokutil()
            if tool is not None:
                try:
                    text = runner.run([tool, "--sb-state"]).stdout.decode(errors="replace").lower()
                except DkmsError:
                    text = ""
                if "secureboot enabled" in text:
                    self._state = "enabled"
                elif "secureboot disabled" in text:
                    self._state = "disabled"
        return self._state

    def enrollment(self, cert: str) -> str:
        """'enrolled', 'pending' (queued for the next boot), 'not enrolled', or '' when unknown."""
        if cert not in self._enrolled:
            tool = self._mokutil()
            answer = ""
            if tool is not None:
                try:
                    text = runner.run([tool, "--test-key", cert]).stdout.decode(errors="replace")
                except DkmsError:
                    text = ""
                if "already enrolled" in text:
                    answer = "enrolled"
                elif "enrollment request" in text:
                    answer = "pending"
                elif "not enrolled" in text:
                    answer = "not enrolled"
            self._enrolled[cert] = answer
        return self._enrolled[cert]

    def report(self, cert: str, console: Reporter) -> None:
        """One line on Secure Boot and the certificate; the enrollment command when it matters."""
        state = self.state()
        if state is None:
            return
        enrolled = self.enrollment(cert)
        if enrolled == "enrolled":
            console.info(f"Secure Boot is {state}; the certificate {cert} is enrolled.")
        elif enrolled == "pending":
            console.info(
                f"Secure Boot is {state}; the certificate {cert} is queued for enrollment: "
                "confirm it in the MOK manager at the next boot."
            )
        elif enrolled == "not enrolled" and state == "enabled":
            console.warn(
                f"Secure Boot is enabled and the certificate {cert} is not enrolled: "
                "the kernel will refuse to load modules signed with it."
            )
            console.notice(
                f"To enroll it, run: mokutil --import {cert}  (then reboot and confirm in the MOK manager)"
            )
        elif enrolled == "not enrolled":
            console.info(
                f"Secure Boot is disabled; the certificate {cert} is not enrolled "
                f"(before enabling Secure Boot, run: mokutil --import {cert})."
            )
        else:
            console.info(f"Secure Boot is {state}.")


SECURE_BOOT = SecureBoot()


# ---- preparing and signing -----------------------------------------------------------------------
def plan_for(
    settings: Settings,
    distro: Distro,
    kernel: Kernel,
    console: Reporter,
    secure_boot: Optional[SecureBoot] = None,
) -> SigningPlan:
    """Signing preparation for one (K, A) (build-install.md §3.1); prints the summary, not the reason."""
    values = settings.reread(SIGNING_KEYS, kernel.release, kernel.arch)
    mode = values.get("try_sign_modules") or "true"
    if mode == "false":
        return SigningPlan(
            reason="Module signing is turned off (try_sign_modules=false), modules won't be signed"
        )
    if mode != "true" and in_chroot():
        return SigningPlan(reason=f"Running in a chroot (try_sign_modules={mode}), modules won't be signed")
    if not kernel.has_config():
        return SigningPlan(reason=f"Kernel config {kernel.config} not found, modules won't be signed")
    algo = kernel.config_value("CONFIG_MODULE_SIG_HASH")
    if algo is None:
        return SigningPlan(
            reason="The kernel is built without module signing facility, modules won't be signed"
        )
    algo = algo.replace('"', "")
    tool = values.get("sign_file") or default_sign_tool(distro, kernel.release, settings.install_tree)
    console.info(f"Sign command: {tool}")
    if not (os.path.isfile(tool) and os.access(tool, os.X_OK)):
        return SigningPlan(reason=f"Binary {tool} not found, modules won't be signed", problem=True)
    pair, reason = prepare_keys(values, distro, kernel, console)
    if pair is None:
        return SigningPlan(reason=reason, problem=True)
    (secure_boot or SECURE_BOOT).report(pair.cert, console)
    return SigningPlan(algo, tool, pair.key, pair.cert)


def strip_signature(path: Path) -> bool:
    """Remove an appended signature from an uncompressed module file; True if there was one."""
    data = path.read_bytes()
    body, block = split_signature(data)
    if block is None:
        return False
    with open(path, "r+b") as fh:
        fh.truncate(len(body))
    return True


def sign_module(plan: SigningPlan, path: Path) -> Optional[str]:
    """Sign an uncompressed module in place (an old signature is replaced); the tool's complaint on failure."""
    strip_signature(path)
    argv = [plan.tool, plan.hash_algo, plan.key, plan.cert, str(path)]
    try:
        proc = runner.run(argv, stderr=subprocess.STDOUT)
    except DkmsError as exc:
        return exc.message
    output = (proc.stdout or b"").decode(errors="replace").strip()
    if proc.returncode != 0:
        return output or f"{plan.tool} exited with status {proc.returncode}"
    if parse_signature(path.read_bytes()) is None:
        return f"{plan.tool} reported success but appended no signature" + (f": {output}" if output else "")
    return None


def resign_file(path: Path, plan: SigningPlan, compressor: compress.Compressor, console: Reporter) -> None:
    """Replace the signature of a built module file, compressed or not, atomically; DkmsError on failure."""
    sfx = compress.suffix_of(path)
    tmp = Path(tempfile.mkdtemp(prefix=".pydkms-sign-", dir=path.parent))
    try:
        work = tmp / (path.name[: -len(sfx)] if sfx else path.name)
        if sfx:
            compress.decompress_to(path, work)
        else:
            shutil.copyfile(path, work)
        problem = sign_module(plan, work)
        if problem:
            raise DkmsError(1, f"Signing {path} failed: {problem}")
        if sfx:
            result = compressor.compress(work, sfx, console.warn)
            if result.error:
                raise DkmsError(1, f"Compressing the signed {path.name} failed: {result.error}")
            work = result.path
        shutil.copymode(path, work)
        os.replace(work, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# ---- actions -----------------------------------------------------------------------------------
def run_generate_mok(session: Session, inv: Invocation) -> int:
    """``dkms generate_mok`` (autoinstall-hooks.md §4): 0 when key and certificate exist afterwards."""
    uname = os.uname()
    k = inv.kernels[0] if inv.kernels else uname.release
    a = inv.arches[0] if inv.arches else uname.machine
    console = session.console
    values = session.settings.reread(SIGNING_KEYS, k, a)
    pair, reason = prepare_keys(values, session.family, session.kernel(k, a), console)
    if pair is None:
        console.error(reason)
        return 1
    SECURE_BOOT.report(pair.cert, console)
    return 0


@dataclass
class _SignOutcome:
    failed: bool = False
    reinstalled: bool = False


def _resign_target(
    session: Session, plan: SigningPlan, compressor: compress.Compressor, m: str, v: str, t: Target
) -> _SignOutcome:
    """Re-sign one build; refresh its installed copies (ours only) and their fingerprint."""
    from .installer import atomic_copy

    tree = session.tree
    console = session.console
    out = _SignOutcome()
    module_dir = tree.built_module_dir(m, v, t.kernel, t.arch)
    target_dir = tree.target_dir(m, v, t.kernel, t.arch)
    files = built_module_files(module_dir)
    if not files:
        console.warn(f"{m}/{v} has no module files in {module_dir}; nothing to sign.")
        return out
    # Installed copies that are ours: found before the built files change, then replaced after.
    installed: List[Tuple[ModuleRecord, Path, Path, bool]] = []  # (record, built, installed, replace?)
    if tree.is_installed(m, v, t.kernel, t.arch):
        try:
            conf = session.read_conf(m, v, session.kernel(t.kernel, t.arch), strict=False)
        except DkmsError as exc:
            console.error(f"{m}/{v} for {t}: cannot read its dkms.conf ({exc.message}); not re-signed.")
            out.failed = True
            return out
        kdir = session.settings.install_tree / t.kernel
        suffix = module_suffix(session.settings.install_tree, t.kernel)
        recorded = read_fingerprint(target_dir)
        by_name = {f.name: f for f in files}
        for r in conf.records:
            built = next(
                (by_name[n] for n in (f"{r.dest_name}{s}" for s in MODULE_FILE_SUFFIXES) if n in by_name),
                None,
            )
            if built is None:
                continue
            entry = recorded.get(r.dest_name)
            # unchanged since install (or since an interrupted sign): ours, whatever its contents
            trusted = entry is not None and stat_tuple(Path(entry.installed)) == entry.installed_stat
            dest = (
                Path(entry.installed)
                if entry is not None and trusted
                else locate_installed(kdir, r, built, suffix)
            )
            if dest is None:
                continue
            ours = trusted or os.path.islink(dest) or same_contents(built, dest)
            if not ours:
                console.warn(f"{dest} differs from the built {built.name}; leaving it alone.")
            installed.append((r, built, dest, ours and not os.path.islink(dest)))
    signed = set()
    for f in files:
        console.info(f"Signing module {f}")
        try:
            resign_file(f, plan, compressor, console)
            signed.add(f)
        except DkmsError as exc:
            console.error(exc.message)
            out.failed = True
    entries = []
    for r, built, dest, replace in installed:
        if replace and built in signed:
            console.info(f"Updating {dest}")
            try:
                atomic_copy(built, dest)
                out.reinstalled = True
            except OSError as exc:
                console.error(f"Copying {built} to {dest} failed: {exc.strerror}.")
                out.failed = True
        fingerprint = fingerprint_for(r, built, dest)
        if fingerprint is not None:
            entries.append(fingerprint)
    if installed:
        write_fingerprint(target_dir, entries)
    return out


def run_sign(session: Session, inv: Invocation) -> int:
    """``dkms sign [m[/v]] [-k K]… [--all|--all-kernels]``: re-sign built modules with the current key.

    Default: every build in the tree. Installed copies are replaced atomically and depmod runs once
    per kernel whose modules changed. Exit 1 if any kernel cannot sign or any module failed.
    """
    from .api import check_rw_dkms_tree
    from .cliargs import pair_kernels_arches
    from .installer import run_depmod

    check_rw_dkms_tree(session)
    tree = session.tree
    console = session.console
    m_pat, v_pat = inv.module or None, inv.version or None
    wanted: Optional[List[Tuple[str, Optional[str]]]] = None
    if inv.kernels and not (inv.all or inv.all_kernels):
        wanted = pair_kernels_arches(inv.kernels, inv.arches)
    elif inv.arches and not inv.all_kernels:
        wanted = [("*", inv.arches[0])]
    found_module = False
    jobs: Dict[Target, List[Tuple[str, str]]] = {}
    for m, v in tree.module_versions(m_pat, v_pat):
        found_module = True
        if tree.is_broken(m, v):
            console.warn(f"{m}/{v} is broken (its source is missing); skipped.")
            continue
        if wanted is None:
            builds = tree.builds(m, v)
        else:
            builds = [t for k, a in wanted for t in tree.builds(m, v, k, a)]
        for t in builds:
            jobs.setdefault(t, [])
            if (m, v) not in jobs[t]:
                jobs[t].append((m, v))
    if m_pat and not found_module:
        what = f"{m_pat}/{v_pat}" if v_pat else m_pat
        raise DkmsError(3, f"The module/version combo {what} is not located in the DKMS tree.")
    if wanted is not None:
        for k, a in wanted:
            if not any(t.kernel == k and (a is None or t.arch == a) for t in jobs) and "*" not in k:
                console.warn(
                    f"Nothing is built for kernel {k}{f' ({a})' if a else ''}; nothing to sign there."
                )
    if not jobs:
        console.info("No built modules to sign.")
        return 0
    compressor = compress.Compressor(session.settings)
    failed = False
    for t in sorted(jobs, key=lambda t: version_sort_key(f"{t.kernel}/{t.arch}")):
        console.info(f"Kernel {t}:")
        plan = plan_for(session.settings, session.family, session.kernel(t.kernel, t.arch), console)
        if not plan.enabled:
            console.error(f"Cannot sign modules for kernel {t}: {plan.reason}.")
            failed = True
            continue
        reinstalled = False
        for m, v in jobs[t]:
            outcome = _resign_target(session, plan, compressor, m, v, t)
            failed = failed or outcome.failed
            reinstalled = reinstalled or outcome.reinstalled
        if reinstalled and not run_depmod(session, t.kernel, t.arch):
            console.error(f"depmod failed for kernel {t.kernel}.")
            failed = True
    return 1 if failed else 0
