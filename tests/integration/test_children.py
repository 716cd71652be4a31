"""Every process dkms starts dies with dkms: Ctrl-C, SIGTERM and SIGKILL, grandchildren included.

Real processes throughout: a real dkms, a make whose sub-make keeps writing into the build
directory, a bash that evaluates a slow dkms.conf. Processes are found by reading /proc (procps
may be missing on a minimal system).
"""

from __future__ import annotations

import fcntl
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List, Tuple

import pytest

from tests.conftest import SRC, Scratch

pytestmark = pytest.mark.integration

Proc = Tuple[int, int]  # (pid, start time): a pid alone may be reused


def _stat(pid: int) -> List[str]:
    with open(f"/proc/{pid}/stat", encoding="utf-8", errors="replace") as fh:
        return fh.read().rsplit(")", 1)[1].split()


def descendants(root: int) -> List[Proc]:
    """Every living process below ``root`` (by parent links), with its start time."""
    parents: Dict[int, int] = {}
    starts: Dict[int, int] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            fields = _stat(int(name))
        except (OSError, IndexError):
            continue
        if fields[0] not in ("Z", "X"):
            parents[int(name)] = int(fields[1])
            starts[int(name)] = int(fields[19])
    found: List[Proc] = []
    todo = [root]
    while todo:
        p = todo.pop()
        for child, parent in parents.items():
            if parent == p:
                found.append((child, starts[child]))
                todo.append(child)
    return found


def alive(procs: List[Proc]) -> List[Proc]:
    out = []
    for pid, start in procs:
        try:
            fields = _stat(pid)
        except (OSError, IndexError):
            continue
        if fields[0] not in ("Z", "X") and int(fields[19]) == start:
            out.append((pid, start))
    return out


def wait_for(what: Callable[[], bool], timeout: float, message: str) -> float:
    start = time.monotonic()
    while not what():
        assert time.monotonic() - start < timeout, message
        time.sleep(0.02)
    return time.monotonic() - start


def spawn(s: Scratch, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        s.dkms_argv(*args),
        env=s.env(),
        cwd=s.root,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # the test's own signals go to dkms alone
    )


SLOW_MK = """\
all:
\t$(MAKE) -f slow.mk writer
writer:
\tsetsid sh -c 'while :; do echo x >> escaped.txt; sleep 0.05; done' </dev/null >/dev/null 2>&1 &
\tfor i in $$(seq 600); do echo $$i >> writes.txt; sleep 0.05; done
"""


def test_sigkill_during_a_build_kills_make_and_its_children_before_the_lock_is_free(
    scratch: Scratch, kernel: str
) -> None:
    s = scratch
    src = s.source_tree / "slow-1.0"
    src.mkdir()
    (src / "dkms.conf").write_text(
        'PACKAGE_NAME=slow\nPACKAGE_VERSION=1.0\nMAKE[0]="make -f slow.mk"\n'
        "BUILT_MODULE_NAME[0]=slow\nDEST_MODULE_LOCATION[0]=/updates\n"
    )
    (src / "slow.mk").write_text(SLOW_MK)
    s.ok("add", "slow/1.0")
    proc = spawn(s, "build", "slow/1.0", "-k", kernel)
    build = s.dkms_tree / "slow" / "1.0" / "build"
    writes, escaped = build / "writes.txt", build / "escaped.txt"
    try:
        wait_for(lambda: writes.exists() and escaped.exists(), 60, "the slow make did not start")
        children = descendants(proc.pid)
        assert len(children) >= 4, children  # make, its sub-make, a shell, sleep, the escaped loop…
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.communicate()
    # the lock stays taken until every child is dead, then it is free quickly
    fd = os.open(s.dkms_tree / ".lock", os.O_RDWR)
    try:

        def lock_free() -> bool:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return False
            return True

        waited = wait_for(lock_free, 10, "the lock of the killed dkms was not released")
        assert alive(children) == [], f"still running once the lock was free: {alive(children)}"
        assert waited < 5
        sizes = (writes.stat().st_size, escaped.stat().st_size)
        time.sleep(0.5)
        assert (writes.stat().st_size, escaped.stat().st_size) == sizes, "something still writes into build/"
    finally:
        os.close(fd)


