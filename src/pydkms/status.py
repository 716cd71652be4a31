"""``dkms status`` (spec/status.md): never writes, never locks, always exits 0.

Lines are computed from the tree predicates; suffixes from the module records of each dkms.conf
(evaluated silently, at most once per module/version when the result does not depend on the
kernel) and, for installed modules, from the install fingerprint while it still matches the files
on disk [fix D-04]. Nothing here starts a subprocess in the steady state.

``--verbose`` (text) and ``--json`` also say, per built module file, whether it is signed and by
which certificate (signer, key serial, hash: what ``modinfo`` calls ``signer``, ``sig_key`` and
``sig_hashalgo``). Only those modes read the module files for it.
"""

from __future__ import annotations

import json
import os
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

from . import __version__, runner
from .errors import DkmsError
from .failure import describe
from .installed import locate_installed, read_fingerprint, same_contents, stat_tuple
from .kernel import built_module_files, compressed_or_uncompressed, module_suffix
from .modinfo import SignatureInfo, signature_info
from .moduleconf import ModuleConf
from .names import check_kernel_pattern, check_module_version
from .session import Session
from .tree import Target, Tree

ORIGINAL = " (Original modules exist)"
MISSING = " (Built modules are missing in the kernel modules folder)"
DIFFERS = " (Differences between built and installed modules)"

JSON_SCHEMA = "pydkms-status"
JSON_SCHEMA_VERSION = 1


@dataclass(frozen=True)
class StatusEntry:
    module: str
    version: str
    kernel: Optional[str]
    arch: Optional[str]
    state: str  # added | broken | built | installed
    original_modules: bool = False
    built_modules_missing: bool = False
    differs_from_installed: bool = False
    #: for a module that could not be looked at (listed as broken): why
    problem: Optional[str] = None

    def line(self) -> str:
        mv = f"{self.module}/{self.version}"
        if self.state in ("added", "broken"):
            return f"{mv}: {self.state}"
        text = f"{mv}, {self.kernel}, {self.arch}: {self.state}"
        if self.original_modules:
            text += ORIGINAL
        if self.built_modules_missing:
            text += MISSING
        elif self.differs_from_installed:
            text += DIFFERS
        return text

    def as_json(self) -> Dict[str, object]:
        return {
            "module": self.module,
            "version": self.version,
            "kernel": self.kernel,
            "arch": self.arch,
            "state": self.state,
            "original_modules": self.original_modules,
            "built_modules_missing": self.built_modules_missing,
            "differs_from_installed": self.differs_from_installed,
        }


@dataclass(frozen=True)
class ModuleSignature:
    """One built module file of a build line and its appended signature (None: unsigned)."""

    file: Path
    signature: Optional[SignatureInfo]

    def describe(self) -> str:
        sig = self.signature
        if sig is None:
            return f"{self.file.name}: not signed"
        key = f"key {sig.sig_key}" if sig.sig_key else "unknown key"
        algo = f", {sig.sig_hashalgo}" if sig.sig_hashalgo else ""
        return f'{self.file.name}: signed by "{sig.signer}" ({key}{algo})'

    def as_json(self) -> Dict[str, object]:
        sig = self.signature
        return {
            "file": str(self.file),
            "signed": sig is not None,
            "signer": sig.signer if sig else None,
            "sig_key": sig.sig_key if sig else None,
            "sig_hashalgo": sig.sig_hashalgo if sig else None,
        }


def module_signatures(tree: Tree, entry: StatusEntry) -> List[ModuleSignature]:
    """Signatures of the module files of a build line (none for added/broken lines)."""
    if entry.kernel is None or entry.arch is None:
        return []
    module_dir = tree.built_module_dir(entry.module, entry.version, entry.kernel, entry.arch)
    return [ModuleSignature(f, signature_info(f)) for f in built_module_files(module_dir)]


class _Silent:
    """A reporter that swallows dkms.conf warnings: status never prints them [fix D-05]."""

    def warn(self, text: str) -> None:
        return None

    def deprecated(self, text: str) -> None:
        return None

    def raw_err(self, text: str) -> None:
        return None


