"""The command line and framework files as a hostile or careless user meets them (issue 9).

Commands that would reach the real trees run in a private mount namespace
(:func:`~tests.support.upstream.run_isolated`) whose ``/var/lib/dkms`` and ``/usr/src`` are
directories of the test, so "nothing was written to the real trees" can be checked.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Dict, List, Optional

import pytest

from pydkms.version import version_sort_key
from tests.conftest import EXAMPLES, Result, Scratch
from tests.support.upstream import isolation_unavailable, run_isolated

pytestmark = pytest.mark.integration


class Host:
    """What the namespace shows at /var/lib/dkms and /usr/src (host dirs of the test)."""

    def __init__(self, root: Path) -> None:
        self.var_lib_dkms = root / "var-lib-dkms"
        self.usr_src = root / "usr-src"  # an overlay's upper layer: what is written to /usr/src
        self.var_lib_dkms.mkdir(parents=True)
        (self.usr_src / "upper").mkdir(parents=True)

    def put_source(self, name: str = "hello-1.0") -> None:
        """A module source at /usr/src/<name>, as the namespace sees it."""
        shutil.copytree(EXAMPLES / "hello", self.usr_src / "upper" / name)

    def written(self) -> List[str]:
        """Everything in the namespace's /var/lib/dkms."""
        return sorted(str(p.relative_to(self.var_lib_dkms)) for p in self.var_lib_dkms.rglob("*"))

    def dkms(self, scratch: Scratch, *args: str, env: Optional[Dict[str, str]] = None) -> Result:
        proc = run_isolated(
            scratch.dkms_argv(*args, trees=False),
            env=dict(scratch.env(env)),
            cwd=scratch.root,
            var_lib_dkms=self.var_lib_dkms,
            usr_src=self.usr_src,
            timeout=300,
        )
        return Result(["dkms", *args], proc.returncode, proc.stdout, proc.stderr)


@pytest.fixture
def host(tmp_path: Path) -> Host:
    reason = isolation_unavailable()
    if reason:
        pytest.skip(reason)
    return Host(tmp_path / "host")


def tree_contents(scratch: Scratch) -> List[str]:
    return sorted(str(p.relative_to(scratch.dkms_tree)) for p in scratch.dkms_tree.rglob("*"))


# --------------------------------------------------------------------------------------------
# Finding 3: option values that are options


def test_option_as_value_does_not_send_the_command_to_the_real_tree(
    host: Host, bare_scratch: Scratch
) -> None:
    s = bare_scratch
    s.add_source("hello")
    host.put_source()
    trees = s.tree_args()
    r = host.dkms(s, "add", "hello/1.0", "-k", *trees)  # -k --dkmstree DIR --sourcetree ...
    assert r.rc == 2, r
    assert r.err == (
        "Error! -k needs a value, but the argument after it is '--dkmstree', which starts with '-' like "
        "an option: no value of a dkms option does.\n"
    )
    assert host.written() == [] and tree_contents(s) == []
    # the same with the value where it belongs adds to the scratch tree only
    r = host.dkms(s, "add", "hello/1.0", *trees)
    assert r.rc == 0, r
    assert host.written() == [] and "hello/1.0/source" in tree_contents(s)


def test_stray_argument_stops_a_command_that_changes_things(host: Host, bare_scratch: Scratch) -> None:
    s = bare_scratch
    s.add_source("hello")
    host.put_source()
    # --dkmstree's value went to a misspelt option's place: DIR is left over
    r = host.dkms(s, "add", "hello/1.0", str(s.dkms_tree), "--sourcetree", str(s.source_tree))
    assert r.rc == 2, r
    assert r.err == (
        f"Error! '{s.dkms_tree}' is not understood: it is not an action, a source directory, a dkms.conf "
        "file or an archive, and the module is already set ('hello').\n"
    )
    assert host.written() == [] and tree_contents(s) == []


def test_status_keeps_upstreams_tolerance_of_a_stray_argument(bare_scratch: Scratch) -> None:
    s = bare_scratch
    s.add_source("hello")
    s.ok("add", "hello/1.0")
    r = s.dkms("status", "hello/1.0", "bogus")
    assert r.rc == 0 and r.out == "hello/1.0: added\n"
    assert r.err.startswith("Warning: 'bogus' is not understood") and r.err.endswith("; ignored.\n")


# --------------------------------------------------------------------------------------------
# Finding 9: unknown actions, job counts


