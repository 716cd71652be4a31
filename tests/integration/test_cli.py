"""The command line as a user meets it: no action, help, version, unknown options, privileges."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import EXAMPLES, Scratch


def test_no_action_help_version(bare_scratch: Scratch) -> None:
    r = bare_scratch.dkms(trees=False)
    assert r.rc == 4 and r.out == "" and "Usage:" in r.err  # [fix D-14]
    r = bare_scratch.dkms("--help", trees=False)
    assert r.rc == 0 and "Usage:" in r.out and "pydkms" in r.out
    r = bare_scratch.dkms("-V", "--bogus", trees=False)  # takes effect when reached
    assert (r.rc, r.out) == (0, "dkms-3.2.2\n")
    r = bare_scratch.dkms("status", "--bogus")
    assert r.rc == 2 and "--bogus" in r.err and "Usage:" in r.err
    r = bare_scratch.dkms("status", "build")
    assert r.rc == 4  # a second action


def test_status_of_an_empty_or_missing_tree(bare_scratch: Scratch, tmp_path: Path) -> None:
    assert bare_scratch.ok("status").out == ""
    r = bare_scratch.dkms("status", "--dkmstree", str(tmp_path / "nowhere"), trees=False)
    assert (r.rc, r.out, r.err) == (0, "", "")


def test_errors_are_one_clean_message(bare_scratch: Scratch) -> None:
    r = bare_scratch.dkms("build", "nothere/1.0", "-k", "6.1.0-1-amd64")
    assert r.rc == 2
    assert "Traceback" not in r.err
    assert r.err.startswith("Error! ") and "nothere-1.0" in r.err


def _nobody() -> list:
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("setpriv (util-linux) is needed to drop privileges")
    return [setpriv, "--reuid=65534", "--regid=65534", "--clear-groups"]


def test_privileges(tmp_path: Path) -> None:
    import tempfile

    root = Path(tempfile.mkdtemp(prefix="pydkms-priv-"))  # pytest's own tmp dirs are root-only
    try:
        root.chmod(0o755)
        s = Scratch(root)
        for d in (s.dkms_tree, s.source_tree, s.install_tree, s.etc):
            d.mkdir(parents=True)
        shutil.copytree(EXAMPLES / "hello", s.source_tree / "hello-1.0")
        s.ok("add", "hello/1.0")
        for d in (root, *root.rglob("*")):
            if not d.is_symlink():
                d.chmod(d.stat().st_mode | 0o005)  # readable by nobody, not writable
        env = s.env()
        for args, message in (
            (["install", "hello/1.0", "-k", "6.1.0-1-amd64"], "You must be root"),
            (["uninstall", "hello/1.0", "-k", "6.1.0-1-amd64"], "You must be root"),
            (["remove", "hello/1.0", "--all"], "No write access to the DKMS tree"),
        ):
            r = subprocess.run(
                [*_nobody(), *s.dkms_argv(*args)], env=env, capture_output=True, text=True, cwd="/"
            )
            assert r.returncode == 1, (args, r.stdout, r.stderr)
            assert message in r.stderr, (args, r.stderr)
        # status needs no privilege and no lock
        r = subprocess.run(
            [*_nobody(), *s.dkms_argv("status")], env=env, capture_output=True, text=True, cwd="/"
        )
        assert (r.returncode, r.stdout) == (0, "hello/1.0: added\n"), r.stderr
    finally:
        shutil.rmtree(root, ignore_errors=True)