class StatusReader:
    def __init__(self, session: Session) -> None:
        self.session = session
        self.tree = session.tree
        self.install_tree = session.settings.install_tree

    def _suffix(self, kernel: str) -> str:
        return module_suffix(self.install_tree, kernel)

    def _conf(self, m: str, v: str, t: Target) -> Optional[ModuleConf]:
        s = self.session
        try:
            return s.confs.read(
                m,
                v,
                s.kernel(t.kernel, t.arch),
                s.conf_file(m, v),
                strict=False,
                report=_Silent(),
                records_only=True,
            )
        except DkmsError:
            return None

    def _built_file(self, module_dir: Path, name: str, kernel: str) -> Optional[Path]:
        plain = module_dir / f"{name}.ko"
        if os.path.lexists(plain):
            return plain
        suffix = self._suffix(kernel)
        return compressed_or_uncompressed(module_dir, name, suffix) if suffix else None

    def _problems(self, m: str, v: str, t: Target, installed: bool) -> Tuple[bool, bool]:
        """(built_modules_missing, differs_from_installed) for a build line."""
        conf = self._conf(m, v, t)
        if conf is None:
            return False, False
        module_dir = self.tree.built_module_dir(m, v, t.kernel, t.arch)
        fingerprint = read_fingerprint(self.tree.target_dir(m, v, t.kernel, t.arch)) if installed else {}
        kdir = self.install_tree / t.kernel
        for r in conf.records:
            built = self._built_file(module_dir, r.dest_name, t.kernel)
            if built is None:
                return True, False
            if not installed:
                continue
            entry = fingerprint.get(r.dest_name)
            if (
                entry is not None
                and entry.built == str(built)
                and stat_tuple(built) == entry.built_stat
                and stat_tuple(Path(entry.installed)) == entry.installed_stat
            ):
                if not entry.identical:
                    return False, True
                continue
            via_link = self._built_file(
                self.tree.kernel_link(m, t.kernel, t.arch) / "module", r.dest_name, t.kernel
            )
            found = locate_installed(kdir, r, via_link or built, self._suffix(t.kernel))
            if found is None or not same_contents(built, found):
                return False, True
        return False, False

    def entries(
        self,
        m_pattern: Optional[str],
        v_pattern: Optional[str],
        passes: Sequence[Tuple[Optional[str], Optional[str]]],
    ) -> List[List[StatusEntry]]:
        """One list of entries per kernel pass (status.md §3); invalid filters raise DkmsError (3, 2)."""
        check_module_version(m_pattern, v_pattern)
        for k_pattern, a_pattern in passes:
            if k_pattern:
                check_kernel_pattern(k_pattern, "kernel version")
            if a_pattern:
                check_kernel_pattern(a_pattern, "architecture")
        pairs = list(self.tree.module_versions(m_pattern or None, v_pattern or None))
        out: List[List[StatusEntry]] = []
        failed: Dict[Tuple[str, str], StatusEntry] = {}
        for k_pattern, a_pattern in passes:
            entries: List[StatusEntry] = []
            for m, v in pairs:
                if (m, v) in failed:
                    entries.append(failed[(m, v)])
                    continue
                try:
                    entries.extend(self._module_entries(m, v, k_pattern, a_pattern))
                except Exception as exc:  # one module that cannot be looked at must not hide the others
                    if runner.DEBUG:
                        traceback.print_exc()
                    failed[(m, v)] = StatusEntry(m, v, None, None, "broken", problem=describe(exc))
                    entries.append(failed[(m, v)])
            out.append(entries)
        return out

    def _module_entries(
        self, m: str, v: str, k_pattern: Optional[str], a_pattern: Optional[str]
    ) -> List[StatusEntry]:
        """The lines of one m/v in one kernel pass (status.md §3)."""
        if self.tree.is_broken(m, v):
            return [StatusEntry(m, v, None, None, "broken")]
        if not self.tree.is_added(m, v):
            return []
        builds = self.tree.builds(m, v, k_pattern or None, a_pattern or None)
        if not builds:
            return [StatusEntry(m, v, None, None, "added")]
        entries: List[StatusEntry] = []
        for t in builds:
            installed = self.tree.installed_version(m, t.kernel, t.arch) == v
            missing, differs = self._problems(m, v, t, installed)
            entries.append(
                StatusEntry(
                    m,
                    v,
                    t.kernel,
                    t.arch,
                    "installed" if installed else "built",
                    original_modules=self.tree.has_original_modules(m, t.kernel, t.arch),
                    built_modules_missing=missing,
                    differs_from_installed=differs,
                )
            )
        return entries


