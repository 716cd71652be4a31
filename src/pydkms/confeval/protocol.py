"""Choosing the evaluator (spec/dkms-conf.md §2.3) and the whitelists of upstream."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple, TypeVar

from ..errors import ConfError
from . import (
    Construct,
    EvalMode,
    EvalRequest,
    EvalResult,
    OutsideSubsetError,
    RefusedConfError,
    TooDeepError,
)
from . import data as _data
from . import glob as _glob

#: Names taken from dkms.conf and its override files, in upstream's evaluation order (spec §3).
DKMS_CONF_WHITELIST: Tuple[str, ...] = (
    "PACKAGE_NAME",
    "PACKAGE_VERSION",
    "POST_ADD",
    "POST_BUILD",
    "POST_INSTALL",
    "POST_REMOVE",
    "PRE_BUILD",
    "PRE_INSTALL",
    "BUILD_DEPENDS",
    "BUILD_EXCLUSIVE_ARCH",
    "BUILD_EXCLUSIVE_CONFIG",
    "BUILD_EXCLUSIVE_KERNEL",
    "BUILD_EXCLUSIVE_KERNEL_MIN",
    "BUILD_EXCLUSIVE_KERNEL_MAX",
    "build_exclude",
    "OBSOLETE_BY",
    "MAKE",
    "MAKE_MATCH",
    "PATCH",
    "PATCH_MATCH",
    "patch_array",
    "BUILT_MODULE_NAME",
    "built_module_name",
    "BUILT_MODULE_LOCATION",
    "built_module_location",
    "DEST_MODULE_NAME",
    "dest_module_name",
    "DEST_MODULE_LOCATION",
    "dest_module_location",
    "STRIP",
    "strip",
    "AUTOINSTALL",
    "NO_WEAK_MODULES",
    "BUILD_DEPENDS_REBUILD",
    "CLEAN",
    "REMAKE_INITRD",
    "MODULES_CONF",
    "MODULES_CONF_OBSOLETES",
    "MODULES_CONF_ALIAS_TYPE",
    "MODULES_CONF_OBSOLETE_ONLY",
)

#: Keys accepted from framework files (framework-conf.md §4, §8, §9), in table order.
FRAMEWORK_KEYS: Tuple[str, ...] = (
    "dkms_tree",
    "source_tree",
    "install_tree",
    "tmp_location",
    "verbose",
    "symlink_modules",
    "autoinstall_all_kernels",
    "modprobe_on_install",
    "parallel_jobs",
    "compress_gzip_opts",
    "compress_xz_opts",
    "compress_zstd_opts",
    "post_transaction",
    "sign_file",
    "mok_signing_key",
    "mok_certificate",
    "try_sign_modules",
    "build_environment",
    "continue_on_error",
    "conf_evaluation",
)


def _check(request: EvalRequest, contexts: Sequence[Mapping[str, str]]) -> None:
    names = list(request.whitelist) + [n for n, _ in request.injections] + list(request.initial)
    for c in contexts:
        names += list(c)
    for name in names:
        if not _data.valid_name(name) or _data.is_reserved(name):
            raise ValueError(f"cannot evaluate with variable name {name!r}")


def evaluate(request: EvalRequest) -> EvalResult:
    """Evaluate ``request.files`` in order with the evaluator chosen by ``request.mode``."""
    return evaluate_many(request, [{}])[0]


def evaluate_many(request: EvalRequest, contexts: Sequence[Mapping[str, str]]) -> List[EvalResult]:
    """Evaluate the same files once per context (e.g. once per kernel).

    Each context mapping is laid over ``request.context``. Files are parsed once; with bash, all
    contexts are evaluated by one bash process.
    """
    merged: List[Dict[str, str]] = [{**request.context, **c} for c in contexts]
    _check(request, merged)
    if not merged:
        return []
    if request.mode is EvalMode.BASH:
        return _bash(request, merged, None)

    parsed = [_guarded(partial(_data.parse_file, f), f) for f in request.files]
    # Nesting beyond the limit is no real-world file: it is refused, also where bash would read it.
    deep = _data.first_outside(parsed, too_deep=True)
    if deep is not None:
        raise TooDeepError(deep)
    lenient = request.mode is EvalMode.DATA and not request.strict
    first = None if lenient else _data.first_outside(parsed)
    if first is not None:
        if request.mode is EvalMode.DATA:
            raise OutsideSubsetError(first)
        return _bash(request, merged, first)

    dircache = _glob.DirCache()
    results: List[Optional[EvalResult]] = []
    fallback: List[int] = []
    constructs: Dict[int, Construct] = {}
    for k, ctx in enumerate(merged):
        try:
            results.append(
                _guarded(
                    partial(
                        _data.evaluate_parsed,
                        parsed,
                        request.whitelist,
                        ctx,
                        request.environ,
                        request.injections,
                        lenient,
                        dircache,
                        request.initial,
                    ),
                    *request.files,
                )
            )
        except _data.OutsideAt as exc:
            if exc.construct.too_deep:
                raise TooDeepError(exc.construct) from None
            if exc.refused:
                raise RefusedConfError(exc.construct) from None
            if request.mode is EvalMode.DATA:
                raise OutsideSubsetError(exc.construct) from None
            results.append(None)
            fallback.append(k)
            constructs[k] = exc.construct
    if fallback:
        redo = _bash_raw(request, [merged[k] for k in fallback])
        for k, bash_res in zip(fallback, redo):
            results[k] = _with_outside(bash_res, constructs[k])
    out: List[EvalResult] = []
    for res in results:
        assert res is not None
        out.append(res)
    return out


_T = TypeVar("_T")


def _guarded(step: Callable[[], _T], *files: Path) -> _T:
    """Run one step of the data reader; a failure nobody foresaw becomes a ConfError naming the files.

    Whatever a file holds, reading it must end in a value, "outside the subset" or a clean
    error: never in a Python exception (such as RecursionError) that aborts the whole command.
    """
    try:
        return step()
    except (_data.OutsideAt, OutsideSubsetError, OSError):
        raise
    except Exception as exc:
        names = ", ".join(str(f) for f in files)
        raise ConfError(
            f"{names}: cannot be read: internal error of the data reader ({type(exc).__name__}: {exc})."
        ) from exc


def _with_outside(res: EvalResult, construct: Optional[Construct]) -> EvalResult:
    return replace(res, outside=construct)


def _bash_raw(request: EvalRequest, contexts: Sequence[Mapping[str, str]]) -> List[EvalResult]:
    from .bash import evaluate_bash_many  # only files outside the data subset need a shell

    return evaluate_bash_many(
        request.files,
        request.whitelist,
        contexts,
        request.environ,
        request.injections,
        timeout=request.timeout,
        initial=request.initial,
    )


def _bash(
    request: EvalRequest, contexts: Sequence[Mapping[str, str]], outside: Optional[Construct]
) -> List[EvalResult]:
    return [_with_outside(r, outside) for r in _bash_raw(request, contexts)]