SLOW_CONF = """\
PACKAGE_NAME=slowconf
PACKAGE_VERSION=1.0
BUILT_MODULE_NAME[0]=slowconf
DEST_MODULE_LOCATION[0]=/updates
MAKE="$(touch {started}; sleep 30; echo make)"
"""


@pytest.mark.parametrize(
    ("sig", "rc", "message"),
    [
        (signal.SIGTERM, 143, "Error! Terminated."),
        (signal.SIGINT, 130, "Error! Interrupted."),
        (signal.SIGKILL, -signal.SIGKILL, None),
    ],
)
def test_signal_while_bash_evaluates_a_conf_leaves_no_bash_behind(
    bare_scratch: Scratch, sig: signal.Signals, rc: int, message: str
) -> None:
    s = bare_scratch
    started = s.root / "started"
    src = s.source_tree / "slowconf-1.0"
    src.mkdir()
    (src / "dkms.conf").write_text(SLOW_CONF.format(started=started))
    proc = spawn(s, "add", "slowconf/1.0")
    try:
        wait_for(started.exists, 30, "bash did not start evaluating the conf")
        children = descendants(proc.pid)
        assert children, "no bash below dkms"
    finally:
        os.kill(proc.pid, sig)
        _out, err = proc.communicate(timeout=20)
    assert proc.returncode == rc, err
    if message is not None:
        assert err.splitlines()[-1] == message, err
    wait_for(lambda: not alive(children), 5, f"still running after dkms ended: {alive(children)}")
    assert not (s.dkms_tree / "slowconf").exists()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_signal_during_a_script_kills_the_script_and_what_it_started(
    bare_scratch: Scratch, sig: signal.Signals
) -> None:
    """Scripts run in dkms' own process group (they may talk to the terminal): the token finds them."""
    s = bare_scratch
    started = s.root / "started"
    src = s.source_tree / "slowscript-1.0"
    src.mkdir()
    (src / "dkms.conf").write_text(
        "PACKAGE_NAME=slowscript\nPACKAGE_VERSION=1.0\nBUILT_MODULE_NAME[0]=slowscript\n"
        "DEST_MODULE_LOCATION[0]=/updates\nPOST_ADD=post-add.sh\n"
    )
    script = src / "post-add.sh"
    script.write_text(f"#!/bin/sh\nsleep 30 &\ntouch {started}\nsleep 30\n")
    script.chmod(0o755)
    proc = spawn(s, "add", "slowscript/1.0")
    try:
        wait_for(started.exists, 30, "the POST_ADD script did not start")
        children = descendants(proc.pid)
        assert len(children) >= 3, children  # the script and its two sleeps
    finally:
        os.kill(proc.pid, sig)
        proc.communicate(timeout=20)
    wait_for(lambda: not alive(children), 5, f"still running after dkms ended: {alive(children)}")


def test_a_logged_step_leaves_nothing_running_behind(tmp_path: Path) -> None:
    """What a build step starts in the background ends with the step."""
    code = (
        "import sys; from pathlib import Path; from pydkms import runner\n"
        "rc = runner.run_logged('sleep 60 & echo $! > pid', description='bg', log=Path('log'), cwd='.')\n"
        "print(rc, runner.watchdog_started())\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(SRC)},
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert out == "0 True\n"
    pid = int((tmp_path / "pid").read_text())
    wait_for(lambda: not Path(f"/proc/{pid}").exists() or _stat(pid)[0] == "Z", 5, "sleep survived")


def test_status_starts_no_watchdog(bare_scratch: Scratch) -> None:
    """The watchdog comes with the first child: a command that starts none does not pay for it."""
    s = bare_scratch
    s.add_source("hello")
    s.ok("add", "hello/1.0")
    code = (
        "import sys; from pydkms import cli, runner\n"
        f"rc = cli.main(['status', *{s.tree_args()!r}])\n"
        "print(rc, runner.watchdog_started())\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], env=s.env(), capture_output=True, text=True, check=True
    ).stdout
    assert out.splitlines() == ["hello/1.0: added", "0 False"]
