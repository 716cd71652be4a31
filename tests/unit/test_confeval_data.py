"""Unit tests of the data evaluator (no bash involved: expected values are written out)."""

from __future__ import annotations

import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Dict, Optional, Tuple

import pytest

from pydkms.confeval import (
    DKMS_CONF_WHITELIST,
    FRAMEWORK_KEYS,
    Construct,
    EvalMode,
    EvalRequest,
    EvalResult,
    OutsideSubsetError,
    RefusedConfError,
    evaluate,
    evaluate_many,
)
from pydkms.confeval import data as confdata
from pydkms.confeval import glob as confglob
from tests.support.confs import write_confs

W = ("PACKAGE_NAME", "PACKAGE_VERSION", "MAKE", "CLEAN", "BUILT_MODULE_NAME", "X", "Y", "Z")
CTX = {
    "kernelver": "6.1.0-56-amd64",
    "arch": "x86_64",
    "kernel_source_dir": "/lib/modules/6.1.0-56-amd64/build",
    "dkms_tree": "/var/lib/dkms",
}
ENV = {"PATH": "/usr/bin:/bin", "HOME": "/root", "FOO": "foo  val", "LANG": "C"}


def run(
    tmp_path: Path,
    *texts: str | bytes,
    whitelist: Sequence[str] = W,
    ctx: Optional[Mapping[str, str]] = None,
    env: Optional[Mapping[str, str]] = None,
    injections: Sequence[Tuple[str, str]] = (),
    strict: bool = True,
) -> EvalResult:
    files = write_confs(tmp_path, *texts)
    req = EvalRequest(
        tuple(files),
        tuple(whitelist),
        CTX if ctx is None else ctx,
        ENV if env is None else env,
        tuple(injections),
        EvalMode.DATA,
        strict,
    )
    res = evaluate(req)
    assert res.evaluator == "data"
    return res


def vals(res: EvalResult) -> Dict[str, Dict[int, str]]:
    return {k: dict(v) for k, v in res.values.items()}


def outside(tmp_path: Path, *texts: str, **kw: object) -> Construct:
    with pytest.raises(OutsideSubsetError) as info:
        run(tmp_path, *texts, **kw)  # type: ignore[arg-type]
    return info.value.construct


@pytest.fixture(autouse=True)
def _cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")


# --------------------------------------------------------------------------------------------
# subset constructs


def test_exports() -> None:
    assert (
        DKMS_CONF_WHITELIST[0] == "PACKAGE_NAME" and DKMS_CONF_WHITELIST[-1] == "MODULES_CONF_OBSOLETE_ONLY"
    )
    assert len(DKMS_CONF_WHITELIST) == 40
    assert FRAMEWORK_KEYS[0] == "dkms_tree" and FRAMEWORK_KEYS[-1] == "conf_evaluation"


def test_quoting_forms(tmp_path: Path) -> None:
    res = run(
        tmp_path,
        "PACKAGE_NAME='single'\"double\"unquoted\nMAKE=\"a 'b' $kernelver\"\nCLEAN=a\\ b\\$c\nX=''\n",
    )
    assert vals(res) == {
        "PACKAGE_NAME": {0: "singledoubleunquoted"},
        "MAKE": {0: "a 'b' 6.1.0-56-amd64"},
        "CLEAN": {0: "a b"},  # the second pass expands $c
        "X": {0: ""},
    }


