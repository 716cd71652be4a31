"""Unit tests of the bash evaluator (upstream's safe_source protocol in one bash process)."""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Dict, Optional, Tuple

import pytest

from pydkms.confeval import (
    BashEvaluationError,
    BashTimeoutError,
    EvalMode,
    EvalRequest,
    EvalResult,
    evaluate,
    evaluate_many,
)
from pydkms.confeval import bash as confbash
from tests.support.confs import write_confs

pytestmark = pytest.mark.skipif(shutil.which("bash") is None, reason="bash is needed")

W = ("PACKAGE_NAME", "MAKE", "CLEAN", "X", "Y", "Z")
CTX = {"kernelver": "6.1.0-56-amd64", "arch": "x86_64"}


def env(**extra: str) -> Dict[str, str]:
    base = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": "/root", "LANG": "C"}
    base.update(extra)
    return base


def run(
    tmp_path: Path,
    *texts: str | bytes,
    ctx: Optional[Mapping[str, str]] = None,
    environ: Optional[Mapping[str, str]] = None,
    injections: Sequence[Tuple[str, str]] = (),
    timeout: Optional[float] = None,
) -> EvalResult:
    files = write_confs(tmp_path, *texts)
    req = EvalRequest(
        tuple(files),
        W,
        CTX if ctx is None else ctx,
        env() if environ is None else environ,
        tuple(injections),
        EvalMode.BASH,
        timeout=timeout,
    )
    res = evaluate(req)
    assert res.evaluator == "bash" and res.dependencies is None
    return res


def vals(res: EvalResult) -> Dict[str, Dict[int, str]]:
    return {k: dict(v) for k, v in res.values.items()}


def test_protocol_basics(tmp_path: Path) -> None:
    res = run(tmp_path, "MAKE='make $kernelver'\nX=(a '' c)\nY=\" a  b \"\nH=helper\n")
    assert vals(res) == {"MAKE": {0: "make 6.1.0-56-amd64"}, "X": {0: "a", 1: "", 2: "c"}, "Y": {0: " a b "}}


def test_stdout_discarded_stderr_captured(tmp_path: Path) -> None:
    res = run(tmp_path, "echo to-stdout\necho to-stderr >&2\nX=1\n")
    assert vals(res) == {"X": {0: "1"}}
    assert res.stderr == "to-stderr\n"


def test_override_survival_and_unset(tmp_path: Path) -> None:
    res = run(tmp_path, "X=(a b c)\nY=(p q)\n", "X=(z)\nunset Y\n")
    assert vals(res) == {"X": {0: "z", 1: "b", 2: "c"}, "Y": {0: "p", 1: "q"}}


def test_context_is_not_exported_environment_is(tmp_path: Path) -> None:
    res = run(tmp_path, "X=$(printenv kernelver)\nY=$(printenv FOO)\n", environ=env(FOO="env"))
    assert vals(res) == {"X": {0: ""}, "Y": {0: "env"}}


def test_whitelisted_names_unset_even_if_in_environment(tmp_path: Path) -> None:
    res = run(tmp_path, "Y=${X-unset}\n", environ=env(X="from-env"))
    assert vals(res) == {"Y": {0: "unset"}}


def test_bash_behaviour_variables_are_stripped(tmp_path: Path) -> None:
    rc = tmp_path / "rc"
    rc.write_text("echo BASH_ENV-was-read >&2\nX=from-bash-env\n")
    res = run(
        tmp_path,
        "Y=$SHELLOPTS\n",
        environ=env(
            BASH_ENV=str(rc),
            ENV=str(rc),
            SHELLOPTS="xtrace",
            GLOBIGNORE="*",
            **{"BASH_FUNC_echo%%": "() { :; }"},
        ),
    )
    assert "BASH_ENV-was-read" not in res.stderr
    assert "X" not in res.values
    assert "xtrace" not in res.values["Y"][0]


def test_cwd_is_callers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    res = run(tmp_path, "X=$PWD\n")
    assert res.values["X"][0] == str(tmp_path)


def test_crlf_normalised_copy_only_when_needed(tmp_path: Path) -> None:
    (plain,) = write_confs(tmp_path, "X=$BASH_SOURCE\n")
    res = evaluate(EvalRequest((plain,), W, CTX, env(), mode=EvalMode.BASH))
    assert res.values["X"][0] == str(plain)
    crlf = tmp_path / "crlf.conf"
    crlf.write_bytes(b"X=a\r\nY='b c'\r\nZ=(1\r\n2)\r\n")
    res = evaluate(EvalRequest((crlf,), W, CTX, env(), mode=EvalMode.BASH))
    assert vals(res) == {"X": {0: "a"}, "Y": {0: "b c"}, "Z": {0: "1", 1: "2"}}


