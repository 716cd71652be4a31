"""A file name matched by a glob in a plain-settings dkms.conf is never run (issue 9, finding 6).

No kernel headers are needed: ``add`` reads the conf and refuses it before anything is built.
"""

from __future__ import annotations

from tests.conftest import Scratch


def test_add_refuses_a_file_name_that_upstream_would_run(bare_scratch: Scratch) -> None:
    s = bare_scratch
    src = s.add_source("hello")
    victim = s.root / "dir"
    victim.mkdir()
    (victim / 'q" ; id > pwn ; x=""').write_text("")
    conf = src / "dkms.conf"
    conf.write_text(conf.read_text() + f'BUILD_EXCLUSIVE_KERNEL="6 {victim}/*"\n')
    r = s.dkms("add", "hello/1.0", cwd=s.root)
    assert r.rc == 8, str(r)
    assert not (s.root / "pwn").exists(), "the file name was run as a command"
    assert "evaluated by bash" not in r.err
    assert f"{conf}:6: BUILD_EXCLUSIVE_KERNEL[0]: pathname expansion gives the file name" in r.err
    assert 'q" ; id > pwn ; x=""' in r.err and "refused" in r.err
    assert not (s.dkms_tree / "hello").exists()
    # a harmless match is read as data: the conf is added, still without bash
    (victim / 'q" ; id > pwn ; x=""').unlink()
    (victim / 'ok"').write_text("")
    r = s.ok("add", "hello/1.0", cwd=s.root)
    assert "evaluated by bash" not in r.err
    assert (s.dkms_tree / "hello" / "1.0").is_dir()