def test_expansion_forms(tmp_path: Path) -> None:
    res = run(
        tmp_path,
        "PACKAGE_VERSION=1.2.3-rc4\n"
        'MAKE="${PACKAGE_VERSION%%-*} ${PACKAGE_VERSION%.*} ${PACKAGE_VERSION#*.} ${PACKAGE_VERSION##*.}"\n'
        'CLEAN="${NOPE:-default} ${NOPE-dash} ${PACKAGE_VERSION:+plus} ${NOPE+never}|${EMPTY-e}${EMPTY:-E}"\n'
        "EMPTY=\n"
        "X=$kernelver${arch}${BUILT_MODULE_NAME[3]-none}\n"
        "Y=${kernelver#+([0-9]).}\n",
    )
    v = vals(res)
    assert v["MAKE"] == {0: "1.2.3 1.2 2.3-rc4 3-rc4"}
    assert v["CLEAN"] == {0: "default dash plus |eE"}
    assert v["X"] == {0: "6.1.0-56-amd64x86_64none"}
    assert v["Y"] == {0: "1.0-56-amd64"}


def test_several_assignments_per_line(tmp_path: Path) -> None:
    res = run(tmp_path, "X=1 Y=$X; Z=2;MAKE=3 # comment\n")
    assert vals(res) == {"X": {0: "1"}, "Y": {0: "1"}, "Z": {0: "2"}, "MAKE": {0: "3"}}


def test_export_expands_before_assigning(tmp_path: Path) -> None:
    res = run(tmp_path, "X=old\nexport X=new Y=$X Z\n")
    assert vals(res) == {"X": {0: "new"}, "Y": {0: "old"}}


def test_unset(tmp_path: Path) -> None:
    res = run(tmp_path, "X=(a b c)\nunset X[1]\nY=1\nunset Y\nZ=(p q)\nunset 'Z[0]'\n")
    assert vals(res) == {"X": {0: "a", 2: "c"}, "Z": {1: "q"}}


def test_continuation_and_comments(tmp_path: Path) -> None:
    res = run(tmp_path, 'X=a\\\nb # c \\\nY="c\\\nd" Z=$PACKAGE\\\n_NAME\nPACKAGE_NAME=p\n')
    assert vals(res) == {"X": {0: "ab"}, "Y": {0: "cd"}, "Z": {0: ""}, "PACKAGE_NAME": {0: "p"}}


def test_arrays(tmp_path: Path) -> None:
    res = run(
        tmp_path,
        "X=(one two # comment\n  three [7]=seven eight)\n"
        "X+=(nine)\n"
        "Y[3]=sparse\nY[10]+=ten\nY[3]+=more\n"
        "Z=()\nZ+=(z)\n"
        "MAKE=(x y)\nMAKE+=z\n",
    )
    assert vals(res) == {
        "X": {0: "one", 1: "two", 2: "three", 7: "seven", 8: "eight", 9: "nine"},
        "Y": {3: "sparsemore", 10: "ten"},
        "Z": {0: "z"},
        "MAKE": {0: "xz", 1: "y"},
    }


def test_empty_string_is_present_and_unset_is_absent(tmp_path: Path) -> None:
    res = run(tmp_path, 'X=""\nY=(a)\nunset Y\n')
    assert vals(res) == {"X": {0: ""}}


# --------------------------------------------------------------------------------------------
# upstream protocol details


def test_double_expansion(tmp_path: Path) -> None:
    res = run(tmp_path, "MAKE='make KVER=$kernelver'\nCLEAN='a\\\\b \\$x'\n")
    assert vals(res) == {"MAKE": {0: "make KVER=6.1.0-56-amd64"}, "CLEAN": {0: "a\\b $x"}}


def test_whitelist_order_in_second_pass(tmp_path: Path) -> None:
    # BUILT_MODULE_NAME is re-read after PACKAGE_NAME (already re-assigned), MAKE before X.
    res = run(tmp_path, "BUILT_MODULE_NAME='$PACKAGE_NAME'\nPACKAGE_NAME=pkg\nMAKE='$X'\nX=later\n")
    assert vals(res) == {
        "BUILT_MODULE_NAME": {0: "pkg"},
        "PACKAGE_NAME": {0: "pkg"},
        "MAKE": {0: ""},
        "X": {0: "later"},
    }
    assert any("$X" in w for w in res.warnings)


