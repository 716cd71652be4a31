"""Differential tests: the data evaluator must equal the bash evaluator on every file it accepts.

(a) every fixture under tests/fixtures/confeval/ (single files and override chains);
(b) hypothesis-generated files of the data subset (plus some constructs outside it).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import pytest

from pydkms.confeval import (
    DKMS_CONF_WHITELIST,
    EvalMode,
    EvalRequest,
    EvalResult,
    OutsideSubsetError,
    evaluate,
    evaluate_many,
)
from pydkms.confeval import data as confdata

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "confeval"
SINGLE = sorted((FIXTURES / "single").glob("*.conf"))
CHAINS = sorted(p for p in (FIXTURES / "chains").iterdir() if p.is_dir())

pytestmark = pytest.mark.skipif(shutil.which("bash") is None, reason="bash is needed")

CONTEXT = {
    "kernelver": "6.1.0-56-amd64",
    "arch": "x86_64",
    "kernel_source_dir": "/lib/modules/6.1.0-56-amd64/build",
    "kernel_config": "/lib/modules/6.1.0-56-amd64/build/.config",
    "dkms_tree": "/var/lib/dkms",
    "source_tree": "/usr/src",
    "install_tree": "/lib/modules",
    "tmp_location": "/tmp",
    "module": "hello",
    "module_version": "1.0",
    "running_distribution": "debian",
}
CONTEXT2 = {
    **CONTEXT,
    "kernelver": "6.1.0-50-amd64",
    "kernel_source_dir": "/lib/modules/6.1.0-50-amd64/build",
}


def environ() -> Dict[str, str]:
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": "/root",
        "FOO": "foo  value",
        "LANG": "C",
        "TMPDIR": os.environ.get("TMPDIR", "/tmp"),
    }


def plain(values: Mapping[str, Mapping[int, str]]) -> Dict[str, Dict[int, str]]:
    return {k: dict(v) for k, v in values.items()}


def compare(
    files: Sequence[Path],
    whitelist: Sequence[str] = DKMS_CONF_WHITELIST,
    contexts: Sequence[Mapping[str, str]] = (CONTEXT,),
    injections: Sequence[Tuple[str, str]] = (),
    env: Optional[Mapping[str, str]] = None,
    check_auto: bool = True,
    initial: Optional[Mapping[str, Mapping[int, str]]] = None,
) -> Optional[List[EvalResult]]:
    """Assert data == bash for every context; None when the data evaluator rejected the chain."""
    env = environ() if env is None else env
    init = dict(initial or {})
    base = EvalRequest(
        tuple(files), tuple(whitelist), {}, env, tuple(injections), EvalMode.DATA, initial=init
    )
    bash_results = evaluate_many(
        EvalRequest(tuple(files), tuple(whitelist), {}, env, tuple(injections), EvalMode.BASH, initial=init),
        contexts,
    )
    try:
        data_results = evaluate_many(base, contexts)
    except OutsideSubsetError as exc:
        c = exc.construct
        assert c.text and c.line >= 0 and c.file in files
        if not check_auto:
            return None
        # AUTO then equals bash exactly
        auto = evaluate_many(
            EvalRequest(
                tuple(files), tuple(whitelist), {}, env, tuple(injections), EvalMode.AUTO, initial=init
            ),
            contexts,
        )
        for a, b in zip(auto, bash_results):
            assert a.evaluator == "bash" and a.outside is not None
            assert plain(a.values) == plain(b.values)
        return None
    for d, b in zip(data_results, bash_results):
        assert d.evaluator == "data" and b.evaluator == "bash"
        assert plain(d.values) == plain(b.values), (
            f"data {plain(d.values)}\n bash {plain(b.values)}\n{b.stderr}"
        )
    return data_results


@pytest.mark.parametrize("conf", SINGLE, ids=[p.name for p in SINGLE])
def test_fixture_single(conf: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    res = compare([conf], contexts=(CONTEXT, CONTEXT2))
    if conf.name.startswith("outside-"):
        assert res is None, "expected the data evaluator to reject this file"
    else:
        assert res is not None, "expected the data evaluator to accept this file"


@pytest.mark.parametrize("chain", CHAINS, ids=[p.name for p in CHAINS])
def test_fixture_chain(chain: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    files = sorted(chain.glob("*.conf"))
    res = compare(files, contexts=(CONTEXT, CONTEXT2), injections=[("CLEAN", "inj-$PACKAGE_NAME")])
    assert (res is None) == chain.name.startswith("outside-")


@pytest.mark.parametrize("conf", [p for p in SINGLE if not p.name.startswith("outside-")][:8], ids=str)
def test_fixture_with_matching_files(conf: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The echo step's pathname expansion sees files in the current directory."""
    monkeypatch.chdir(tmp_path)
    for name in ("a.ko", "b.ko", "xt_one.ko", "dir", 'MAKE0="make', 'CLEAN0="x'):
        (tmp_path / name).write_text("")
    compare([conf])


