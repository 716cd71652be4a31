"""One module that cannot be read must not blind status or stop the others (issue 9, finding 5).

Two kinds of failure: a dkms.conf nested so deeply that reading it fails (Python's recursion limit
today; once the reader has its own depth limit, an invalid dkms.conf, exit 8), and faults
injected into the conf reader in-process (OSError, MemoryError, UnicodeDecodeError), which stand
for whatever nobody foresaw. Every module is real and built with real make.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any, Iterator, List, Tuple

import pytest

from pydkms import cli
from pydkms.moduleconf import ConfReader
from tests.conftest import ARCH, Scratch

pytestmark = pytest.mark.integration

#: 2000 nested ${A:-…}: deeper than anything the reader can follow
DEEP = "X=" + "${A:-" * 2000 + "x" + "}" * 2000 + "\n"

#: a failure of either kind: 1 (contained internal failure) or 8 (the reader's own limit)
DEEP_CODES = ("1", "8")


def hello_as(scratch: Scratch, name: str) -> Path:
    """``examples/hello`` as module ``name`` (its .ko is called <name>.ko), added."""
    src = scratch.add_source("hello", name=name)
    (src / f"{name}.c").write_text((src / "hello.c").read_text())
    (src / "hello.c").unlink()
    (src / "Kbuild").write_text(f"obj-m := {name}.o\n")
    conf = (src / "dkms.conf").read_text().replace('"hello"', f'"{name}"')
    (src / "dkms.conf").write_text(conf)
    scratch.ok("add", f"{name}/1.0")
    return src


def make_deep(src: Path) -> None:
    conf = src / "dkms.conf"
    conf.write_text(conf.read_text() + DEEP)


def test_status_lists_every_module_when_one_cannot_be_read(scratch: Scratch, kernel: str) -> None:
    for name in ("aaa", "deep", "zzz"):
        hello_as(scratch, name)
        scratch.ok("build", f"{name}/1.0", "-k", kernel)
    make_deep(scratch.source_tree / "deep-1.0")
    r = scratch.dkms("status")
    assert r.rc == 0, r
    lines = r.lines
    assert lines[0] == f"aaa/1.0, {kernel}, {ARCH}: built" and lines[2] == f"zzz/1.0, {kernel}, {ARCH}: built"
    # contained: listed as broken with the reason; or (reader's own limit) a conf that cannot be
    # evaluated, which status shows without suffixes, silently (status.md §2.2)
    assert lines[1] in ("deep/1.0: broken", f"deep/1.0, {kernel}, {ARCH}: built"), r
    if lines[1] == "deep/1.0: broken":
        assert r.err == (
            "Warning: deep/1.0 cannot be looked at, so it is listed as broken: its input is nested too "
            "deeply to be processed (the Python recursion limit was reached).\n"
        )
    else:
        assert r.err == ""
    doc = json.loads(scratch.ok("status", "--json").out)
    assert [(e["module"], e["state"]) for e in doc["entries"]] == [
        ("aaa", "built"),
        ("deep", "broken" if lines[1].endswith("broken") else "built"),
        ("zzz", "built"),
    ]


def test_autoinstall_reports_the_module_and_installs_the_others(scratch: Scratch, kernel: str) -> None:
    for name in ("aaa", "deep", "zzz"):
        hello_as(scratch, name)
    make_deep(scratch.source_tree / "deep-1.0")
    r = scratch.dkms("autoinstall", "-k", kernel)
    assert r.rc == 11, r
    assert f"Autoinstall on {kernel} succeeded for module(s) aaa/1.0 zzz/1.0." in r.out
    failed = re.search(rf"Autoinstall on {re.escape(kernel)} failed for module\(s\) deep\((\d+)\)\.", r.out)
    assert failed and failed.group(1) in DEEP_CODES, r
    assert "deep/1.0" in r.err and "Traceback" not in r.err and "internal error" not in r.err
    for name in ("aaa", "zzz"):
        assert (scratch.dkms_tree / name / f"kernel-{kernel}-{ARCH}").is_symlink()


def test_kernel_prerm_and_match_go_on_past_it(scratch: Scratch, kernels: List[str]) -> None:
    k1, k2 = kernels[:2]
    for name in ("aaa", "deep"):
        hello_as(scratch, name)
        scratch.ok("install", f"{name}/1.0", "-k", k1)
    make_deep(scratch.source_tree / "deep-1.0")
    # match: deep cannot be installed on k2, aaa is
    r = scratch.dkms("match", f"--templatekernel={k1}", "-k", k2)
    assert r.rc in (1, 8), r
    assert re.search(r"match failed for deep/1\.0\((1|8)\)\.", r.err), r
    assert (scratch.dkms_tree / "aaa" / f"kernel-{k2}-{ARCH}").is_symlink()
    assert not (scratch.dkms_tree / "deep" / f"kernel-{k2}-{ARCH}").exists()
    # kernel_prerm: deep is removed from its built files, like a module whose conf is invalid
    r = scratch.dkms("kernel_prerm", "-k", k1)
    assert r.rc == 0, r
    assert (
        "The dkms.conf of deep/1.0 cannot be read" in r.err and "removing it using its built files" in r.err
    )
    for name in ("aaa", "deep"):
        assert not (scratch.dkms_tree / name / "1.0" / k1).exists()
        assert not (scratch.install_tree / k1 / "updates" / "dkms" / f"{name}.ko").exists()


# --------------------------------------------------------------------------------------------
# Injected faults: the unforeseen, in-process


#: what the conf reader raises, and the reason the user reads; the OSError comes from a real open()
FAULTS = [
    (FileNotFoundError(), "Could not open /nonexistent-pydkms/dkms.conf: no such file or directory."),
    (MemoryError(), "dkms ran out of memory."),
    (
        UnicodeDecodeError("utf-8", b"\xff", 0, 1, "invalid start byte"),
        "text that is not valid utf-8: invalid start byte at byte 0.",
    ),
]


@pytest.fixture
def in_process(scratch: Scratch, monkeypatch: pytest.MonkeyPatch) -> Iterator[Scratch]:
    """``cli.main`` in this process, with the scratch trees' environment."""
    for key, value in scratch.env().items():
        monkeypatch.setenv(key, value)
    monkeypatch.chdir(scratch.root)
    yield scratch