def test_override_file_keeps_other_elements(tmp_path: Path) -> None:
    # bash truth: the parent only re-assigns printed elements, so X[1], X[2] and Y survive.
    res = run(tmp_path, "X=(a b c)\nY=(p q)\n", "X=(z)\nunset Y\n")
    assert vals(res) == {"X": {0: "z", 1: "b", 2: "c"}, "Y": {0: "p", 1: "q"}}


def test_each_file_expands_again(tmp_path: Path) -> None:
    res = run(tmp_path, "X='\\$kernelver'\n", "# nothing\n")
    assert vals(res) == {"X": {0: "6.1.0-56-amd64"}}
    res1 = run(tmp_path, "X='\\$kernelver'\n")
    assert vals(res1) == {"X": {0: "$kernelver"}}
    res2 = run(tmp_path, "X='\\\\$kernelver'\n")
    assert vals(res2) == {"X": {0: "\\6.1.0-56-amd64"}}


def test_helpers_do_not_survive_a_file(tmp_path: Path) -> None:
    res = run(tmp_path, "H=helper\nX=$H\n", "Y=${H:-gone}\n")
    assert vals(res) == {"X": {0: "helper"}, "Y": {0: "gone"}}


def test_whitelisted_names_are_unset_first(tmp_path: Path) -> None:
    res = run(tmp_path, "Y=${X-unset}\n", env={**ENV, "X": "from-env"})
    assert vals(res) == {"Y": {0: "unset"}}


def test_ifs_collapsing_at_echo(tmp_path: Path) -> None:
    res = run(tmp_path, 'X="  lead and  trail   "\nY="a\n   b\tc"\nZ="   "\n')
    assert vals(res) == {"X": {0: " lead and trail "}, "Y": {0: "a b c"}, "Z": {0: " "}}


def test_one_trailing_cr_removed(tmp_path: Path) -> None:
    res = run(tmp_path, "X='a\r'\nY='a\r\r'\n")
    assert vals(res) == {"X": {0: "a"}, "Y": {0: "a\r"}}


def test_crlf_file(tmp_path: Path) -> None:
    res = run(tmp_path, b'PACKAGE_NAME="crlf"\r\nMAKE=make\\\r\n\\ all\r\nX=(a\r\nb)\r\nY=1\r')
    assert vals(res) == {
        "PACKAGE_NAME": {0: "crlf"},
        "MAKE": {0: "make all"},
        "X": {0: "a", 1: "b"},
        "Y": {0: "1"},
    }


def test_undecodable_bytes_round_trip(tmp_path: Path) -> None:
    res = run(tmp_path, b"X='\xff\xfe'\nY=\xc3\xa9\n")
    v = vals(res)
    assert v["X"][0].encode("utf-8", "surrogateescape") == b"\xff\xfe"
    assert v["Y"] == {0: "é"}


def test_glob_at_echo_stage(tmp_path: Path) -> None:
    cwd = Path.cwd()
    for name in ("a.ko", "b.ko", ".hidden.ko", "c.txt"):
        (cwd / name).write_text("")
    (cwd / "sub").mkdir()
    (cwd / "sub" / "x.ko").write_text("")
    res = run(tmp_path, "X='make *.ko done'\nY='first *.none last'\nZ='p sub/*.ko */ q'\nMAKE='*.ko'\n")
    v = vals(res)
    assert v["X"] == {0: "make a.ko b.ko done"}
    assert v["Y"] == {0: "first *.none last"}
    assert v["Z"] == {0: "p sub/x.ko sub/ q"}
    # a single field carries the quotes of NAME[i]="...": no file matches it
    assert v["MAKE"] == {0: "*.ko"}


def test_glob_matching_the_protocol_prefix_is_read_as_data(tmp_path: Path) -> None:
    # X[0]="a*" matches the file X0="abc": the parent reads X0="abc" instead of X[0]=...,
    # and Y's second pass sees that variable
    (Path.cwd() / 'X0="abc"').write_text("")
    res = run(tmp_path, "Y='$X0'\nX='a*'\n")
    assert vals(res) == {"Y": {0: "abc"}}


