"""How a dkms.conf the reader refuses, or bash complains about, is reported through the real CLI.

No kernel headers are needed: everything here happens when the conf is read.
"""

from __future__ import annotations

from pathlib import Path

from tests.conftest import Scratch

HEAD = "PACKAGE_NAME=deep\nPACKAGE_VERSION=1.0\nBUILT_MODULE_NAME[0]=deep\nDEST_MODULE_LOCATION[0]=/updates\n"


def write_conf(s: Scratch, text: str, name: str = "deep") -> Path:
    src = s.source_tree / f"{name}-1.0"
    src.mkdir(parents=True, exist_ok=True)
    conf = src / "dkms.conf"
    conf.write_text(text.replace("PACKAGE_NAME=deep", f"PACKAGE_NAME={name}"))
    return conf


def test_deep_conf_is_refused_with_exit_8(bare_scratch: Scratch) -> None:
    """400 nested ${A:-…} used to end in "internal error: RecursionError" (exit 1)."""
    s = bare_scratch
    conf = write_conf(s, HEAD + 'MAKE="' + "${A:-" * 400 + "make" + "}" * 400 + '"\n')
    r = s.dkms("add", "deep/1.0")
    assert r.rc == 8, str(r)
    assert r.err.splitlines() == [
        f"Error! {conf}:5: quotes and expansions nested 401 levels deep; the limit is 32. "
        'Such a file is refused unless conf_evaluation="bash" lets bash read it.'
    ], str(r)
    assert not (s.dkms_tree / "deep").exists()


def test_deep_command_substitution_is_refused_with_exit_8(bare_scratch: Scratch) -> None:
    """490 nested $( is outside the subset: it is refused too, not handed to bash."""
    s = bare_scratch
    conf = write_conf(s, HEAD + "MAKE=" + "$(" * 490 + "\n")
    r = s.dkms("add", "deep/1.0")
    assert r.rc == 8, str(r)
    assert len(r.err.splitlines()) == 1 and r.err.startswith(f"Error! {conf}:5: "), str(r)
    assert "levels deep; the limit is 32" in r.err


def test_deep_conf_is_read_by_bash_mode(bare_scratch: Scratch) -> None:
    s = bare_scratch
    (s.etc / "framework.conf").write_text('conf_evaluation="bash"\n')
    write_conf(s, HEAD + 'MAKE="' + "${A:-" * 400 + "make" + "}" * 400 + '"\n')
    s.ok("add", "deep/1.0")
    assert s.status() == ["deep/1.0: added"]


# --------------------------------------------------------------------------------------------
# bash's complaints and validation errors name the real file


def test_bash_complaint_names_the_real_conf_and_line(bare_scratch: Scratch) -> None:
    """A CRLF conf that needs bash used to be reported as /tmp/pydkms-bash.*/conf.0: line 5."""
    s = bare_scratch
    conf = write_conf(s, HEAD + "if true; then nosuchcommand_xyz; fi\n")
    conf.write_bytes(conf.read_bytes().replace(b"\n", b"\r\n"))
    r = s.ok("add", "deep/1.0")
    assert f"{conf}: line 5: nosuchcommand_xyz: command not found" in r.err.splitlines(), str(r)
    assert "pydkms-bash" not in r.err and "/tmp/tmp." not in r.err, str(r)


def test_bad_value_from_an_override_is_blamed_on_the_override(bare_scratch: Scratch) -> None:
    s = bare_scratch
    conf = write_conf(s, HEAD + "AUTOINSTALL=yes\n")
    override = s.etc / "deep.conf"
    override.write_text("# local settings\nAUTOINSTALL=maybe\n")
    message = "AUTOINSTALL='maybe' is not allowed: use yes, no or leave it empty."
    r = s.dkms("add", "deep/1.0")
    assert r.rc == 8, str(r)
    assert r.err.splitlines()[0] == f"Error! {override}:2: {message}", str(r)

    override.write_text("# local settings\nif true; then AUTOINSTALL=maybe; fi\n")  # needs bash
    r = s.dkms("add", "deep/1.0")
    assert r.rc == 8, str(r)
    assert f"Error! {override}: {message}" in r.err.splitlines(), str(r)

    # the override assigns and unsets: the value is dkms.conf's, and so is the blame
    conf.write_text(HEAD + "AUTOINSTALL=maybe\n")
    override.write_text("AUTOINSTALL=no\nunset AUTOINSTALL\n")
    r = s.dkms("add", "deep/1.0")
    assert r.rc == 8, str(r)
    assert r.err.splitlines()[0] == f"Error! {conf}:5: {message}", str(r)
