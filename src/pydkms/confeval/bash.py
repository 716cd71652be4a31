"""The bash evaluator: one ``bash`` process that runs upstream's ``safe_source`` protocol verbatim.

The body of ``safe_source`` below is copied from dkms 3.2.2 (only the ``DKMS_DIRECTIVE`` loop reads
pydkms' already filtered injections instead of ``set | grep``). Context variables are plain shell
variables, whitelisted names are unset before the first file, the files' stdout is discarded and
their stderr captured. Results come back NUL-separated in a private file; every context of
:func:`evaluate_bash_many` runs in the same process.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from .. import runner
from . import Arrays, BashEvaluationError, BashTimeoutError, EvalResult
from .data import decode, normalize_crlf, valid_name

#: Default limit for one bash process (all files and contexts of one call).
DEFAULT_TIMEOUT = 60.0

#: Environment variables removed before starting bash: they would change how bash itself behaves
#: (start-up files, shell options, globbing, exported functions) rather than provide data.
STRIPPED_ENV = frozenset(
    {
        "BASH_ENV",
        "ENV",
        "SHELLOPTS",
        "BASHOPTS",
        "GLOBIGNORE",
        "GLOBSORT",
        "POSIXLY_CORRECT",
        "BASH_XTRACEFD",
        "BASH_COMPAT",
        "PS4",
        "TMOUT",
        "EXECIGNORE",
        "CDPATH",
    }
)


_DRIVER = r"""
shopt -s extglob