def test_injections(tmp_path: Path) -> None:
    res = run(
        tmp_path,
        "PACKAGE_NAME=p\nMAKE=(m1 m2)\n",
        "CLEAN=c\n",
        injections=[("MAKE", "inj-$PACKAGE_NAME"), ("X", "${kernelver%%-*}")],
    )
    assert vals(res) == {
        "PACKAGE_NAME": {0: "p"},
        "MAKE": {0: "inj-p", 1: "m2"},
        "CLEAN": {0: "c"},
        "X": {0: "6.1.0"},
    }


def test_injection_with_quote_is_outside(tmp_path: Path) -> None:
    c = outside(tmp_path, "X=1\n", injections=[("MAKE", 'a"b')])
    assert "DKMS_DIRECTIVE MAKE" in c.text


def test_dependencies(tmp_path: Path) -> None:
    res = run(tmp_path, "MAKE='make $kernelver'\nX=$HOME\nY=$NOT_THERE\nZ=$X\n")
    assert res.dependencies == frozenset({"kernelver", "HOME", "NOT_THERE"})
    res2 = run(tmp_path, "X=plain\n")
    assert res2.dependencies == frozenset()


def test_unknown_variable_warnings(tmp_path: Path) -> None:
    res = run(tmp_path, "X=$UNKNOWN_A\nY=${UNKNOWN_A}$UNKNOWN_B\nZ=${UNKNOWN_C:-ok}\n")
    assert len(res.warnings) == 2
    assert res.warnings[0].endswith("f0.conf:1: uses $UNKNOWN_A which is not set")
    assert "UNKNOWN_B" in res.warnings[1]


def test_environment_and_context(tmp_path: Path) -> None:
    res = run(tmp_path, 'X="$FOO" Y=$module Z="${kernelver}"\n', ctx={**CTX, "module": "m"})
    # "foo  val": the echo step collapses the blanks
    assert vals(res) == {"X": {0: "foo val"}, "Y": {0: "m"}, "Z": {0: "6.1.0-56-amd64"}}


def test_context_name_that_is_whitelisted(tmp_path: Path) -> None:
    # framework files: dkms_tree is both a context variable and a key
    res = run(tmp_path, "source_tree=/src\n", whitelist=FRAMEWORK_KEYS, ctx={"dkms_tree": "/var/lib/dkms"})
    assert vals(res) == {"dkms_tree": {0: "/var/lib/dkms"}, "source_tree": {0: "/src"}}


def test_evaluate_many(tmp_path: Path) -> None:
    files = write_confs(tmp_path, "MAKE='make $kernelver'\nX=$arch\n")
    req = EvalRequest(tuple(files), W, {"arch": "x86_64"}, ENV, mode=EvalMode.DATA)
    res = evaluate_many(req, [{"kernelver": "1"}, {"kernelver": "2", "arch": "arm64"}])
    assert [vals(r) for r in res] == [
        {"MAKE": {0: "make 1"}, "X": {0: "x86_64"}},
        {"MAKE": {0: "make 2"}, "X": {0: "arm64"}},
    ]


# --------------------------------------------------------------------------------------------
# outside the subset: construct and line


