"""Which file (and line) a value and a complaint come from, with bash and with the data reader."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping, Optional, Sequence, Tuple

import pytest

from pydkms.confeval import EvalMode, EvalRequest, EvalResult, evaluate, evaluate_many
from tests.support.confs import write_confs

W = ("PACKAGE_NAME", "MAKE", "CLEAN", "AUTOINSTALL", "X", "Y")
CTX = {"kernelver": "6.1.0-56-amd64", "arch": "x86_64"}
ENV = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": "/root", "LANG": "C"}


def run(
    files: Sequence[Path],
    mode: EvalMode,
    injections: Sequence[Tuple[str, str]] = (),
    ctx: Optional[Mapping[str, str]] = None,
) -> EvalResult:
    req = EvalRequest(tuple(files), W, CTX if ctx is None else ctx, ENV, tuple(injections), mode)
    return evaluate(req)


def origins(res: EvalResult) -> dict[str, dict[int, Tuple[Path, int]]]:
    assert res.origins is not None
    return {n: dict(o) for n, o in res.origins.items()}


@pytest.fixture(autouse=True)
def _cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")


# --------------------------------------------------------------------------------------------
# bash's complaints name the real files


def test_crlf_file_complaint_names_the_file_and_line(tmp_path: Path) -> None:
    """A CRLF file is given to bash as a normalised copy: its complaints used to name the copy."""
    (conf,) = write_confs(tmp_path, b"PACKAGE_NAME=crl\r\nX=1\r\n\r\n# four\r\nnosuchcommand_xyz\r\n")
    res = run([conf], EvalMode.AUTO)
    assert res.evaluator == "bash"
    assert res.stderr == f"{conf}: line 5: nosuchcommand_xyz: command not found\n"


def test_complaint_while_re_reading_a_value_names_the_value(tmp_path: Path) -> None:
    """Upstream re-reads every value as code from a temporary file: name the file and the value."""
    conf, override = write_confs(
        tmp_path,
        'PACKAGE_NAME=rr\nx=$(true)\nMAKE="\\$(nosuch_make)"\n',
        b'CLEAN="\\$(nosuch_clean)"\r\nY=$(true)\r\n',
    )
    res = run([conf, override], EvalMode.AUTO, injections=[("X", "$(nosuch_directive)")])
    assert res.evaluator == "bash"
    assert res.stderr.splitlines() == [
        f"{conf}: while re-reading MAKE[0]: nosuch_make: command not found",
        f"{conf}: while re-reading DKMS_DIRECTIVE X: nosuch_directive: command not found",
        # MAKE is empty after the first re-reading; the injection is applied after every file
        f"{override}: while re-reading CLEAN[0]: nosuch_clean: command not found",
        f"{override}: while re-reading DKMS_DIRECTIVE X: nosuch_directive: command not found",
    ]
    assert "pydkms-bash" not in res.stderr and "/tmp/tmp." not in res.stderr


def test_complaints_of_every_context_are_renamed(tmp_path: Path) -> None:
    (conf,) = write_confs(tmp_path, b'PACKAGE_NAME=crl\r\nMAKE="\\$(nosuch_$kernelver)"\r\n')
    req = EvalRequest((conf,), W, {}, ENV, mode=EvalMode.AUTO)
    results = evaluate_many(req, [{"kernelver": "a"}, {"kernelver": "b"}])
    assert [r.stderr for r in results] == [
        f"{conf}: while re-reading MAKE[0]: nosuch_a: command not found\n",
        f"{conf}: while re-reading MAKE[0]: nosuch_b: command not found\n",
    ]


# --------------------------------------------------------------------------------------------
# the origin of a value is the file that set it last


def test_bash_origins_name_the_override_that_changed_a_value(tmp_path: Path) -> None:
    conf, first, second = write_confs(
        tmp_path,
        "PACKAGE_NAME=ov\nAUTOINSTALL=yes\nMAKE=make\nX=(a b c)\nif true; then :; fi\n",
        "if true; then AUTOINSTALL=maybe; fi\nX[1]=B\nMAKE=make\n",  # MAKE: the same value
        "if true; then Y=new; fi\nunset X\n",  # unset: the parent keeps X
    )
    res = run([conf, first, second], EvalMode.AUTO)
    assert res.evaluator == "bash"
    assert origins(res) == {
        "PACKAGE_NAME": {0: (conf, 0)},
        "AUTOINSTALL": {0: (first, 0)},
        "MAKE": {0: (conf, 0)},
        "X": {0: (conf, 0), 1: (first, 0), 2: (conf, 0)},
        "Y": {0: (second, 0)},
    }


def test_bash_origins_per_context(tmp_path: Path) -> None:
    conf, override = write_confs(
        tmp_path,
        "PACKAGE_NAME=ov\nMAKE=make\nif true; then :; fi\n",
        'if [[ $kernelver == b ]]; then MAKE="make b"; fi\n',
    )
    req = EvalRequest((conf, override), W, {}, ENV, mode=EvalMode.BASH)
    a, b = evaluate_many(req, [{"kernelver": "a"}, {"kernelver": "b"}])
    assert origins(a)["MAKE"] == {0: (conf, 0)}
    assert origins(b)["MAKE"] == {0: (override, 0)}


def test_data_origin_of_a_value_assigned_then_unset_stays_with_the_earlier_file(tmp_path: Path) -> None:
    """The override's subshell assigns and unsets: the parent keeps dkms.conf's value, and its line."""
    conf, override = write_confs(
        tmp_path,
        "PACKAGE_NAME=ov\nAUTOINSTALL=maybe\n",
        "# local\nAUTOINSTALL=no\nunset AUTOINSTALL\nX=1\n",
    )
    res = run([conf, override], EvalMode.DATA)
    assert res.values["AUTOINSTALL"] == {0: "maybe"}
    assert origins(res) == {
        "PACKAGE_NAME": {0: (conf, 1)},
        "AUTOINSTALL": {0: (conf, 2)},
        "X": {0: (override, 4)},
    }


def test_data_origin_of_an_override_assignment(tmp_path: Path) -> None:
    conf, override = write_confs(tmp_path, "PACKAGE_NAME=ov\nAUTOINSTALL=yes\n", "\n\nAUTOINSTALL=maybe\n")
    res = run([conf, override], EvalMode.DATA)
    assert origins(res)["AUTOINSTALL"] == {0: (override, 3)}
