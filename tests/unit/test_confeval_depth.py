"""The reader's nesting limit: a file nested too deep is refused cleanly, never a Python exception."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import List

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pydkms.confeval import (
    EvalMode,
    EvalRequest,
    EvalResult,
    OutsideSubsetError,
    TooDeepError,
    evaluate,
    protocol,
)
from pydkms.confeval import data as confdata
from pydkms.errors import ConfError
from tests.support.confs import write_confs

W = ("PACKAGE_NAME", "PACKAGE_VERSION", "MAKE", "BUILT_MODULE_NAME", "X")
ENV = {"PATH": "/usr/bin:/bin", "HOME": "/root", "LANG": "C"}
LIMIT = confdata.MAX_NESTING


def request(files: List[Path], mode: EvalMode, strict: bool = True) -> EvalRequest:
    return EvalRequest(tuple(files), W, {"kernelver": "6.1.0-1-amd64"}, ENV, mode=mode, strict=strict)


def nested_default(levels: int, inner: str = "x") -> str:
    """``${A:-${A:-...inner...}}`` with ``levels`` expansions."""
    return "${A:-" * levels + inner + "}" * levels


HEAD = "PACKAGE_NAME=deep\nPACKAGE_VERSION=1.0\n"


@pytest.fixture(autouse=True)
def _cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")


@pytest.mark.parametrize("mode", [EvalMode.AUTO, EvalMode.DATA])
@pytest.mark.parametrize(
    ("value", "depth"),
    [
        (f'"{nested_default(400)}"', 401),  # the 400 nested ${A:-…} (and the quotes)
        ('"' + "$(" * 490 + "x" + ")" * 490 + '"', 491),  # 490 nested $( inside quotes
        ("$(" * 490 + "x", 490),  # unterminated: skimmed to the end of the file
        ('"$(' * 300, 600),  # quotes and $( alternating
        (nested_default(LIMIT + 1), LIMIT + 1),  # one level beyond the limit
    ],
)
def test_deep_nesting_is_refused_in_auto_and_data_mode(
    tmp_path: Path, mode: EvalMode, value: str, depth: int
) -> None:
    (conf,) = write_confs(tmp_path, HEAD + f"BUILT_MODULE_NAME[0]={value}\nMAKE=make\n")
    with pytest.raises(TooDeepError) as info:
        evaluate(request([conf], mode))
    c = info.value.construct
    assert (c.file, c.line, c.too_deep) == (conf, 3, True)
    assert c.text == f"quotes and expansions nested {depth} levels deep; the limit is {LIMIT}"


def test_lenient_data_mode_refuses_too(tmp_path: Path) -> None:
    (conf,) = write_confs(tmp_path, HEAD + f"X={nested_default(500)}\n")
    with pytest.raises(TooDeepError):
        evaluate(request([conf], EvalMode.DATA, strict=False))


def test_deep_override_file_is_named(tmp_path: Path) -> None:
    conf, override = write_confs(tmp_path, HEAD + "MAKE=make\n", "# override\n\nMAKE=" + nested_default(100))
    with pytest.raises(TooDeepError) as info:
        evaluate(request([conf, override], EvalMode.AUTO))
    assert (info.value.construct.file, info.value.construct.line) == (override, 3)


def test_nesting_up_to_the_limit_is_read(tmp_path: Path) -> None:
    (conf,) = write_confs(
        tmp_path,
        HEAD + f"X={nested_default(LIMIT, 'plain')}\n" + f'MAKE="{nested_default(LIMIT - 1, "q")}"\n',
    )
    res = evaluate(request([conf], EvalMode.DATA))
    assert res.evaluator == "data"
    assert res.values["X"] == {0: "plain"}
    assert res.values["MAKE"] == {0: "q"}


@pytest.mark.parametrize("mode", [EvalMode.AUTO, EvalMode.DATA])
def test_value_too_deep_on_re_reading_is_refused(tmp_path: Path, mode: EvalMode) -> None:
    # upstream re-reads every value as a double-quoted string: that reading nests one level more
    (conf,) = write_confs(tmp_path, HEAD + f"MAKE='{nested_default(LIMIT)}'\n")
    with pytest.raises(TooDeepError) as info:
        evaluate(request([conf], mode))
    c = info.value.construct
    assert c.line == 3
    assert c.text == (
        f"MAKE[0] on re-reading: quotes and expansions nested {LIMIT + 1} levels deep; the limit is {LIMIT}"
    )
    (ok,) = write_confs(tmp_path / "cwd", HEAD + f"MAKE='{nested_default(LIMIT - 1)}'\n")
    assert evaluate(request([ok], mode)).values["MAKE"] == {0: "x"}


def test_bash_mode_reads_what_bash_reads(tmp_path: Path) -> None:
    """conf_evaluation="bash" is upstream's behaviour: bash evaluates any depth."""
    (conf,) = write_confs(tmp_path, HEAD + f'MAKE="{nested_default(400, "make")}"\n')
    res = evaluate(request([conf], EvalMode.BASH))
    assert res.evaluator == "bash"
    assert res.values["MAKE"] == {0: "make"}