@pytest.mark.parametrize(
    ("text", "line", "fragment"),
    [
        ("X=1\nY=$(uname -r)\n", 2, "command substitution `$(...)`"),
        ("X=`uname`\n", 1, "command substitution `...`"),
        ("\nX=$((1+2))\n", 2, "arithmetic expansion"),
        ("X=$[1+2]\n", 1, "arithmetic expansion"),
        ("X=$'a'\n", 1, "ANSI-C"),
        ('X=$"a"\n', 1, "locale"),
        ("X=~/a\n", 1, "tilde"),
        ("X=a:~/b\n", 1, "tilde"),
        ("X=1\nif true; then X=2; fi\n", 2, "compound command `if`"),
        ("case $x in a) ;; esac\n", 1, "compound command `case`"),
        ("for i in 1; do X=$i; done\n", 1, "compound command `for`"),
        ("while false; do :; done\n", 1, "compound command `while`"),
        ("[[ -n x ]]\n", 1, "compound command `[[`"),
        ("{ X=1; }\n", 1, "compound command `{`"),
        ("(X=1)\n", 1, "subshell"),
        ("f() { X=1; }\n", 1, "command `f`"),
        ("function f { X=1; }\n", 1, "compound command `function`"),
        (". /etc/os-release\n", 1, "command `.`"),
        ("source x\n", 1, "command `source`"),
        ("echo hi\n", 1, "command `echo`"),
        ("test -f x && X=1\n", 1, "command `test`"),
        ("pushd `dirname $BASH_SOURCE`\n", 1, "command `pushd`"),
        ("X=1 echo\n", 1, "command `echo`"),
        ("X=1 | cat\n", 1, "pipe"),
        ("X=1 && Y=2\n", 1, "`&&`"),
        ("X=1 || Y=2\n", 1, "`||`"),
        ("X=1 > /tmp/x\n", 1, "redirection"),
        ("X=1 &\n", 1, "background"),
        ("X=1;;\n", 1, "`;;`"),
        ("; X=1\n", 1, "empty command"),
        ("X=$1\n", 1, "special parameter `$1`"),
        ("X=$@\n", 1, "special parameter"),
        ("X=$$\n", 1, "special parameter"),
        ("X=${#Y}\n", 1, "length"),
        ("X=${!Y}\n", 1, "indirect"),
        ("X=${Y/a/b}\n", 1, "parameter expansion"),
        ("X=${Y:=a}\n", 1, "parameter expansion"),
        ("X=${Y[@]}\n", 1, "array subscript"),
        ("X[$i]=1\n", 1, "array subscript `[$i]`"),
        ("X[01]=1\n", 1, "array subscript"),
        ("X=$BASH_SOURCE\n", 1, "`$BASH_SOURCE`"),
        ("X=$RANDOM\n", 1, "`$RANDOM`"),
        ("X=$PWD\n", 1, "`$PWD`"),
        ("X=$LINENO\n", 1, "`$LINENO`"),
        ("X=$to_source_file\n", 1, "to_source_file"),
        ("X=$_pydkms_dir\n", 1, "_pydkms_dir"),
        ("IFS=:\n", 1, "assignment to `IFS`"),
        ("CR=x\n", 1, "assignment to `CR`"),
        ("LC_ALL=C\n", 1, "assignment to `LC_ALL`"),
        ("X=(a *.c)\n", 1, "pattern character"),
        ("X=($FOO)\n", 1, "word splitting"),
        ("X=({a,b})\n", 1, "brace expansion"),
        ('X="unterminated\n', 1, "unterminated double quote"),
        ("X='unterminated\n", 1, "unterminated single quote"),
        ("X='a\"b'\n", 1, 'contains `"`'),
        ("X='a`b'\n", 1, "backtick"),
        ("X='$(x)'\n", 1, "contains `$(`"),
        ("X='a\\'\n", 1, "ends in a backslash"),
        ("X='${Y/a/b}'\n", 1, "on re-reading"),
        ("X=${FOO#!(a)}\n", 1, "extglob"),
        ("X=<<EOF\nbody\nEOF\n", 1, "redirection"),
        ("unset -f X\n", 1, "`unset -f`"),
        ("unset kernelver\n", 1, "context variable"),
        ("export -n X\n", 1, "`export -n`"),
        ("X=$PATH\n", 1, "bash sets it"),
    ],
)
def test_outside_constructs(tmp_path: Path, text: str, line: int, fragment: str) -> None:
    env = {k: v for k, v in ENV.items() if k != "PATH"}
    c = outside(tmp_path, text, env=env)
    assert c.line == line, c
    assert fragment in c.text, c
    assert c.file.name == "f0.conf"