@pytest.mark.parametrize(
    ("argv", "err"),
    [
        (["biuld", "hello/1.0"], "Error! Unknown action 'biuld' (did you mean build?).\n"),
        (["frobnicate"], "Error! Unknown action 'frobnicate'.\nUsage: dkms ACTION"),
    ],
)
def test_unknown_action(bare_scratch: Scratch, argv: List[str], err: str) -> None:
    r = bare_scratch.dkms(*argv)
    assert (r.rc, r.out) == (2, ""), r
    assert r.err.startswith(err), r
    assert tree_contents(bare_scratch) == []


@pytest.mark.parametrize("value", ["abc", "-3", "1.5"])
def test_job_count_on_the_command_line(bare_scratch: Scratch, value: str) -> None:
    bare_scratch.add_source("hello")
    r = bare_scratch.dkms("build", "hello/1.0", "-j", value)
    assert r.rc == 2, r
    assert (
        r.err == f"Error! -j '{value}' is not a number of make jobs: use a whole number (0 for no limit).\n"
    )
    assert tree_contents(bare_scratch) == []  # not even added


def test_job_count_in_framework_conf(scratch: Scratch, kernel: str) -> None:
    scratch.add_source("hello")
    (scratch.etc / "framework.conf").write_text('parallel_jobs="-5"\n')
    r = scratch.ok("build", "hello/1.0", "-k", kernel, "--verbose")
    warning = (
        f"Warning: {scratch.etc / 'framework.conf'}: parallel_jobs='-5' is not a number of make jobs: "
        f"use a whole number (0 for no limit). Using {os.cpu_count()}.\n"
    )
    assert warning in r.err, r
    assert "-j-5" not in r.out and f"-j{os.cpu_count()}" in r.out, r
    # status never builds: it does not complain about it
    assert scratch.ok("status").err == ""


# --------------------------------------------------------------------------------------------
# Finding 7: a framework file that cannot be read must not redirect the command


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        (
            'verbose="unterminated\n',
            "bash cannot parse it: line 4: unexpected EOF while looking for matching",
        ),
        (
            'conf_evaluation="data"\nverbose=$(id)\n',
            "it is not plain settings (command substitution `$(...)`, line 5).",
        ),
    ],
)
@pytest.mark.parametrize("where", ["framework.conf", "framework.conf.d/10-trees.conf"])
def test_unreadable_framework_file_stops_a_command_that_changes_things(
    host: Host, bare_scratch: Scratch, text: str, problem: str, where: str
) -> None:
    s = bare_scratch
    s.add_source("hello")
    host.put_source()
    conf = s.etc / where
    conf.parent.mkdir(parents=True, exist_ok=True)
    conf.write_text(
        f"dkms_tree={s.dkms_tree}\nsource_tree={s.source_tree}\ninstall_tree={s.install_tree}\n{text}"
    )
    r = host.dkms(s, "add", "hello/1.0")
    assert r.rc == 1, r
    assert r.err.startswith(f"Error! {conf}: {problem}"), r
    assert "Nothing was done" in r.err and r.out == ""
    assert host.written() == [] and tree_contents(s) == []
    # status only reads: it goes on without the file, with the warning (here on the namespace's
    # empty /var/lib/dkms, since the file that named the scratch tree was skipped)
    r = host.dkms(s, "status")
    assert (r.rc, r.out) == (0, ""), r
    assert r.err.startswith(f"Warning: {conf}: skipped, {problem}"), r


# --------------------------------------------------------------------------------------------
# Finding 9: names that are not UTF-8 in status


def test_status_of_a_name_that_is_not_utf8(bare_scratch: Scratch) -> None:
    s = bare_scratch
    name = os.fsdecode(b"b\xe9d")  # a file name, not text
    src = s.add_source("hello", name=name)
    (s.dkms_tree / name / "1.0" / "build").mkdir(parents=True)
    (s.dkms_tree / name / "1.0" / "source").symlink_to(src)
    r = s.ok("status", "--json")
    assert "\\udc" not in r.out  # no lone surrogate, which strict JSON parsers refuse
    entry = json.loads(r.out)["entries"][0]
    assert (entry["module"], entry["state"]) == ("b\\xe9d", "added")  # the byte as \xNN
    entry["module"].encode("utf-8")  # valid Unicode
    # the text lines keep the bytes, as upstream prints them, also where the locale is UTF-8
    for env in ({}, {"PYTHONIOENCODING": "utf-8"}):
        proc = subprocess.run(s.dkms_argv("status"), env=s.env(env), capture_output=True, check=False)
        assert (proc.returncode, proc.stdout, proc.stderr) == (0, b"b\xe9d/1.0: added\n", b""), proc