def test_undecodable_bytes_round_trip(tmp_path: Path) -> None:
    res = run(tmp_path, b"X='\xff\xfe \xc3\xa9'\n")
    assert res.values["X"][0].encode("utf-8", "surrogateescape") == b"\xff\xfe \xc3\xa9"


def test_injections(tmp_path: Path) -> None:
    res = run(
        tmp_path, "PACKAGE_NAME=p\nMAKE=(m1 m2)\n", "CLEAN=c\n", injections=[("MAKE", "inj-$PACKAGE_NAME")]
    )
    assert vals(res) == {"PACKAGE_NAME": {0: "p"}, "MAKE": {0: "inj-p", 1: "m2"}, "CLEAN": {0: "c"}}


def test_syntax_error_keeps_earlier_statements(tmp_path: Path) -> None:
    res = run(tmp_path, "X=1\nif then\nY=2\n")
    assert vals(res) == {"X": {0: "1"}}
    assert "syntax error" in res.stderr


def test_exit_in_a_file(tmp_path: Path) -> None:
    res = run(tmp_path, "X=1\n", "Y=2\nexit 3\n", "Z=3\n")
    assert vals(res) == {"X": {0: "1"}, "Z": {0: "3"}}


def test_evaluate_many_uses_one_process(tmp_path: Path) -> None:
    files = write_confs(tmp_path, 'X=$$\nMAKE="make $kernelver"\nY=${only_first-absent}\n')
    req = EvalRequest(tuple(files), W, {}, env(), mode=EvalMode.BASH)
    ctxs = [{"kernelver": "1", "only_first": "here"}, {"kernelver": "2"}, {"kernelver": "3"}]
    res = evaluate_many(req, ctxs)
    assert [r.values["MAKE"][0] for r in res] == ["make 1", "make 2", "make 3"]
    assert [r.values["Y"][0] for r in res] == ["here", "absent", "absent"]
    assert len({r.values["X"][0] for r in res}) == 1
    again = evaluate_many(req, ctxs[:1])
    assert again[0].values["X"][0] != res[0].values["X"][0]


def test_evaluate_many_restores_environment_value(tmp_path: Path) -> None:
    files = write_confs(tmp_path, "Y=$FOO\n")
    req = EvalRequest(tuple(files), W, {}, env(FOO="env"), mode=EvalMode.BASH)
    res = evaluate_many(req, [{"FOO": "ctx"}, {}])
    assert [r.values["Y"][0] for r in res] == ["ctx", "env"]


def test_stderr_per_context(tmp_path: Path) -> None:
    files = write_confs(tmp_path, "echo k=$kernelver >&2\n")
    req = EvalRequest(tuple(files), W, {}, env(), mode=EvalMode.BASH)
    res = evaluate_many(req, [{"kernelver": "1"}, {"kernelver": "2"}])
    assert [r.stderr for r in res] == ["k=1\n", "k=2\n"]


def test_timeout(tmp_path: Path) -> None:
    t0 = time.monotonic()
    with pytest.raises(BashTimeoutError, match="did not finish within 1 seconds"):
        run(tmp_path, "X=1\nsleep 30\n", timeout=1)
    assert time.monotonic() - t0 < 10


def test_default_timeout_is_60s() -> None:
    assert confbash.DEFAULT_TIMEOUT == 60.0


def test_temporary_files_are_removed(tmp_path: Path) -> None:
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    files = write_confs(tmp_path, "X=1\r\n", "Y=2\n")
    req = EvalRequest(tuple(files), W, CTX, env(TMPDIR=str(tmp)), mode=EvalMode.BASH)
    assert vals(evaluate(req)) == {"X": {0: "1"}, "Y": {0: "2"}}
    assert list(tmp.iterdir()) == []


def test_missing_bash_is_a_clear_error(tmp_path: Path) -> None:
    (f,) = write_confs(tmp_path, "X=1\n")
    with pytest.raises(BashEvaluationError, match="bash not found"):
        confbash.evaluate_bash_many([f], W, [CTX], {"PATH": str(tmp_path)}, bash="no-such-bash-here")


def test_invalid_names_rejected(tmp_path: Path) -> None:
    (f,) = write_confs(tmp_path, "X=1\n")
    with pytest.raises(ValueError):
        evaluate(EvalRequest((f,), ("X", "bad name"), CTX, env(), mode=EvalMode.BASH))
    with pytest.raises(ValueError):
        evaluate(EvalRequest((f,), W, {"IFS": "x"}, env(), mode=EvalMode.BASH))