def test_outside_in_second_file(tmp_path: Path) -> None:
    with pytest.raises(OutsideSubsetError) as info:
        run(tmp_path, "X=1\n", "\n\nY=$(date)\n")
    assert info.value.construct.file.name == "f1.conf" and info.value.construct.line == 3


def test_nul_byte_is_outside(tmp_path: Path) -> None:
    c = outside(tmp_path, "X=1\nY=a\0b\n")
    assert c.line == 2 and "NUL" in c.text


# --------------------------------------------------------------------------------------------
# lenient mode


def test_lenient_skips_whole_compound_commands(tmp_path: Path) -> None:
    text = (
        'PACKAGE_NAME="digimend"\n'
        "if [ -f $kernel_source_dir/.config ]; then\n"
        "    . $kernel_source_dir/.config\n"
        '    if [ "${CONFIG_USB_HID:-n}" = "n" ]; then\n'
        '        BUILD_EXCLUSIVE_KERNEL="REQUIRES CONFIG_USB_HID"\n'
        "        X=inside\n"
        "    fi\n"
        "fi\n"
        'MAKE[0]="make KVERSION=$kernelver"\n'
        "case $kernelver in\n  6.*) Y=six ;;\n  *) Y=other ;;\nesac\n"
        "f() {\n  Z=fn\n}\n"
        "for i in 1 2; do Z=$i; done; CLEAN=after\n"
        "while false\ndo\n  Z=w\ndone\n"
        "cat <<EOF\nX=heredoc\nEOF\n"
        "X=$(uname) Y=keep\n"
        "PACKAGE_VERSION=1\n"
    )
    res = run(tmp_path, text, strict=False)
    assert vals(res) == {
        "PACKAGE_NAME": {0: "digimend"},
        "MAKE": {0: "make KVERSION=6.1.0-56-amd64"},
        "CLEAN": {0: "after"},
        "PACKAGE_VERSION": {0: "1"},
    }
    assert res.outside is not None and res.outside.line == 2
    skipped = [w for w in res.warnings if "skipped" in w]
    lines = [int(w.split(":")[1]) for w in skipped]
    assert lines == [2, 10, 14, 17, 18, 22, 25]


def test_lenient_skips_values_outside(tmp_path: Path) -> None:
    res = run(tmp_path, "X='a\"b'\nY=ok\n", "Z=$(date)\nX=2\n", strict=False)
    assert vals(res) == {"X": {0: "2"}, "Y": {0: "ok"}}
    assert res.outside is not None and res.outside.line == 1


def test_lenient_runtime_failure_restores_statement(tmp_path: Path) -> None:
    (Path.cwd() / "X1").write_text("")
    res = run(tmp_path, "X=(a b)\nX=changed unset X[1]\nunset X[1]\n", strict=False)
    assert vals(res) == {"X": {0: "a", 1: "b"}}


def test_auto_falls_back_to_bash(tmp_path: Path) -> None:
    files = write_confs(tmp_path, "X=1\nY=$(echo hi)\n")
    res = evaluate(EvalRequest(tuple(files), W, CTX, dict(os.environ)))
    assert res.evaluator == "bash"
    assert res.outside is not None and res.outside.line == 2
    assert vals(res) == {"X": {0: "1"}, "Y": {0: "hi"}}
    assert res.dependencies is None


# --------------------------------------------------------------------------------------------
# glob emulation