# --------------------------------------------------------------------------------------------
# hypothesis

NAMES = ["PACKAGE_NAME", "MAKE", "CLEAN", "BUILT_MODULE_NAME", "DEST_MODULE_LOCATION", "STRIP", "h1", "h2"]
WHITELIST = ("PACKAGE_NAME", "MAKE", "CLEAN", "BUILT_MODULE_NAME", "DEST_MODULE_LOCATION", "STRIP")
REFS = [*NAMES, "kernelver", "arch", "FOO", "HOME", "UNSET_X"]

plain_chars = st.sampled_from(list("abcXYZ019._-/+,:=@%^!?*[]{}~#"))
text_chars = st.sampled_from(list("ab c\t*?[]{}$\\'\"`/.-:=\n~"))


@st.composite
def pattern(draw: st.DrawFn) -> str:
    parts = draw(
        st.lists(
            st.sampled_from(
                [
                    "a",
                    "b",
                    "*",
                    "?",
                    "[ab]",
                    "[!a]",
                    "[[:alpha:]]",
                    "\\*",
                    "'*'",
                    '"?"',
                    "-",
                    ".",
                    "@(a|b)",
                    "+([0-9])",
                    "$h1",
                    "[a-c]",
                    "[\\-]",
                    "[]a]",
                    "?(a)",
                    "*(b)",
                    "${h2:-*}",
                    "[!-]",
                ]
            ),
            min_size=0,
            max_size=3,
        )
    )
    return "".join(parts)


@st.composite
def expansion(draw: st.DrawFn, dq: bool) -> str:
    name = draw(st.sampled_from(REFS))
    idx = draw(st.sampled_from(["", "", "[0]", "[1]"]))
    kind = draw(st.integers(0, 10))
    if kind <= 2:
        return f"${name}" if not idx and kind == 0 else f"${{{name}{idx}}}"
    if kind <= 6:
        op = draw(st.sampled_from([":-", "-", ":+", "+"]))
        word = draw(st.sampled_from(["", "w", "x y", "$h2", "${FOO}", "'q'", "a\\}b", "(p|q)", "'}'"]))
        if dq and "'" in word:
            word = "q"
        return f"${{{name}{idx}{op}{word}}}"
    op = draw(st.sampled_from(["#", "##", "%", "%%"]))
    return f"${{{name}{idx}{op}{draw(pattern())}}}"


@st.composite
def unquoted_word(draw: st.DrawFn) -> str:
    pieces = []
    for _ in range(draw(st.integers(0, 4))):
        k = draw(st.integers(0, 9))
        if k == 9 and draw(st.integers(0, 3)):
            k = 0  # constructs outside the subset: rarely
        if k <= 2:
            pieces.append(draw(st.text(plain_chars, min_size=1, max_size=4)))
        elif k == 3:
            pieces.append("'" + draw(st.text(text_chars.filter(lambda c: c != "'"), max_size=6)) + "'")
        elif k <= 5:
            inner = []
            for _ in range(draw(st.integers(0, 3))):
                j = draw(st.integers(0, 4))
                if j <= 1:
                    inner.append(draw(st.text(text_chars.filter(lambda c: c not in '"\\$`'), max_size=5)))
                elif j == 2:
                    inner.append(
                        draw(st.sampled_from(["\\$", "\\\\", '\\"', "\\`", "\\a", "\\\n", "$", "'"]))
                    )
                else:
                    inner.append(draw(expansion(True)))
            pieces.append('"' + "".join(inner) + '"')
        elif k <= 7:
            pieces.append(draw(expansion(False)))
        elif k == 8:
            pieces.append(draw(st.sampled_from(["\\ ", "\\*", "\\$", "\\\\", "\\\n", "$", "a~", "a=~"])))
        else:
            pieces.append(
                draw(
                    st.sampled_from(["$(echo hi)", "`x`", "$((1+1))", "$'x'", "$1", "${#FOO}", "${FOO/a/b}"])
                )
            )
    return "".join(pieces)