def test_an_unforeseen_failure_becomes_a_conf_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The last line of defence: whatever goes wrong inside the reader ends as exit 8 naming the file."""
    conf, override = write_confs(tmp_path, HEAD, "X=1\n")

    def broken(*_args: object) -> EvalResult:
        raise RecursionError("maximum recursion depth exceeded")

    monkeypatch.setattr(protocol._data, "evaluate_parsed", broken)
    with pytest.raises(ConfError) as info:
        evaluate(request([conf, override], EvalMode.AUTO))
    assert info.value.code == 8
    assert str(info.value) == (
        f"{conf}, {override}: cannot be read: internal error of the data reader "
        "(RecursionError: maximum recursion depth exceeded)."
    )


# --------------------------------------------------------------------------------------------
# property: no input makes the reader raise anything but "outside the subset"

PIECES = [
    "${A:-",
    "${A-",
    "${A:+",
    "${A#",
    "${A%%",
    "${A[0]:-",
    "${#A",
    "${!A",
    "$(",
    "$((",
    "$[",
    "$'",
    '$"',
    "`",
    '"',
    "'",
    "\\",
    "\\\n",
    "(",
    ")",
    "((",
    "))",
    "{",
    "}",
    "@(",
    "*(",
    "[",
    "]",
    "$",
    "$A",
    "~",
    "x",
    " ",
    "\n",
    ";",
    "|",
    "&",
    "<<E\n",
    "E\n",
    "#",
    "*",
    "?",
    "=",
]


@st.composite
def nested_texts(draw: st.DrawFn) -> str:
    """An assignment whose value is a mix of openers and closers, often nested very deep."""
    depth = draw(st.integers(0, 700))
    opener = draw(st.sampled_from(["${A:-", "$(", '"', "`", '"${A:-', "${A#", "$((", "@(", "${A:-'", "("]))
    body = draw(st.lists(st.sampled_from(PIECES), max_size=40))
    closers = draw(st.sampled_from(["}", ")", '"', "`", "'", ""]))
    name = draw(st.sampled_from(["MAKE", "X", "BUILT_MODULE_NAME[0]", "Y", "MAKE+", "X[3]"]))
    tail = draw(st.sampled_from(["", "\nMAKE=make\n", "\nif true; then X=1; fi\n", " ; X=2\n"]))
    return f"{name}={opener * depth}{''.join(body)}{closers * draw(st.integers(0, depth))}{tail}"


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=nested_texts(), strict=st.booleans())
def test_no_input_escapes_the_reader(text: str, strict: bool) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        (conf,) = write_confs(Path(tmp), HEAD + text)
        try:
            res = evaluate(request([conf], EvalMode.DATA, strict=strict))
        except TooDeepError as exc:
            assert exc.construct.too_deep and "levels deep; the limit is" in exc.construct.text
        except OutsideSubsetError as exc:
            assert not exc.construct.too_deep
        else:
            assert res.evaluator == "data"
