"""File names that a glob in a plain-settings dkms.conf matches are read as data, never run as code.

Upstream's protocol prints ``NAME[i]="<value>"`` with the value unquoted (so it is split and
globbed) and sources what it printed: a file name that a glob in the value matches becomes part of
shell code. The data evaluator expands such globs itself, reads the printed line as bash would
when it is plain assignments, and refuses the file otherwise; it never hands it to bash.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Dict, List, Optional

import pytest

from pydkms.confeval import (
    EvalMode,
    EvalRequest,
    EvalResult,
    OutsideSubsetError,
    RefusedConfError,
    evaluate,
)
from tests.support.bashbatch import TRICKY_NAMES
from tests.support.confs import write_confs

pytestmark = pytest.mark.skipif(shutil.which("bash") is None, reason="bash is needed")

W = ("X", "Y", "BUILD_EXCLUSIVE_KERNEL")


def env(locale: str = "C") -> Dict[str, str]:
    return {"PATH": "/usr/bin:/bin", "HOME": "/root", "LC_ALL": locale}


def request(
    files: Sequence[Path], mode: EvalMode, environ: Mapping[str, str], strict: bool = True
) -> EvalRequest:
    return EvalRequest(tuple(files), W, {"kernelver": "6.1.0-1-amd64"}, environ, mode=mode, strict=strict)


def plain(res: EvalResult) -> Dict[str, Dict[int, str]]:
    return {k: dict(v) for k, v in res.values.items()}


@pytest.fixture(autouse=True)
def _cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    return cwd


def test_the_file_name_of_the_issue_is_not_run(tmp_path: Path) -> None:
    d = tmp_path / "dir"
    d.mkdir()
    (d / 'q" ; id > pwn ; x=""').write_text("")
    files = write_confs(tmp_path, f'BUILD_EXCLUSIVE_KERNEL="6 {d}/*"\n')
    for mode in (EvalMode.AUTO, EvalMode.DATA):
        with pytest.raises(RefusedConfError) as info:
            evaluate(request(files, mode, env()))
        c = info.value.construct
        assert c.file == files[0] and c.line == 1
        assert 'q" ; id > pwn ; x=""' in c.text and "code" in c.text and "`id`" in c.text
    assert not (Path.cwd() / "pwn").exists()
    # lenient data mode skips the element, with a warning
    res = evaluate(request(files, EvalMode.DATA, env(), strict=False))
    assert plain(res) == {} and any("pathname expansion" in w for w in res.warnings)
    assert not (Path.cwd() / "pwn").exists()


def test_a_name_ending_in_a_quote_is_read_as_data(tmp_path: Path) -> None:
    # the last field "<dir>/*"" matches names ending in '"': the name supplies the closing quote
    d = tmp_path / "dir"
    d.mkdir()
    (d / 'ok"').write_text("")
    files = write_confs(tmp_path, f'BUILD_EXCLUSIVE_KERNEL="6 {d}/*"\n')
    res = evaluate(request(files, EvalMode.AUTO, env()))
    assert res.evaluator == "data" and res.outside is None
    assert plain(res) == {"BUILD_EXCLUSIVE_KERNEL": {0: f"6 {d}/ok"}}
    bash = evaluate(request(files, EvalMode.BASH, env()))
    assert plain(bash) == plain(res)


TEMPLATES = [
    '{x}="p {d}/* q"\n',
    '{x}="p {d}/*"\n',
    '{x}="{d}/*"\n',
    '{x}="p {d}/.* q"\n',
    '{x}="p {d}/?* {d}/*[!a-z]"\n',
    "{x}='p {d}/* q'\n{y}=\"${x}\"\n",
    "{y}='$HOME'\n{x}=\"p {d}/@(*b|*e|p*) ${y}\"\n",
]


def names_as_bash(
    files: Sequence[Path], whitelist: Sequence[str], environ: Mapping[str, str]
) -> Optional[str]:
    """Compare the data evaluator with bash: None if equal, 'refused' if data refused, else why."""

    def req(mode: EvalMode) -> EvalRequest:
        return EvalRequest(tuple(files), tuple(whitelist), {}, environ, mode=mode)

    try:
        data = evaluate(req(EvalMode.DATA))
    except RefusedConfError:
        # bash would run the names: it is not used in auto mode either
        with pytest.raises(RefusedConfError):
            evaluate(req(EvalMode.AUTO))
        return "refused"
    except OutsideSubsetError as exc:
        return f"outside: {exc.construct.text}"
    bash = evaluate(req(EvalMode.BASH))
    if plain(data) != plain(bash):
        return f"data {plain(data)} != bash {plain(bash)} ({bash.stderr})"
    return None


@pytest.mark.parametrize("locale", ["C", "C.UTF-8"])
def test_tricky_names_give_the_values_bash_gives(tmp_path: Path, locale: str) -> None:
    outcomes: List[Optional[str]] = []
    for k, name in enumerate(TRICKY_NAMES):
        d = tmp_path / f"d{k}"
        d.mkdir()
        with open(os.path.join(os.fsencode(d), name), "wb"):
            pass
        (d / "plain").write_text("")
        # all templates in one file; where it is refused, each template on its own
        texts = [t.format(d=d, x=f"X{j}", y=f"Y{j}") for j, t in enumerate(TEMPLATES)]
        names = [[f"X{j}", f"Y{j}"] for j in range(len(TEMPLATES))]
        (tmp_path / f"w{k}").mkdir()
        everything = [n for pair in names for n in pair]
        whole = names_as_bash(write_confs(tmp_path / f"w{k}", "".join(texts)), everything, env(locale))
        if whole != "refused":
            outcomes.append(whole)
            continue
        for j, (text, whitelist) in enumerate(zip(texts, names)):
            conf_dir = tmp_path / f"c{k}-{j}"
            conf_dir.mkdir()
            outcomes.append(names_as_bash(write_confs(conf_dir, text), whitelist, env(locale)))
    problems = [o for o in outcomes if o not in (None, "refused")]
    assert not problems, problems[:5]
    assert not (Path.cwd() / "pwn").exists()
    # both kinds occur: names read as data (equal to bash) and names refused
    assert outcomes.count(None) > len(TRICKY_NAMES) // 2 and outcomes.count("refused") >= 8


def test_first_field_matches_are_data(tmp_path: Path) -> None:
    # X[0]="p matches the file X0="p in the current directory: bash then assigns X0 instead
    (Path.cwd() / 'X0="p').write_text("")
    files = write_confs(tmp_path, "X='p q'\nY='$X0'\n")
    res = evaluate(request(files, EvalMode.AUTO, env()))
    assert res.evaluator == "data"
    assert plain(res) == {"Y": {0: "p q"}}
    assert plain(evaluate(request(files, EvalMode.BASH, env()))) == plain(res)


def test_first_field_matches_that_are_code_are_refused(tmp_path: Path) -> None:
    (Path.cwd() / 'X0="p" ; touch pwn ; y="').write_text("")
    files = write_confs(tmp_path, "X='p* q'\n")
    with pytest.raises(RefusedConfError):
        evaluate(request(files, EvalMode.AUTO, env()))
    assert not (Path.cwd() / "pwn").exists()


def test_unset_of_an_element_matching_a_file_is_data(tmp_path: Path) -> None:
    # `unset X[0]` unquoted matches the file X0: bash unsets the variable X0 instead
    (Path.cwd() / "X0").write_text("")
    files = write_confs(tmp_path, "X=(a b)\nY=$X\nunset X[0]\n")
    res = evaluate(request(files, EvalMode.AUTO, env()))
    assert res.evaluator == "data" and plain(res) == {"X": {0: "a", 1: "b"}, "Y": {0: "a"}}
    assert plain(evaluate(request(files, EvalMode.BASH, env()))) == plain(res)


@pytest.mark.parametrize("whitelist_first", ["X", "Y"])
def test_no_bash_once_names_are_in_the_echo(tmp_path: Path, whitelist_first: str) -> None:
    # Y needs bash (its value holds a quote that the re-reading turns into code); X's glob
    # matches a file: bash would redo X's echo, with whatever names are there by then
    d = tmp_path / "dir"
    d.mkdir()
    files = write_confs(tmp_path, f"X='p {d}/* q'\nY='a\"b'\n")
    order = ("X", "Y") if whitelist_first == "X" else ("Y", "X")
    req = EvalRequest(tuple(files), order, {}, env(), mode=EvalMode.AUTO)
    assert evaluate(req).evaluator == "bash"  # no file: the fallback stays
    (d / "plain").write_text("")
    with pytest.raises(RefusedConfError) as info:
        evaluate(req)
    assert "bash is not used instead" in info.value.construct.text


def test_unreproducible_expansion_is_refused_not_run(tmp_path: Path) -> None:
    # several matches sorted by a locale's collation: bash is not asked instead
    d = tmp_path / "dir"
    d.mkdir()
    for name in ("a", "B", "$(touch pwn)"):
        (d / name).write_text("")
    files = write_confs(tmp_path, f"X='p {d}/* q'\n")
    with pytest.raises(RefusedConfError) as info:
        evaluate(request(files, EvalMode.AUTO, {**env(), "LC_ALL": "en_US.UTF-8"}))
    assert "locale" in info.value.construct.text
    assert not (Path.cwd() / "pwn").exists()
