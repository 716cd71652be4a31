"""The frozen model of one module's dkms.conf for one (m, v, K, A) (spec/dkms-conf.md).

:class:`ConfReader` evaluates the conf plus its ``/etc/dkms`` overrides (through
:mod:`pydkms.confeval`), applies ``--directive`` entries, derives the internal values upstream
computes (records, make command, patches, exclusion) and validates them (§5).
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, FrozenSet, List, Optional, Protocol, Tuple

from .confeval import (
    Construct,
    EvalMode,
    EvalRequest,
    EvalResult,
    OutsideSubsetError,
    RefusedConfError,
    TooDeepError,
    evaluate,
)
from .confeval.protocol import DKMS_CONF_WHITELIST
from .distro import Distro
from .errors import ConfError, DkmsError
from .framework import directive_injections
from .kernel import Kernel
from .names import name_problem, printable
from .posixre import ere_search
from .version import obsolete_key, ver

#: accepted without effect (dkms-conf.md §14): the whitelist ends with them, from CLEAN on
DEPRECATED = DKMS_CONF_WHITELIST[DKMS_CONF_WHITELIST.index("CLEAN") :]
_TRUE_CLEAN = ("true", "/bin/true", "/usr/bin/true")


@dataclass(frozen=True)
class ModuleRecord:
    """One module of the package (index i of the BUILT_/DEST_MODULE_* family)."""

    index: int
    built_name: str
    built_location: str  # relative to build/, '' or ending in '/'
    dest_name: str
    dest_location: str  # DEST_MODULE_LOCATION[i] as written
    install_location: str  # after the family override (tree.md §6)
    strip: bool

    @property
    def built_path(self) -> str:
        return f"{self.built_location}{self.built_name}"


@dataclass(frozen=True)
class ModuleConf:
    """Everything pydkms needs from a dkms.conf for one (m, v, K, A)."""

    path: Path
    files: Tuple[Path, ...]
    module: str
    version: str
    kernel: str
    arch: str
    package_name: str
    package_version: str
    records: Tuple[ModuleRecord, ...]
    make_command: str
    patches: Tuple[str, ...]
    pre_build: str
    post_build: str
    pre_install: str
    post_install: str
    post_add: str
    post_remove: str
    build_depends: Tuple[str, ...]
    build_depends_rebuild: bool
    autoinstall: bool
    no_weak_modules: bool
    obsolete_by: str
    exclusion: Tuple[str, ...]  # reasons; non-empty means BUILD_EXCLUSIVE does not match
    values: Mapping[str, Mapping[int, str]] = field(repr=False)
    evaluator: str = "data"
    outside: Optional[Construct] = None

    @property
    def num_modules(self) -> int:
        return len(self.records)

    @property
    def excluded(self) -> bool:
        return bool(self.exclusion)

    def scalar(self, name: str) -> str:
        return self.values.get(name, {}).get(0, "")


def _elements(values: Mapping[str, Mapping[int, str]], name: str) -> List[str]:
    """Elements of an array in index order (bash ``"${X[@]}"``)."""
    arr = values.get(name, {})
    return [arr[i] for i in sorted(arr)]


#: More module records than any package has; beyond it the arrays are refused, not expanded.
MAX_MODULE_RECORDS = 1024


def _count(values: Mapping[str, Mapping[int, str]], name: str) -> int:
    """``${#X[@]}``: number of set elements."""
    return len(values.get(name, {}))


def override_files(etc: Path, m: str, v: str, k: str, a: str) -> Tuple[Path, ...]:
    """The existing /etc/dkms override files, in order (dkms-conf.md §2.6)."""
    names = (
        f"{m}.conf",
        f"{m}-{v}.conf",
        f"{m}-{v}-{k}.conf",
        f"{m}-{v}-{k}-{a}.conf",
        f"{m}--{k}.conf",
        f"{m}--{k}-{a}.conf",
    )
    return tuple(etc / n for n in names if (etc / n).is_file())


@dataclass
class _CacheEntry:
    dependencies: Optional[FrozenSet[str]]
    context: Dict[str, str]
    result: EvalResult


class ConfReader:
    """Evaluates dkms.conf files for one invocation, with the caching of §2.7."""

    def __init__(
        self,
        *,
        etc_dir: Path,
        mode: EvalMode,
        distro: Distro,
        base_context: Mapping[str, str],
        directives: Sequence[Tuple[str, str]] = (),
        conf_override: Optional[Path] = None,
        addon_modules_dir: str = "",
    ) -> None:
        self.etc_dir = etc_dir
        self.mode = mode
        self.distro = distro
        self.base_context = dict(base_context)
        self.directives = tuple(directives)
        self.conf_override = conf_override
        self.addon_modules_dir = addon_modules_dir
        self._cache: Dict[Tuple[Tuple[Path, int, int], ...], List[_CacheEntry]] = {}
        self._warned_outside: set[Path] = set()
        self._records_cache: Dict[Tuple[int, str, str, bool], Tuple[EvalResult, ModuleConf]] = {}
        self.injections = directive_injections(os.environ, DKMS_CONF_WHITELIST)

    # -- raw evaluation ------------------------------------------------------------------------
    def _context(self, m: str, v: str, kernel: Kernel) -> Dict[str, str]:
        ctx = dict(self.base_context)
        ctx.update(
            kernelver=kernel.release,
            arch=kernel.arch,
            kernel_source_dir=str(kernel.source_dir),
            kernel_config=str(kernel.config),
            module=m,
            module_version=v,
            running_distribution=self.distro.family,
        )
        return ctx

    def _evaluate(self, files: Tuple[Path, ...], context: Dict[str, str], strict: bool) -> EvalResult:
        key_parts = []
        for f in files:
            try:
                st = f.stat()
            except OSError as exc:
                raise DkmsError(4, f"Could not read {f}: {exc.strerror}.") from exc
            key_parts.append((f, st.st_mtime_ns, st.st_size))
        key = (*key_parts, (Path(f"strict={strict}"), 0, 0))
        for entry in self._cache.get(key, []):
            names = (
                entry.dependencies
                if entry.dependencies is not None
                else frozenset(context) | frozenset(entry.context)
            )
            if all(context.get(n) == entry.context.get(n) for n in names):
                return entry.result
        request = EvalRequest(
            files=files,
            whitelist=DKMS_CONF_WHITELIST,
            context=context,
            environ=os.environ,
            injections=self.injections,
            mode=self.mode,
            strict=strict,
        )
        result = evaluate(request)
        self._cache.setdefault(key, []).append(_CacheEntry(result.dependencies, dict(context), result))
        return result

    def conf_path(self, tree_source: Path) -> Path:
        return self.conf_override if self.conf_override is not None else tree_source / "dkms.conf"

    def read(
        self,
        m: str,
        v: str,
        kernel: Kernel,
        conf: Path,
        *,
        strict: bool,
        report: Optional[Reporter] = None,
        records_only: bool = False,
    ) -> ModuleConf:
        """Evaluate and validate. Raises DkmsError(4) if unreadable, ConfError(8) if invalid.

        ``records_only`` (status) skips what needs the kernel: the make command, patches and the
        BUILD_EXCLUSIVE check are left empty, and the result is cached per evaluation result.
        """
        if not os.access(conf, os.R_OK) or not conf.is_file():
            raise DkmsError(4, f"Could not locate dkms.conf file: {conf} does not exist or is not readable.")
        overrides = override_files(self.etc_dir, m, v, kernel.release, kernel.arch) if m else ()
        files = (conf, *overrides)
        context = self._context(m, v, kernel)
        try:
            result = self._evaluate(files, context, strict)
        except RefusedConfError as exc:
            c = exc.construct
            raise ConfError(f"{c.file}:{c.line}: {c.text}; the file is refused.") from exc
        except TooDeepError as exc:
            raise ConfError(
                f'{exc.construct}. Such a file is refused unless conf_evaluation="bash" lets bash read it.'
            ) from exc
        except OutsideSubsetError as exc:
            c = exc.construct
            raise ConfError(
                f'{c.file}:{c.line}: {c.text} is not allowed with conf_evaluation="data" '
                "(the file would have to be executed by bash).",
            ) from exc
        if report is not None:
            if result.outside is not None and result.outside.file not in self._warned_outside:
                self._warned_outside.add(result.outside.file)
                if result.evaluator == "bash":
                    report.warn(
                        f"{result.outside.file} is evaluated by bash because of {result.outside.text} "
                        f"on line {result.outside.line}."
                    )
            for w in result.warnings:
                if result.evaluator == "data" and result.outside is not None:
                    report.warn(w)
            if result.stderr:
                report.raw_err(result.stderr)
        if records_only and not self.directives:
            key = (id(result), m, v, strict)
            cached = self._records_cache.get(key)
            if cached is None or cached[0] is not result:
                derived = self._derive(
                    m,
                    v,
                    kernel,
                    conf,
                    files,
                    {k: dict(x) for k, x in result.values.items()},
                    result,
                    strict,
                    None,
                    records_only=True,
                )
                self._records_cache[key] = (result, derived)
                return derived
            return cached[1]
        values = {k: dict(v_) for k, v_ in result.values.items()}
        for name, value in self.directives:
            if name in DKMS_CONF_WHITELIST:
                values.setdefault(name, {})[0] = value
        if strict and report is not None:
            self._deprecations(files, context, values, report)
        return self._derive(
            m, v, kernel, conf, files, values, result, strict, report, records_only=records_only
        )

    def _deprecations(
        self,
        files: Tuple[Path, ...],
        context: Dict[str, str],
        values: Mapping[str, Mapping[int, str]],
        report: Reporter,
    ) -> None:
        active = [
            n for n in DEPRECATED if values.get(n) and not (n == "CLEAN" and values[n].get(0) in _TRUE_CLEAN)
        ]
        if not active:
            return
        # A name set after file i stays set in every later file (values survive), so find the first
        # prefix of the chain in which it is set and name every file from there on.
        first: Dict[str, int] = {}
        for i in range(len(files)):
            prefix = files[: i + 1]
            res = values if i == len(files) - 1 else self._evaluate(prefix, context, True).values
            for n in active:
                if n not in first and res.get(n):
                    first[n] = i
        for i, f in enumerate(files):
            for n in active:
                if first.get(n, len(files)) <= i:
                    report.deprecated(f"{n} ({f})")

    # -- derivation and validation (§5, §6, §7, §9, §10) ------------------------------------------
    def _derive(
        self,
        m: str,
        v: str,
        kernel: Kernel,
        conf: Path,
        files: Tuple[Path, ...],
        values: Dict[str, Dict[int, str]],
        result: EvalResult,
        strict: bool,
        report: Optional[Reporter],
        *,
        records_only: bool = False,
    ) -> ModuleConf:
        origins = result.origins or {}
        errors: List[str] = []
        family = ("BUILT_MODULE_NAME", "BUILT_MODULE_LOCATION", "DEST_MODULE_NAME", "DEST_MODULE_LOCATION")

        def problem(message: str, directive: str, index: int = 0) -> None:
            """Record an error, naming the file and line that set the value when known."""
            where = origins.get(directive, {}).get(index)
            if where is None and directive in family:
                where = next((origins[n][index] for n in family if index in origins.get(n, {})), None)
            if where is None:
                errors.append(f"{conf}: {message}")
            else:  # line 0: bash evaluated the chain, so only the file that set the value is known
                errors.append(f"{where[0]}:{where[1]}: {message}" if where[1] else f"{where[0]}: {message}")

        name = values.get("PACKAGE_NAME", {}).get(0, "")
        version = values.get("PACKAGE_VERSION", {}).get(0, "")
        if not name:
            problem("PACKAGE_NAME is not set or empty.", "PACKAGE_NAME")
        if not version:
            problem("PACKAGE_VERSION is not set or empty.", "PACKAGE_VERSION")
        # they name directories of the trees: no way out of them [pydkms]
        for directive, value in (("PACKAGE_NAME", name), ("PACKAGE_VERSION", version)):
            why = name_problem(value) if value else None
            if why is not None:
                problem(
                    f"{directive}='{printable(value)}' cannot name a directory of the trees: {why}.",
                    directive,
                )

        max_index = max((i for n in family for i in values.get(n, {})), default=-1)
        num_modules = max_index + 1
        if num_modules > MAX_MODULE_RECORDS:
            # every index below the highest is a record (§6): a huge index would mean millions
            directive = next(n for n in family if max_index in values.get(n, {}))
            problem(
                f"{directive}[{max_index}]: module index too large (records #0 to #{MAX_MODULE_RECORDS - 1} "
                "are supported).",
                directive,
                max_index,
            )
            num_modules = 0
        strip_values = values.get("STRIP", {})
        strip_arr: Dict[int, str] = dict(values.get("strip", {}))
        records: List[ModuleRecord] = []
        for i in range(num_modules):
            built_name = values.get("BUILT_MODULE_NAME", {}).get(i, "")
            built_loc = values.get("BUILT_MODULE_LOCATION", {}).get(i, "")
            dest_name = values.get("DEST_MODULE_NAME", {}).get(i, "")
            dest_loc = values.get("DEST_MODULE_LOCATION", {}).get(i, "")
            s = strip_values.get(i, "")
            if s[:1] in ("n", "N"):
                strip_arr[i] = "no"
            elif s[:1] in ("y", "Y"):
                strip_arr[i] = "yes"
            elif s == "":
                strip_arr[i] = strip_arr.get(0) or "yes"
            if not built_name and num_modules == 1:
                built_name = name
            if not dest_name:
                dest_name = built_name
            if built_loc and not built_loc.endswith("/"):
                built_loc += "/"
            if not built_name:
                problem(f"record #{i}: BUILT_MODULE_NAME[{i}] is not set or empty.", "BUILT_MODULE_NAME", i)
            if built_name.endswith((".o", ".ko")):
                problem(
                    f"record #{i}: BUILT_MODULE_NAME[{i}]='{built_name}' must be the name without '.o' or '.ko'.",
                    "BUILT_MODULE_NAME",
                    i,
                )
            if dest_name.endswith((".o", ".ko")):
                problem(
                    f"record #{i}: DEST_MODULE_NAME[{i}]='{dest_name}' must be the name without '.o' or '.ko'.",
                    "DEST_MODULE_NAME" if i in values.get("DEST_MODULE_NAME", {}) else "BUILT_MODULE_NAME",
                    i,
                )
            # file and directory names that must stay inside the build dir and $install_tree/K [pydkms]
            for directive, value in (("BUILT_MODULE_NAME", built_name), ("DEST_MODULE_NAME", dest_name)):
                why = name_problem(value) if value and i in values.get(directive, {}) else None
                if why is not None:
                    problem(
                        f"record #{i}: {directive}[{i}]='{printable(value)}' must be a file name: {why}.",
                        directive,
                        i,
                    )
            if built_loc.startswith("/") or ".." in built_loc.split("/"):
                problem(
                    f"record #{i}: BUILT_MODULE_LOCATION[{i}]='{built_loc}' must be a path inside the build "
                    "directory: relative, without '..'.",
                    "BUILT_MODULE_LOCATION",
                    i,
                )
            if ".." in dest_loc.split("/"):
                problem(
                    f"record #{i}: DEST_MODULE_LOCATION[{i}]='{dest_loc}' must not contain '..'.",
                    "DEST_MODULE_LOCATION",
                    i,
                )
            if not dest_loc:
                problem(
                    f"record #{i}: DEST_MODULE_LOCATION[{i}] is not set or empty.", "DEST_MODULE_LOCATION", i
                )
            elif not dest_loc.startswith(("/kernel", "/updates", "/extra")):
                problem(
                    f"record #{i}: DEST_MODULE_LOCATION[{i}]='{dest_loc}' must begin with /kernel, /updates or /extra.",
                    "DEST_MODULE_LOCATION",
                    i,
                )
            records.append(
                ModuleRecord(
                    index=i,
                    built_name=built_name,
                    built_location=built_loc,
                    dest_name=dest_name,
                    dest_location=dest_loc,
                    install_location=self.distro.dest_dir(dest_loc, self.addon_modules_dir),
                    strip=strip_arr.get(i, "") != "no",
                )
            )

        flags: Dict[str, bool] = {}
        for flag in ("AUTOINSTALL", "BUILD_DEPENDS_REBUILD", "NO_WEAK_MODULES"):
            raw = values.get(flag, {}).get(0, "")
            if raw == "" or raw.lower() == "yes":
                flags[flag] = bool(raw)
            elif raw.lower() == "no":
                flags[flag] = False
            else:
                problem(f"{flag}='{raw}' is not allowed: use yes, no or leave it empty.", flag)
                flags[flag] = False

        if strict and not errors:
            if num_modules == 0 and report is not None:
                report.warn(f"{conf}: zero modules specified.")
            # a built module may be collected once, and a destination name used once
            checks: Tuple[Tuple[str, Callable[[ModuleRecord], str], str], ...] = (
                ("BUILT_MODULE_NAME", lambda r: r.built_path, "module '{}' is already built by record #{}."),
                (
                    "DEST_MODULE_NAME",
                    lambda r: r.dest_name,
                    "DEST_MODULE_NAME '{}' is already used by record #{}.",
                ),
            )
            for directive, key, message in checks:
                first: Dict[str, int] = {}
                for r in records:
                    name_ = key(r)
                    if name_ in first:
                        set_by = directive if r.index in values.get(directive, {}) else "BUILT_MODULE_NAME"
                        problem(f"record #{r.index}: " + message.format(name_, first[name_]), set_by, r.index)
                    first.setdefault(name_, r.index)

        if errors:
            raise ConfError(
                f"{conf} is not a valid dkms.conf ({len(errors)} problem{'s' if len(errors) > 1 else ''}).",
                errors=tuple(errors),
            )

        make_command = ""
        patches: Tuple[str, ...] = ()
        exclusion: Tuple[str, ...] = ()
        if not records_only:
            make_command = self._make_command(m, v, kernel, values, report)
            patches = self._patches(kernel.release, values, report)
            exclusion = self._exclusion(kernel, values, report)
        deps: List[str] = []
        for element in _elements(values, "BUILD_DEPENDS"):
            deps.extend(element.split())
        return ModuleConf(
            path=conf,
            files=files,
            module=m,
            version=v,
            kernel=kernel.release,
            arch=kernel.arch,
            package_name=name,
            package_version=version,
            records=tuple(records),
            make_command=make_command,
            patches=patches,
            pre_build=values.get("PRE_BUILD", {}).get(0, ""),
            post_build=values.get("POST_BUILD", {}).get(0, ""),
            pre_install=values.get("PRE_INSTALL", {}).get(0, ""),
            post_install=values.get("POST_INSTALL", {}).get(0, ""),
            post_add=values.get("POST_ADD", {}).get(0, ""),
            post_remove=values.get("POST_REMOVE", {}).get(0, ""),
            build_depends=tuple(deps),
            build_depends_rebuild=flags["BUILD_DEPENDS_REBUILD"],
            autoinstall=flags["AUTOINSTALL"],
            no_weak_modules=flags["NO_WEAK_MODULES"],
            obsolete_by=values.get("OBSOLETE_BY", {}).get(0, ""),
            exclusion=exclusion,
            values=values,
            evaluator=result.evaluator,
            outside=result.outside,
        )

    def _match(self, pattern: str, text: str, what: str, report: Optional[Reporter]) -> bool:
        matched = ere_search(pattern, text)
        if matched is None:
            if report is not None:
                report.warn(f"{what}: '{pattern}' is not a valid regular expression; it matches nothing.")
            return False
        return matched

    def _make_command(
        self,
        m: str,
        v: str,
        kernel: Kernel,
        values: Mapping[str, Mapping[int, str]],
        report: Optional[Reporter],
    ) -> str:
        make = values.get("MAKE", {})
        match = values.get("MAKE_MATCH", {})
        candidate = ""
        if not match.get(0):
            candidate = make.get(0, "")
        for i in range(_count(values, "MAKE")):
            if (
                make.get(i)
                and match.get(i)
                and self._match(match[i], kernel.release, f"MAKE_MATCH[{i}]", report)
            ):
                candidate = make[i]
        if not candidate:
            # bash runs it: the paths dkms puts in are quoted (a tree path with a blank, a module
            # name with a ';'); a MAKE of the dkms.conf is the author's shell code, as upstream
            build = f"{self.base_context['dkms_tree']}/{m}/{v}/build"
            candidate = f"make -C {shlex.quote(str(kernel.source_dir))} M={shlex.quote(build)}"
        if kernel.needs_llvm():
            candidate += " LLVM=1"
        return candidate

    def _patches(
        self, release: str, values: Mapping[str, Mapping[int, str]], report: Optional[Reporter]
    ) -> Tuple[str, ...]:
        patch = values.get("PATCH", {})
        match = values.get("PATCH_MATCH", {})
        selected: List[str] = []
        for i in range(_count(values, "PATCH")):
            p = patch.get(i, "")
            if p and (not match.get(i) or self._match(match[i], release, f"PATCH_MATCH[{i}]", report)):
                selected.append(p)
        preset = values.get("patch_array", {})
        leftover = [preset[i] for i in sorted(preset) if i >= len(selected)]
        return tuple(selected + leftover)

    def _exclusion(
        self, kernel: Kernel, values: Mapping[str, Mapping[int, str]], report: Optional[Reporter]
    ) -> Tuple[str, ...]:
        def scalar(n: str) -> str:
            return values.get(n, {}).get(0, "")

        reasons: List[str] = []
        k, a = kernel.release, kernel.arch
        kmax = scalar("BUILD_EXCLUSIVE_KERNEL_MAX") or scalar("OBSOLETE_BY")

        def mismatch(directive: str, subject: str, what: str) -> None:
            """BUILD_EXCLUSIVE_KERNEL/ARCH: an ERE the kernel or arch must match (invalid: ignored)."""
            pattern = scalar(directive)
            if not pattern:
                return
            matched = ere_search(pattern, subject)
            if matched is None and report is not None:
                report.warn(f"{directive} '{pattern}' is not a valid regular expression; ignored.")
            if matched is False:
                reasons.append(f"{what} {subject} does not match {directive} '{pattern}'")

        mismatch("BUILD_EXCLUSIVE_KERNEL", k, "kernel")
        if (
            scalar("BUILD_EXCLUSIVE_KERNEL_MIN")
            and ver(k).encode() < ver(scalar("BUILD_EXCLUSIVE_KERNEL_MIN")).encode()
        ):
            reasons.append(
                f"kernel {k} is older than BUILD_EXCLUSIVE_KERNEL_MIN {scalar('BUILD_EXCLUSIVE_KERNEL_MIN')}"
            )
        if kmax and ver(k).encode() > ver(kmax).encode():
            reasons.append(f"kernel {k} is newer than BUILD_EXCLUSIVE_KERNEL_MAX {kmax}")
        mismatch("BUILD_EXCLUSIVE_ARCH", a, "arch")
        if scalar("BUILD_EXCLUSIVE_CONFIG") and kernel.has_config():
            for token in scalar("BUILD_EXCLUSIVE_CONFIG").split():
                if token.startswith("!"):
                    if kernel.config_enabled(token[1:]):
                        reasons.append(f"the kernel config has {token[1:]}")
                elif not kernel.config_enabled(token):
                    reasons.append(f"the kernel config lacks {token}")
        if scalar("build_exclude"):
            reasons.append("build_exclude is set")
        return tuple(reasons)


def is_obsolete(kernel_release: str, obsolete_by: str) -> bool:
    """OBSOLETE_BY install check (dkms-conf.md §12): W(K) >= W(OBSOLETE_BY)."""
    return obsolete_key(kernel_release).encode() >= obsolete_key(obsolete_by).encode()


class Reporter(Protocol):
    """Where conf evaluation reports warnings (the Console, or a sink that discards them)."""

    def warn(self, text: str) -> None: ...

    def deprecated(self, text: str) -> None: ...

    def raw_err(self, text: str) -> None: ...