@pytest.mark.parametrize(
    ("value", "pattern", "op", "expected"),
    [
        ("abc", "a", "#", "bc"),
        ("aXbXc", "*X", "#", "bXc"),
        ("aXbXc", "*X", "##", "c"),
        ("aXbXc", "X*", "%", "aXb"),
        ("aXbXc", "X*", "%%", "a"),
        ("a*b", "a\\*", "#", "b"),
        ("abc", "[[:alpha:]]", "#", "bc"),
        ("abc", "[!b]", "#", "bc"),
        ("abc", "[]a]", "#", "bc"),
        ("abc", "*[", "##", "abc"),
        ("123abc", "+([0-9])", "#", "23abc"),
        ("123abc", "+([0-9])", "##", "abc"),
        ("abc", "@(a|ab)", "##", "c"),
        ("abc", "?(c)", "%", "abc"),
        ("a.b", "?", "%", "a."),
    ],
)
def test_remove_match(value: str, pattern: str, op: str, expected: str) -> None:
    assert confglob.remove_match(value, pattern, op) == expected


def test_glob_unsupported() -> None:
    with pytest.raises(confglob.Unsupported):
        confglob.remove_match("abc", "!(a)", "#")
    with pytest.raises(confglob.Unsupported):
        confglob.remove_match("é", "?", "#")
    with pytest.raises(confglob.Unsupported):
        confglob.remove_match("abc", "[[=a=]]", "#")


def test_has_magic() -> None:
    assert confglob.has_magic('X[0]="a')
    assert confglob.has_magic("a*") and confglob.has_magic("@(a)")
    assert not confglob.has_magic("a\\*") and not confglob.has_magic("a[") and not confglob.has_magic("a]")


def test_collation() -> None:
    assert confglob.collation_is_bytewise({})
    assert confglob.collation_is_bytewise({"LANG": "C.UTF-8"})
    assert not confglob.collation_is_bytewise({"LANG": "en_US.UTF-8"})
    assert confglob.collation_is_bytewise({"LANG": "en_US.UTF-8", "LC_ALL": "C"})


def test_non_c_locale_multiple_matches_is_refused(tmp_path: Path) -> None:
    for name in ("a.ko", "B.ko"):
        (Path.cwd() / name).write_text("")
    with pytest.raises(RefusedConfError) as info:
        run(tmp_path, "X='x *.ko y'\n", env={**ENV, "LANG": "en_US.UTF-8"})
    assert "locale" in info.value.construct.text


# --------------------------------------------------------------------------------------------
# caching and speed


def test_parse_cache(tmp_path: Path) -> None:
    (f,) = write_confs(tmp_path, "X=1\n")
    a = confdata.parse_file(f)
    assert confdata.parse_file(f) is a
    f.write_text("X=22\n")
    os.utime(f, ns=(1, 1))
    assert confdata.parse_file(f) is not a


def test_speed(tmp_path: Path) -> None:
    files = write_confs(
        tmp_path,
        'PACKAGE_NAME="acpi-call"\nPACKAGE_VERSION="1.2.2"\n'
        'MAKE[0]="make -C ${kernel_source_dir} M=${dkms_tree}/${PACKAGE_NAME}/${PACKAGE_VERSION}/build"\n'
        'CLEAN="make -C ${kernel_source_dir} M=${dkms_tree}/${PACKAGE_NAME}/${PACKAGE_VERSION}/build clean"\n'
        'BUILT_MODULE_NAME[0]="acpi_call"\nDEST_MODULE_LOCATION[0]="/extra"\nAUTOINSTALL="yes"\n'
        '# comment\nBUILD_EXCLUSIVE_CONFIG="CONFIG_ACPI"\n',
    )
    req = EvalRequest(tuple(files), DKMS_CONF_WHITELIST, CTX, ENV, mode=EvalMode.DATA)
    evaluate(req)
    n = 200
    t0 = time.perf_counter()
    for _ in range(n):
        evaluate(req)
    per = (time.perf_counter() - t0) / n
    assert per < 0.003, f"{per * 1000:.3f} ms per evaluation"