def fail_reading(monkeypatch: pytest.MonkeyPatch, module: str, fault: BaseException) -> None:
    """Reading the dkms.conf of ``module`` raises ``fault`` (an OSError: the one open() raises)."""
    real = ConfReader.read

    def read(self: ConfReader, m: str, *args: Any, **kwargs: Any) -> Any:
        if m == module:
            if isinstance(fault, OSError):
                open("/nonexistent-pydkms/dkms.conf")  # noqa: SIM115 (it raises)
            raise fault
        return real(self, m, *args, **kwargs)

    monkeypatch.setattr(ConfReader, "read", read)


def run(scratch: Scratch, capsys: pytest.CaptureFixture[str], *args: str) -> Tuple[int, str, str]:
    rc = cli.main([*args, *scratch.tree_args()])
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.mark.parametrize(("fault", "reason"), FAULTS, ids=["OSError", "MemoryError", "UnicodeDecodeError"])
def test_status_contains_any_failure_of_one_module(
    in_process: Scratch,
    kernel: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    fault: BaseException,
    reason: str,
) -> None:
    s = in_process
    for name in ("aaa", "bad"):
        hello_as(s, name)
        s.ok("build", f"{name}/1.0", "-k", kernel)
    fail_reading(monkeypatch, "bad", fault)
    rc, out, err = run(s, capsys, "status", "-k", kernel, "-k", "other")
    assert rc == 0
    assert out == f"aaa/1.0, {kernel}, {ARCH}: built\nbad/1.0: broken\naaa/1.0: added\nbad/1.0: broken\n"
    assert err == f"Warning: bad/1.0 cannot be looked at, so it is listed as broken: {reason}\n"  # once
    rc, out, err = run(s, capsys, "status", "--json")
    assert rc == 0
    assert [(e["module"], e["state"]) for e in json.loads(out)["entries"]] == [
        ("aaa", "built"),
        ("bad", "broken"),
    ]
    assert err == f"Warning: bad/1.0 cannot be looked at, so it is listed as broken: {reason}\n"


@pytest.mark.parametrize(("fault", "reason"), FAULTS, ids=["OSError", "MemoryError", "UnicodeDecodeError"])
def test_autoinstall_contains_any_failure_of_one_module(
    in_process: Scratch,
    kernel: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    fault: BaseException,
    reason: str,
) -> None:
    s = in_process
    for name in ("aaa", "bad"):
        hello_as(s, name)
    capsys.readouterr()
    fail_reading(monkeypatch, "bad", fault)
    rc, out, err = run(s, capsys, "autoinstall", "-k", kernel)
    assert rc == 11
    assert f"Autoinstall on {kernel} succeeded for module(s) aaa/1.0." in out
    assert f"Autoinstall on {kernel} failed for module(s) bad(1)." in out
    assert f"Error! bad/1.0: {reason}\n(run with --debug for a traceback)\n" in err
    assert (s.dkms_tree / "aaa" / f"kernel-{kernel}-{ARCH}").is_symlink()
    shutil.rmtree(s.dkms_tree / "bad")


@pytest.mark.parametrize("jobs", ["1", "2"])  # one after the other, and in worker threads
def test_a_planned_job_that_fails_unexpectedly_is_one_failure(
    in_process: Scratch,
    kernel: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    jobs: str,
) -> None:
    s = in_process
    for name in ("aaa", "bad"):
        hello_as(s, name)
    capsys.readouterr()
    real = ConfReader.read
    calls: List[str] = []

    def read(self: ConfReader, m: str, *args: Any, **kwargs: Any) -> Any:
        calls.append(m)
        if m == "bad" and calls.count("bad") > 1:  # planning reads it; the job's build fails
            raise MemoryError()
        return real(self, m, *args, **kwargs)

    monkeypatch.setattr(ConfReader, "read", read)
    rc, out, err = run(s, capsys, "autoinstall", "-k", kernel, "-j", jobs)
    assert rc == 11
    assert f"Autoinstall on {kernel} succeeded for module(s) aaa/1.0." in out
    assert f"Autoinstall on {kernel} failed for module(s) bad(1)." in out
    assert (
        f"Error! bad/1.0 for {kernel} ({ARCH}): dkms ran out of memory.\n(run with --debug for a traceback)\n"
        in err
    )
    assert (s.dkms_tree / "aaa" / f"kernel-{kernel}-{ARCH}").is_symlink()