def passes_for(kernels: Sequence[str], arches: Sequence[str]) -> List[Tuple[Optional[str], Optional[str]]]:
    """Kernel passes of status.md §3: without -k one pass (first -a), else one per -k with its arch."""
    if not kernels:
        return [(None, arches[0] if arches else None)]
    if len(arches) == 1:
        return [(k, arches[0]) for k in kernels]
    return [(k, arches[i] if i < len(arches) else None) for i, k in enumerate(kernels)]


def _signatures(session: Session, e: StatusEntry) -> List[ModuleSignature]:
    """:func:`module_signatures`; a module file that cannot be read is reported, not fatal."""
    try:
        return module_signatures(session.tree, e)
    except Exception as exc:
        session.console.warn(
            f"{e.module}/{e.version}, {e.kernel}, {e.arch}: the signatures cannot be read: {describe(exc)}"
        )
        return []


def _warn_unreadable(session: Session, e: StatusEntry) -> None:
    session.console.warn(
        f"{e.module}/{e.version} cannot be looked at, so it is listed as broken: {e.problem}"
    )


def render_text(session: Session, per_pass: Iterable[List[StatusEntry]]) -> None:
    console = session.console
    verbose = session.settings.verbose
    warned = set()
    for entries in per_pass:
        for e in entries:
            console.info(e.line())
            if verbose:
                for sig in _signatures(session, e):
                    console.info(f"  {sig.describe()}")
            if e.problem is not None:
                if e not in warned:  # once, not once per kernel pass
                    warned.add(e)
                    _warn_unreadable(session, e)
            elif e.state == "broken":
                console.error(
                    f"{e.module}/{e.version}: Missing the module source directory or the symbolic link pointing "
                    "to it. Manual intervention is required!"
                )


def json_text(value: str) -> str:
    """A string as valid Unicode for JSON: each byte of a name that is not UTF-8 becomes ``\\xNN``.

    Names come from the file system, where they are bytes; Python keeps a byte that is not
    UTF-8 as a lone surrogate, which ``json`` would write as ``\\udcNN``, and which strict JSON
    parsers refuse. The text output prints the bytes themselves, as upstream does.
    """
    try:
        raw = value.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # a surrogate that is no escaped byte
        raw = value.encode("utf-8", "surrogatepass")
    return raw.decode("utf-8", "backslashreplace")


def _json_safe(value: object) -> object:
    if isinstance(value, str):
        return json_text(value)
    if isinstance(value, dict):
        return {json_text(str(k)): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    return value


def render_json(session: Session, per_pass: Iterable[List[StatusEntry]]) -> None:
    """The versioned document of status.md §5, plus ``built_modules``: one item per built module file
    of the listed builds (``module``, ``version``, ``kernel``, ``arch`` name the build line)."""
    seen = set()
    entries = []
    modules: List[Dict[str, object]] = []
    for pass_entries in per_pass:
        for e in pass_entries:
            if e in seen:
                continue
            seen.add(e)
            entries.append(e.as_json())
            if e.problem is not None:
                _warn_unreadable(session, e)
            for sig in _signatures(session, e):
                build = {"module": e.module, "version": e.version, "kernel": e.kernel, "arch": e.arch}
                modules.append({**build, **sig.as_json()})
    doc = {
        "schema": JSON_SCHEMA,
        "schema_version": JSON_SCHEMA_VERSION,
        "generator": f"pydkms {__version__}",
        "entries": entries,
        "built_modules": modules,
    }
    session.console.info(json.dumps(_json_safe(doc), separators=(", ", ": ")))