mktemp_or_die() {
    local t
    if (($# == 0)) && [[ -n ${_pydkms_cur-} ]]; then
        # safe_source's file of values, for context.file $_pydkms_cur: made among pydkms' own files
        # and kept under a second name when safe_source removes it, so that bash's complaints
        # about a value it re-reads can be traced to the value and its file
        t=$_pydkms_dir/reread.$_pydkms_cur.$BASHPID
        : >"$t" && { ln -- "$t" "$t.keep" 2>/dev/null; echo "$t"; return; }
    else
        t=$(mktemp "$@") && echo "$t" && return
    fi
    echo "pydkms: Unable to make temporary file." >&2
    exit 1
}

# Source a file safely (dkms 3.2.2).
safe_source() {
    # $1 = file to source
    # $@ = environment variables to echo out
    local to_source_file
    to_source_file="$1"; shift
    # shellcheck disable=SC2206
    # we intentionally split the string into a multi-element array
    declare -a -r export_envs=( $@ )
    # shellcheck disable=SC2034
    # false positive
    local -r CR=$(echo -e '\r')
    local tmpfile
    tmpfile=$(mktemp_or_die)
    ( exec >"$tmpfile"
    # shellcheck disable=SC1090
    . "$to_source_file" >/dev/null
    # This is really ugly, but a neat hack
    # Remember, in bash 2.0 and greater all variables are really arrays.
    for _export_env in "${export_envs[@]}"; do
        # shellcheck disable=SC1083,SC2294
        for _i in $(eval echo \${!"${_export_env}"[@]}); do
            eval echo '$_export_env[$_i]=\"${'"${_export_env}"'[$_i]%$CR}\"'
        done
    done

    # handle DKMS_DIRECTIVE stuff specially.
    for directive in "${_pydkms_directives[@]}"; do
        directive_name=${directive%%=*}
        directive_value=${directive#*=}
        echo "$directive_name=\"$directive_value\""
    done
    )
    # shellcheck disable=SC1090
    . "$tmpfile"
    rm "${tmpfile:?}"
}

_pydkms_dir=$1
set --
# the whitelisted values as records, then the tag $1: after each file but the last (F), and at
# the end of a context (E)
_pydkms_values() {
    for _pydkms_v in $_pydkms_whitelist; do
        eval '_pydkms_idx=("${!'"$_pydkms_v"'[@]}")'
        for _pydkms_i in "${_pydkms_idx[@]}"; do
            eval '_pydkms_x=${'"$_pydkms_v"'[$_pydkms_i]}'
            printf 'V\0%s\0%s\0%s\0' "$_pydkms_v" "$_pydkms_i" "$_pydkms_x" >&"$_pydkms_out"
        done
    done
    printf '%s\0' "$1" >&"$_pydkms_out"
}
exec {_pydkms_in}<"$_pydkms_dir/in"
_pydkms_read() { IFS= read -r -d '' "$1" <&"$_pydkms_in"; }
_pydkms_read _pydkms_whitelist
_pydkms_read _pydkms_n
_pydkms_files=()
for ((_pydkms_k = 0; _pydkms_k < _pydkms_n; _pydkms_k++)); do
    _pydkms_read _pydkms_x
    _pydkms_files+=("$_pydkms_x")
done
_pydkms_read _pydkms_n
_pydkms_directives=()
for ((_pydkms_k = 0; _pydkms_k < _pydkms_n; _pydkms_k++)); do
    _pydkms_read _pydkms_x
    _pydkms_directives+=("$_pydkms_x")
done
_pydkms_read _pydkms_nctx
_pydkms_ops=()
_pydkms_counts=()
for ((_pydkms_c = 0; _pydkms_c < _pydkms_nctx; _pydkms_c++)); do
    _pydkms_read _pydkms_n
    _pydkms_counts[_pydkms_c]=$_pydkms_n
    for ((_pydkms_k = 0; _pydkms_k < _pydkms_n * 3; _pydkms_k++)); do
        _pydkms_read _pydkms_x
        _pydkms_ops+=("$_pydkms_x")
    done
done
exec {_pydkms_in}<&-
exec {_pydkms_out}>"$_pydkms_dir/out"
_pydkms_pos=0
for ((_pydkms_c = 0; _pydkms_c < _pydkms_nctx; _pydkms_c++)); do
    for _pydkms_v in $_pydkms_whitelist; do
        unset "$_pydkms_v"
    done
    for ((_pydkms_k = 0; _pydkms_k < _pydkms_counts[_pydkms_c]; _pydkms_k++)); do
        _pydkms_op=${_pydkms_ops[_pydkms_pos]}
        _pydkms_key=${_pydkms_ops[_pydkms_pos + 1]}
        _pydkms_val=${_pydkms_ops[_pydkms_pos + 2]}
        _pydkms_pos=$((_pydkms_pos + 3))
        case $_pydkms_op in
            S) unset -v "$_pydkms_key"; printf -v "$_pydkms_key" '%s' "$_pydkms_val" ;;
            E) unset -v "$_pydkms_key"; export "$_pydkms_key=$_pydkms_val" ;;
            U) unset -v "$_pydkms_key" ;;
            A) printf -v "$_pydkms_key" '%s' "$_pydkms_val" ;;
        esac
    done
    {
        for ((_pydkms_j = 0; _pydkms_j < ${#_pydkms_files[@]}; _pydkms_j++)); do
            _pydkms_cur=$_pydkms_c.$_pydkms_j
            safe_source "${_pydkms_files[_pydkms_j]}" "$_pydkms_whitelist" {_pydkms_out}>&-
            if ((_pydkms_j + 1 < ${#_pydkms_files[@]})); then
                _pydkms_values F
            fi
        done
        _pydkms_cur=
    } >>"$_pydkms_dir/err.$_pydkms_c" 2>&1
    _pydkms_values E
done
exit 0
"""


def _bash_env(environ: Mapping[str, str]) -> Dict[str, str]:
    return {
        k: v
        for k, v in environ.items()
        if k not in STRIPPED_ENV and not k.startswith("BASH_FUNC_") and "\0" not in k and "\0" not in v
    }


def _find_bash(environ: Mapping[str, str], bash: str = "bash") -> Optional[str]:
    return shutil.which(bash, path=environ.get("PATH") or os.defpath) or shutil.which(bash)


def _as_evaluated(path: Path, copy: str) -> str:
    """The file bash is given for ``path``: itself, or a CRLF-normalised copy written to ``copy`` (D-13)."""
    with open(path, "rb") as fh:
        data = fh.read()
    if b"\r" not in data:
        return os.fspath(path)
    with open(copy, "wb") as fh:
        fh.write(normalize_crlf(data))
    return copy


def _enc(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")


def evaluate_bash_many(
    files: Sequence[Path],
    whitelist: Sequence[str],
    contexts: Sequence[Mapping[str, str]],
    environ: Mapping[str, str],
    injections: Sequence[Tuple[str, str]] = (),
    timeout: Optional[float] = None,
    bash: str = "bash",
    initial: Optional[Mapping[str, Mapping[int, str]]] = None,
) -> List[EvalResult]:
    """Run upstream's protocol over ``files`` once per context, in a single bash process.

    Before the first file of every context: the whitelisted names are unset, ``initial`` values
    are assigned, then the context variables.
    """
    initial = initial or {}
    for name in (
        list(whitelist) + [k for c in contexts for k in c] + [n for n, _ in injections] + list(initial)
    ):
        if not valid_name(name):
            raise ValueError(f"not a shell variable name: {name!r}")
    if not contexts:
        return []
    exe = _find_bash(environ, bash)
    if exe is None:
        raise BashEvaluationError(
            f"cannot evaluate {files[0] if files else 'files'} with bash: bash not found"
        )
    env = _bash_env(environ)
    tmpdir = tempfile.mkdtemp(prefix="pydkms-bash.")
    try:
        sources = [_as_evaluated(f, os.path.join(tmpdir, f"conf.{idx}")) for idx, f in enumerate(files)]
        keys: List[str] = []
        for c in contexts:
            for k in c:
                if k not in keys:
                    keys.append(k)
        fields: List[bytes] = [_enc(" ".join(whitelist)), str(len(sources)).encode()]
        fields += [_enc(s) for s in sources]
        fields.append(str(len(injections)).encode())
        fields += [_enc(f"{n}={v}") for n, v in injections]
        fields.append(str(len(contexts)).encode())
        init_ops: List[bytes] = []
        for name, arr in initial.items():
            init_ops += [b"U", _enc(name), b""]
            for idx in sorted(arr):
                init_ops += [b"A", _enc(f"{name}[{int(idx)}]"), _enc(arr[idx])]
        for c in contexts:
            fields.append(str(len(keys) + len(init_ops) // 3).encode())
            fields += init_ops
            for k in keys:
                if k in c:
                    fields += [b"S", _enc(k), _enc(c[k])]
                elif k in env:
                    fields += [b"E", _enc(k), _enc(env[k])]
                else:
                    fields += [b"U", _enc(k), b""]
        with open(os.path.join(tmpdir, "in"), "wb") as fh:
            fh.write(b"".join(x + b"\0" for x in fields))
        limit = DEFAULT_TIMEOUT if timeout is None else timeout
        argv = [exe, "--norc", "--noprofile", "-c", _DRIVER, "dkms", tmpdir]
        with open(os.path.join(tmpdir, "stdout"), "wb") as out_fh:
            # bash and all it starts die with dkms (Ctrl-C, SIGTERM, SIGKILL), and nothing the
            # files started in the background outlives the evaluation
            try:
                with runner.process_group(argv, env=env, stdout=out_fh, stderr=subprocess.STDOUT) as proc:
                    rc = runner.wait_group(proc, timeout=limit)
            except runner.StartFailed as exc:
                raise BashEvaluationError(f"cannot start bash: {exc.error}") from exc
            except subprocess.TimeoutExpired:
                names = ", ".join(os.fspath(f) for f in files)
                raise BashTimeoutError(
                    f"evaluating {names} with bash did not finish within {limit:g} seconds (killed)"
                ) from None
        wl = set(whitelist)
        starts = [{**initial, **{k: {0: v} for k, v in c.items() if k in wl}} for c in contexts]
        return _collect(tmpdir, files, starts, rc)
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)


Origins = Dict[str, Dict[int, Tuple[Path, int]]]


def _origins(
    files: Sequence[Path], start: Mapping[str, Mapping[int, str]], states: Sequence[Arrays]
) -> Origins:
    """For each element, the last file that changed it (line 0: bash does not say which line).

    ``states`` are the values after each file; ``start`` those before the first one.
    """
    origins: Origins = {}
    before = start
    for path, state in zip(files, states):
        for name, arr in state.items():
            old = before.get(name, {})
            for idx, val in arr.items():
                if old.get(idx) != val:
                    origins.setdefault(name, {})[idx] = (path, 0)
        before = state
    return origins


_ASSIGNED_RE = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)(\[[0-9]+\])?=")


def _reread_what(keep: str, line: int) -> str:
    """Which value line ``line`` of a kept file of values re-reads (``MAKE[0]``), or ''."""
    try:
        with open(keep, "rb") as fh:
            lines = decode(fh.read()).split("\n")
    except OSError:
        return ""
    for text in reversed(lines[: max(line, 0)]):
        m = _ASSIGNED_RE.match(text)
        if m is not None:
            return m.group(0)[:-1] if m.group(2) else f"DKMS_DIRECTIVE {m.group(1)}"
    return ""


def _real_names(text: str, tmpdir: str, files: Sequence[Path]) -> str:
    """bash's messages with pydkms' temporary files replaced by the files they stand for.

    A CRLF-normalised copy keeps the lines of its file; a complaint about safe_source's file of
    values names the file that was sourced and the value being re-read.
    """
    if tmpdir not in text:
        return text
    pattern = re.compile(
        re.escape(tmpdir) + r"/(?:conf\.([0-9]+)|reread\.[0-9]+\.([0-9]+)\.[0-9]+)(?:: line ([0-9]+))?"
    )

    def real(m: re.Match[str]) -> str:
        k = int(m.group(1) if m.group(1) is not None else m.group(2))
        if k >= len(files):
            return m.group(0)
        if m.group(1) is not None:
            return os.fspath(files[k]) + (f": line {m.group(3)}" if m.group(3) else "")
        what = _reread_what(m.group(0).split(":", 1)[0] + ".keep", int(m.group(3) or 0))
        return f"{os.fspath(files[k])}: while re-reading {what or 'its values'}"

    return pattern.sub(real, text)


def _collect(
    tmpdir: str, files: Sequence[Path], starts: Sequence[Mapping[str, Mapping[int, str]]], rc: int
) -> List[EvalResult]:
    ncontexts = len(starts)
    try:
        with open(os.path.join(tmpdir, "out"), "rb") as fh:
            raw = fh.read()
    except OSError:
        raw = b""
    with open(os.path.join(tmpdir, "stdout"), "rb") as fh:
        driver_out = _real_names(decode(fh.read()), tmpdir, files)
    records = raw.split(b"\0")
    results: List[EvalResult] = []
    states: List[Arrays] = []
    values: Arrays = {}
    k = 0
    while k < len(records) and len(results) < ncontexts:
        tag = records[k]
        if tag == b"V" and k + 3 < len(records):
            name, idx, val = decode(records[k + 1]), records[k + 2], decode(records[k + 3])
            k += 4
            try:
                values.setdefault(name, {})[int(idx)] = val
            except ValueError:
                continue
        elif tag == b"F":
            k += 1
            states.append(values)
            values = {}
        elif tag == b"E":
            k += 1
            c = len(results)
            try:
                with open(os.path.join(tmpdir, f"err.{c}"), "rb") as fh:
                    err = _real_names(decode(fh.read()), tmpdir, files)
            except OSError:
                err = ""
            origins = _origins(files, starts[c], [*states, values])
            results.append(EvalResult(values=values, evaluator="bash", stderr=err, origins=origins))
            states = []
            values = {}
        else:
            break
    if len(results) < ncontexts:
        names = ", ".join(os.fspath(f) for f in files)
        detail = driver_out.strip()
        for c in range(len(results), ncontexts):
            try:
                with open(os.path.join(tmpdir, f"err.{c}"), "rb") as fh:
                    detail += _real_names(decode(fh.read()), tmpdir, files)
            except OSError:
                pass
        raise BashEvaluationError(
            f"evaluating {names} with bash failed (exit status {rc})"
            + (f":\n{detail.strip()}" if detail.strip() else "")
        )
    if driver_out and results:
        last = results[-1]
        results[-1] = replace(last, stderr=last.stderr + driver_out)
    return results


def syntax_error(path: Path, environ: Mapping[str, str]) -> Optional[str]:
    """bash's first complaint (``line N: …``) if ``path``, CRLF normalised as it is evaluated, does not parse.

    Sourcing a file that does not parse still runs the lines before the error, and the captured
    stderr is all that shows it; ``bash -n`` tells it apart from a file whose last command failed.
    """
    exe = _find_bash(environ)
    if exe is None:
        return None
    with tempfile.TemporaryDirectory(prefix="pydkms-bash.") as tmp:
        target = _as_evaluated(path, os.path.join(tmp, "conf"))
        proc = runner.run([exe, "--norc", "--noprofile", "-n", target], env=_bash_env(environ))
    if proc.returncode == 0:
        return None
    lines = decode(proc.stderr).splitlines()
    if not lines:
        return f"bash -n exited with status {proc.returncode}"
    first = lines[0]
    return first[len(target) + 2 :] if first.startswith(f"{target}: ") else first


def evaluate_bash(
    files: Sequence[Path],
    whitelist: Sequence[str],
    context: Mapping[str, str],
    environ: Mapping[str, str],
    injections: Sequence[Tuple[str, str]] = (),
    timeout: Optional[float] = None,
    initial: Optional[Mapping[str, Mapping[int, str]]] = None,
) -> EvalResult:
    return evaluate_bash_many(files, whitelist, [context], environ, injections, timeout, initial=initial)[0]