@st.composite
def statement(draw: st.DrawFn) -> str:
    k = draw(st.integers(0, 14))
    name = draw(st.sampled_from(NAMES))
    if k <= 6:
        sub = draw(st.sampled_from(["", "", "[0]", "[1]", "[3]", "[12]"]))
        plus = draw(st.sampled_from(["", "", "+"]))
        return f"{name}{sub}{plus}={draw(unquoted_word())}"
    if k <= 8:
        elems = []
        for _ in range(draw(st.integers(0, 3))):
            e = draw(
                st.sampled_from(
                    [
                        "a",
                        "'b c'",
                        '"$FOO"',
                        '"${kernelver%%-*}"',
                        "[4]=x",
                        "[2]=$FOO",
                        "''",
                        "# c\n",
                        "\n",
                        "*",
                        "$FOO",
                    ]
                )
            )
            elems.append(e)
        plus = draw(st.sampled_from(["", "+"]))
        return f"{name}{plus}=(" + " ".join(elems) + ")"
    if k == 9:
        return f"unset {name}" + draw(st.sampled_from(["", "[0]", "[1]"]))
    if k == 10:
        return f"export {name}={draw(unquoted_word())}"
    if k == 11:
        return "# " + draw(st.text(text_chars, max_size=8)).replace("\n", " ")
    if k == 12:
        return f"{name}={draw(unquoted_word())} {draw(st.sampled_from(NAMES))}={draw(unquoted_word())}"
    if k == 13 and draw(st.booleans()):
        return draw(
            st.sampled_from(["if true; then MAKE=x; fi", "echo hi", "h1=$(echo x)", "true && MAKE=y", ""])
        )
    return ""


@st.composite
def conf_file(draw: st.DrawFn) -> bytes:
    stmts = draw(st.lists(statement(), max_size=7))
    sep = draw(st.sampled_from(["\n", "\n", "; ", "\r\n"]))
    if sep == "; ":
        stmts = [x for x in stmts if x.strip() and not x.startswith("#")]
    text = sep.join(stmts)
    if draw(st.booleans()):
        text += "\n"
    return text.encode("utf-8", "surrogateescape")


@settings(
    max_examples=300,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    files=st.lists(conf_file(), min_size=1, max_size=3),
    injections=st.lists(
        st.tuples(
            st.sampled_from(list(WHITELIST)),
            st.sampled_from(["v", "$PACKAGE_NAME-x", "a b", "${kernelver}", "$MAKE"]),
        ),
        max_size=2,
    ),
    two_contexts=st.booleans(),
)
def test_hypothesis_data_equals_bash(
    files: List[bytes],
    injections: List[Tuple[str, str]],
    two_contexts: bool,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    contexts = (CONTEXT, CONTEXT2) if two_contexts else (CONTEXT,)
    d = tmp_path_factory.mktemp("hyp")
    work = d / "cwd"
    work.mkdir()
    for name in ("ab", "a1", "xyz.ko", 'MAKE0="ab"'):
        (work / name).write_text("")
    paths = []
    for k, data in enumerate(files):
        p = d / f"f{k}.conf"
        p.write_bytes(data)
        paths.append(p)
    old = os.getcwd()
    os.chdir(work)
    try:
        compare(paths, whitelist=WHITELIST, contexts=contexts, injections=injections, check_auto=False)
    finally:
        os.chdir(old)


def test_auto_uses_data_when_accepted(tmp_path: Path) -> None:
    conf = FIXTURES / "single" / "kbuild.conf"
    res = evaluate(EvalRequest((conf,), DKMS_CONF_WHITELIST, CONTEXT, environ()))
    assert res.evaluator == "data" and res.outside is None
    assert confdata.parse_file(conf) is confdata.parse_file(conf)  # cached


def test_framework_style_initial_values(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from pydkms.confeval import FRAMEWORK_KEYS

    monkeypatch.chdir(tmp_path)
    a = tmp_path / "framework.conf"
    a.write_text('# defaults\ncompress_xz_opts="$compress_xz_opts -9"\nsign_file=/lib/$kernelver/sign\n')
    b = tmp_path / "10-local.conf"
    b.write_text("source_tree=$dkms_tree/src\nverbose=1\n")
    initial = {
        "dkms_tree": {0: "/var/lib/dkms"},
        "source_tree": {0: "/usr/src"},
        "compress_xz_opts": {0: "--check=crc32"},
    }
    res = compare(
        [a, b], whitelist=FRAMEWORK_KEYS, contexts=({"kernelver": "6.1", "arch": "x86_64"},), initial=initial
    )
    assert res is not None
    assert plain(res[0].values) == {
        "dkms_tree": {0: "/var/lib/dkms"},
        "source_tree": {0: "/var/lib/dkms/src"},
        "compress_xz_opts": {0: "--check=crc32 -9"},
        "sign_file": {0: "/lib/6.1/sign"},
        "verbose": {0: "1"},
    }
