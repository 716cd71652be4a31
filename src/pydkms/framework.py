"""framework.conf: global settings (spec/framework-conf.md).

Precedence: built-in default < environment (where honoured) < framework.conf <
framework.conf.d/*.conf < --dkmsframework files < command-line options.

``PYDKMS_SYSCONFDIR`` relocates ``/etc/dkms`` (framework files, per-module overrides,
``no-autoinstall``) so tests never read the host's configuration.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from .cliargs import jobs_problem
from .confeval import EvalMode, EvalRequest, OutsideSubsetError, evaluate
from .confeval.protocol import FRAMEWORK_KEYS
from .errors import DkmsError

DEFAULT_ETC_DIR = Path("/etc/dkms")

#: keys read at start-up whose default may come from the environment (framework-conf.md §4)
_ENV_KEYS = (
    "autoinstall_all_kernels",
    "modprobe_on_install",
    "parallel_jobs",
    "post_transaction",
    "sign_file",
    "mok_signing_key",
    "mok_certificate",
)

SIGNING_KEYS = ("sign_file", "mok_signing_key", "mok_certificate", "try_sign_modules")


def etc_dir() -> Path:
    """The directory that plays /etc/dkms."""
    return Path(os.environ.get("PYDKMS_SYSCONFDIR") or DEFAULT_ETC_DIR)


def directive_injections(environ: Mapping[str, str], allowed: Sequence[str]) -> Tuple[Tuple[str, str], ...]:
    """``DKMS_DIRECTIVE*`` environment entries as (NAME, VALUE) (dkms-conf.md §2.6).

    VALUE is the text after ``NAME=`` up to the next ``=`` (upstream truncation). Names outside
    ``allowed`` are ignored with a warning [fix D-16].
    """
    out: List[Tuple[str, str]] = []
    for var in sorted(environ):
        if not var.startswith("DKMS_DIRECTIVE"):
            continue
        raw = environ[var]
        if "=" not in raw:
            continue
        name, _, rest = raw.partition("=")
        value = rest.split("=", 1)[0]
        if name in allowed:
            out.append((name, value))
        else:
            print(
                f"Warning: ignoring {var}: '{name}' is not a setting that can be injected.",
                file=sys.stderr,
            )
    return tuple(out)


def _default_jobs() -> str:
    if os.access("/usr/bin/nproc", os.X_OK):
        return str(os.cpu_count() or 1)
    return "1"


@dataclass(frozen=True)
class Settings:
    """The effective framework settings of one invocation."""

    dkms_tree: Path = Path("/var/lib/dkms")
    source_tree: Path = Path("/usr/src")
    install_tree: Path = Path("/lib/modules")
    tmp_location: Path = Path("/tmp")
    verbose: bool = False
    symlink_modules: bool = False
    autoinstall_all_kernels: str = ""
    modprobe_on_install: bool = False
    parallel_jobs: str = "1"
    compress_gzip_opts: str = ""
    compress_xz_opts: str = "--check=crc32 --lzma2=dict=1MiB"
    compress_zstd_opts: str = "-q --rm -T0"
    post_transaction: str = ""
    build_environment: str = ""
    continue_on_error: str = "true"
    conf_evaluation: EvalMode = EvalMode.AUTO
    etc_dir: Path = DEFAULT_ETC_DIR
    #: framework files taken at start-up (existing, and not skipped), in evaluation order; the lazy
    #: re-reads of §5 evaluate these
    files: Tuple[Path, ...] = ()
    #: raw values of every key as evaluated at start-up (including the lazy ones)
    raw: Mapping[str, str] = field(default_factory=dict)

    def context(self, kernelver: str = "", arch: str = "") -> Dict[str, str]:
        return {
            "dkms_tree": str(self.dkms_tree),
            "source_tree": str(self.source_tree),
            "install_tree": str(self.install_tree),
            "tmp_location": str(self.tmp_location),
            "kernelver": kernelver,
            "arch": arch,
        }

    def reread(self, keys: Sequence[str], kernelver: str, arch: str) -> Dict[str, str]:
        """Lazy re-read of ``keys`` with ``kernelver``/``arch`` bound (framework-conf.md §5)."""
        # self.files all parsed at start-up: no syntax check again
        values, _, _ = _evaluate_files(
            self.files, self.conf_evaluation, self.context(kernelver, arch), self.raw, check_syntax=False
        )
        return {k: values.get(k, self.raw.get(k, "")) for k in keys}


class FrameworkError(DkmsError):
    """A framework file that cannot be read, for an action that must not run without it (exit 1)."""

    def __init__(self, path: Path, problem: str) -> None:
        super().__init__(
            1,
            f"{path}: {problem}",
            hint=(
                "Nothing was done: without this file dkms could work on the wrong trees. "
                "Fix it, or move it away; only 'dkms status' goes on without it."
            ),
        )
        self.path = path
        self.problem = problem


def _skip_or_fail(path: Path, problem: str, strict: bool) -> None:
    """A framework file that cannot be used: an error when ``strict``, else a warning (it is skipped)."""
    if strict:
        raise FrameworkError(path, problem)
    print(f"Warning: {path}: skipped, {problem}", file=sys.stderr)


def _evaluate_files(
    files: Sequence[Path],
    mode: EvalMode,
    context: Mapping[str, str],
    initial: Mapping[str, str],
    *,
    check_syntax: bool = True,
    strict: bool = False,
) -> Tuple[Dict[str, str], Tuple[Path, ...], Dict[str, Path]]:
    """Evaluate framework files one after another; a file that fails is reported and skipped.

    With ``strict`` a file that fails raises :class:`FrameworkError` instead. Returns the values,
    the files that were taken (the lazy re-reads use only those) and, per key, the last file
    that set it.
    """
    values: Dict[str, str] = dict(initial)
    taken: List[Path] = []
    origins: Dict[str, Path] = {}
    environ = os.environ
    injections = directive_injections(environ, FRAMEWORK_KEYS)
    for path in files:
        ctx = {k: v for k, v in context.items() if k not in FRAMEWORK_KEYS}
        request = EvalRequest(
            files=(path,),
            whitelist=FRAMEWORK_KEYS,
            context=ctx,
            environ=environ,
            injections=injections,
            mode=mode,
            strict=True,
            initial={k: {0: v} for k, v in values.items()},
        )
        try:
            result = evaluate(request)
        except OutsideSubsetError as exc:
            _skip_or_fail(
                path, f"it is not plain settings ({exc.construct.text}, line {exc.construct.line}).", strict
            )
            continue
        except OSError as exc:
            _skip_or_fail(path, f"it cannot be read: {exc.strerror or exc}.", strict)
            continue
        except DkmsError as exc:
            _skip_or_fail(path, f"it cannot be evaluated: {exc}", strict)
            continue
        if check_syntax and result.evaluator == "bash":
            from .confeval.bash import syntax_error  # only files outside the data subset get here

            problem = syntax_error(path, environ)
            if problem:
                _skip_or_fail(path, f"bash cannot parse it: {problem}", strict)
                continue
        if result.stderr:
            sys.stderr.write(result.stderr)
        for key, arr in result.values.items():
            if 0 in arr:
                values[key] = arr[0]
                origins[key] = path
        taken.append(path)
    return values, tuple(taken), origins


def _readable_file(path: Path, strict: bool = False) -> bool:
    """An existing file we can read; one we cannot is reported and skipped (§1), or, ``strict``, an error."""
    try:
        if not path.is_file():
            return False
    except OSError:
        return False
    if not os.access(path, os.R_OK):
        _skip_or_fail(path, "it is not readable.", strict)
        return False
    return True


def framework_files(etc: Path, extra: Sequence[Path] = (), *, strict: bool = False) -> Tuple[Path, ...]:
    """The framework files in evaluation order (§1); ``strict``: one that cannot be read is an error."""
    files: List[Path] = []
    main = etc / "framework.conf"
    if _readable_file(main, strict):
        files.append(main)
    dropin = etc / "framework.conf.d"
    try:
        names = sorted((p.name for p in dropin.iterdir() if p.name.endswith(".conf")), key=os.fsencode)
    except (FileNotFoundError, NotADirectoryError):
        names = []
    except OSError as exc:
        _skip_or_fail(dropin, f"the directory cannot be read: {exc.strerror or exc}.", strict)
        names = []
    files.extend(dropin / n for n in names if _readable_file(dropin / n, strict))
    for path in extra:
        if not os.access(path, os.R_OK) or not path.is_file():
            raise DkmsError(
                2, f"Framework file {path} given with --dkmsframework does not exist or is not readable."
            )
        files.append(path)
    return tuple(files)


def _read_conf_evaluation(files: Sequence[Path]) -> EvalMode:
    """``conf_evaluation`` is itself always read with the data evaluator, leniently (§9)."""
    mode = EvalMode.AUTO
    for path in files:
        request = EvalRequest(
            files=(path,),
            whitelist=("conf_evaluation",),
            context={},
            environ=os.environ,
            mode=EvalMode.DATA,
            strict=False,
        )
        try:
            result = evaluate(request)
        except (OSError, DkmsError, OutsideSubsetError):
            continue
        value = result.values.get("conf_evaluation", {}).get(0)
        if value is None:
            continue
        try:
            mode = EvalMode(value.strip())
        except ValueError:
            print(
                f"Warning: {path}: conf_evaluation='{value}' is not auto, data or bash; using auto.",
                file=sys.stderr,
            )
            mode = EvalMode.AUTO
    return mode


def _parallel_jobs(values: Mapping[str, str], origins: Mapping[str, Path], warn: bool) -> str:
    """``parallel_jobs`` if it is a job count, else the default (with a warning if ``warn``)."""
    value = values.get("parallel_jobs") or ""
    problem = jobs_problem(value)
    if problem is None:
        return value or _default_jobs()
    default = _default_jobs()
    if warn:
        origin = origins.get("parallel_jobs")
        where = (
            f"{origin}: parallel_jobs=" if origin is not None else "the environment variable parallel_jobs="
        )
        print(f"Warning: {where}{problem} Using {default}.", file=sys.stderr)
    return default


def load(
    extra_files: Sequence[Path] = (), environ: Optional[Mapping[str, str]] = None, *, strict: bool = False
) -> Settings:
    """Start-up read of the framework files (before the command line is applied).

    ``strict`` is for the actions that change something: a framework file that cannot be read
    raises :class:`FrameworkError` (exit 1) instead of being skipped with a warning, since the
    keys it sets (``dkms_tree``, ``source_tree``, …) would otherwise silently fall back to the
    real trees. A ``parallel_jobs`` that is not a job count falls back to the default, with a
    warning when ``strict``.
    """
    env = os.environ if environ is None else environ
    etc = etc_dir()
    files = framework_files(etc, extra_files, strict=strict)
    mode = _read_conf_evaluation(files)
    initial: Dict[str, str] = {
        "dkms_tree": "/var/lib/dkms",
        "source_tree": "/usr/src",
        "install_tree": "/lib/modules",
        "tmp_location": env.get("TMPDIR") or "/tmp",
        "compress_xz_opts": "--check=crc32 --lzma2=dict=1MiB",
        "compress_zstd_opts": "-q --rm -T0",
    }
    for key in _ENV_KEYS:
        if env.get(key):
            initial[key] = env[key]
    context = {
        "dkms_tree": initial["dkms_tree"],
        "source_tree": initial["source_tree"],
        "install_tree": initial["install_tree"],
        "tmp_location": initial["tmp_location"],
        "kernelver": "",
        "arch": "",
    }
    values, files, origins = (
        _evaluate_files(files, mode, context, initial, strict=strict) if files else (dict(initial), (), {})
    )
    return Settings(
        dkms_tree=Path(os.path.abspath(values["dkms_tree"] or "/var/lib/dkms")),
        source_tree=Path(os.path.abspath(values["source_tree"] or "/usr/src")),
        install_tree=Path(os.path.abspath(values["install_tree"] or "/lib/modules")),
        tmp_location=Path(values["tmp_location"] or "/tmp"),
        verbose=bool(values.get("verbose")),
        symlink_modules=bool(values.get("symlink_modules")),
        autoinstall_all_kernels=values.get("autoinstall_all_kernels", ""),
        modprobe_on_install=bool(values.get("modprobe_on_install")),
        parallel_jobs=_parallel_jobs(values, origins, warn=strict),
        compress_gzip_opts=values.get("compress_gzip_opts", ""),
        compress_xz_opts=values.get("compress_xz_opts", ""),
        compress_zstd_opts=values.get("compress_zstd_opts", ""),
        post_transaction=values.get("post_transaction", ""),
        build_environment=values.get("build_environment", ""),
        continue_on_error=values.get("continue_on_error", "true"),
        conf_evaluation=mode,
        etc_dir=etc,
        files=files,
        raw=values,
    )


def with_cli(
    settings: Settings,
    *,
    dkms_tree: Optional[Path] = None,
    source_tree: Optional[Path] = None,
    install_tree: Optional[Path] = None,
    verbose: bool = False,
    symlink_modules: bool = False,
    modprobe_on_install: bool = False,
    jobs: Optional[str] = None,
) -> Settings:
    """Apply command-line options, which always win."""
    changes: Dict[str, object] = {}
    # relative paths are taken from the current directory once, so links made in the tree work
    if dkms_tree is not None:
        changes["dkms_tree"] = Path(os.path.abspath(dkms_tree))
    if source_tree is not None:
        changes["source_tree"] = Path(os.path.abspath(source_tree))
    if install_tree is not None:
        changes["install_tree"] = Path(os.path.abspath(install_tree))
    if verbose:
        changes["verbose"] = True
    if symlink_modules:
        changes["symlink_modules"] = True
    if modprobe_on_install:
        changes["modprobe_on_install"] = True
    if jobs is not None:
        changes["parallel_jobs"] = jobs
    return replace(settings, **changes)  # type: ignore[arg-type]