# --------------------------------------------------------------------------------------------
# Finding 9: Python's error texts


def test_add_force_replaces_a_symlinked_source_and_leaves_its_target(
    bare_scratch: Scratch, tmp_path: Path
) -> None:
    s = bare_scratch
    elsewhere = tmp_path / "someone-elses"
    shutil.copytree(EXAMPLES / "hello", elsewhere)
    (s.source_tree / "hello-1.0").symlink_to(elsewhere)
    new = tmp_path / "new-hello"
    shutil.copytree(EXAMPLES / "hello", new)
    (new / "NEW").write_text("")
    r = s.dkms("add", str(new), "--force")
    assert r.rc == 0, r  # was: "Error! Cannot call rmtree on a symbolic link."
    assert f"Removing the symbolic link {s.source_tree / 'hello-1.0'} -> {elsewhere} (--force)\n" in r.out
    dest = s.source_tree / "hello-1.0"
    assert dest.is_dir() and not dest.is_symlink() and (dest / "NEW").is_file()
    assert sorted(p.name for p in elsewhere.iterdir()) == sorted(
        p.name for p in (EXAMPLES / "hello").iterdir()
    )


def test_an_unexpected_system_error_names_the_operation_and_the_path(scratch: Scratch, kernel: str) -> None:
    scratch.add_source("hello")
    scratch.ok("add", "hello/1.0")
    in_the_way = scratch.dkms_tree / "hello" / "1.0" / kernel
    in_the_way.write_text("")  # a file where the build's kernel directory goes
    r = scratch.dkms("build", "hello/1.0", "-k", kernel)
    assert r.rc == 1, r
    assert r.err == f"Error! Could not create the directory {in_the_way}: file exists.\n"


# --------------------------------------------------------------------------------------------
# Finding 9: help, and -q with --json


def test_help_of_one_action(bare_scratch: Scratch) -> None:
    r = bare_scratch.dkms("build", "--help", trees=False)
    assert (r.rc, r.err) == (0, ""), r
    lines = r.lines
    assert (
        lines[0].startswith("pydkms ")
        and lines[1] == "Usage: dkms build [options] module/version [-k kernel]..."
    )
    assert any(line.startswith("  -j number ") for line in lines)
    assert not any(line.startswith("  --json") for line in lines)  # a status option
    r = bare_scratch.dkms("--help", trees=False)
    assert r.rc == 0 and "  autoinstall " in r.out and "  --all-kernels " in r.out


def test_quiet_status_still_prints_the_json_it_was_asked_for(bare_scratch: Scratch) -> None:
    s = bare_scratch
    s.add_source("hello")
    s.ok("add", "hello/1.0")
    for argv in (["status", "-q", "--json"], ["-q", "status", "--json"], ["status", "--json", "-q"]):
        r = s.dkms(*argv)
        assert (r.rc, r.err) == (0, ""), r
        assert [e["module"] for e in json.loads(r.out)["entries"]] == ["hello"]
    assert s.ok("status", "-q").out == ""  # the lines are human text: -q hides them


# --------------------------------------------------------------------------------------------
# Finding 9: missing headers


def test_missing_headers_names_the_kernels_that_have_them(scratch: Scratch, kernels: List[str]) -> None:
    scratch.add_source("hello")
    (scratch.install_tree / "6.1.0-0-nohdr").mkdir()  # a kernel without headers
    r = scratch.dkms("build", "hello/1.0", "-k", "6.1.0-0-nohdr")
    assert r.rc == 21, r
    have = ", ".join(sorted(kernels[:2], key=version_sort_key))  # oldest first
    assert r.err.endswith(
        "Install the linux-headers-6.1.0-0-nohdr package, or point --kernelsourcedir at the kernel build "
        f"directory.\nThese kernels have their headers installed: {have}; choose one with -k <kernel>.\n"
    ), r


def test_missing_headers_without_any_and_with_kernelsourcedir(bare_scratch: Scratch, tmp_path: Path) -> None:
    s = bare_scratch
    s.add_source("hello")
    r = s.dkms("build", "hello/1.0", "-k", "6.1.0-0-nohdr")
    assert r.rc == 21 and r.err.endswith(f"No kernel under {s.install_tree} has its headers installed.\n"), r
    r = s.dkms("build", "hello/1.0", "-k", "6.1.0-0-nohdr", "--kernelsourcedir", str(tmp_path))
    assert r.rc == 21, r
    assert (
        f"The kernel build directory {tmp_path} given with --kernelsourcedir has no include/ directory"
        in r.err
    )
