"""The single entry point for running external programs.

Every subprocess pydkms starts goes through :func:`run` (or :func:`run_logged` for steps whose
output belongs in make.log, or :func:`process_group`). It never raises for a non-zero exit by
default; it turns "program not found" into a :class:`~pydkms.errors.DkmsError` with a readable
hint, and with ``--debug`` it traces every command line on stderr.

No child outlives dkms: every child carries a token in its environment and a watchdog process,
started with the first child, kills them all (grandchildren included) when dkms ends in any way.
Logged steps and bash evaluations also run in process groups of their own, killed on Ctrl-C and
SIGTERM and when the step ends.
"""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Dict, List, Optional, Set, Tuple, Union

from .errors import DkmsError

StrPath = Union[str, "os.PathLike[str]"]

#: Set by the CLI from ``--debug``: trace every command on stderr.
DEBUG = False


#: In the environment of every child: the watchdog recognises by it what dkms started, also a
#: grandchild that left its process group.
ENV_SUPERVISED = "PYDKMS_SUPERVISED"

#: The watchdog (run as ``python -I -S -c WATCHDOG FD TOKEN``). It blocks reading a socket whose
#: other end only dkms holds, so it reads end-of-file when dkms ends in any way, SIGKILL included.
#: Then it kills, until none is left, every process of the groups dkms registered and every
#: process carrying its token, and only then closes the tree locks dkms handed it, so that the
#: lock is not free while a make of the dead dkms still writes into the tree.
WATCHDOG = r"""
import os, signal, socket, sys, time

os.chdir("/")
sock = socket.socket(fileno=int(sys.argv[1]))
marker = b"PYDKMS_SUPERVISED=" + os.fsencode(sys.argv[2])
groups, locks = set(), {}
while True:
    try:
        data, fds, _flags, _addr = socket.recv_fds(sock, 64, 1)
    except OSError:
        break
    if not data:
        break
    kind, arg = data[:1], data[1:]
    if kind == b"L" and fds:
        locks[arg] = fds[0]
    elif kind == b"U" and arg in locks:
        os.close(locks.pop(arg))
    elif kind == b"+":
        groups.add(int(arg))
    elif kind == b"-":
        groups.discard(int(arg))
    for fd in fds[1 if kind == b"L" else 0 :]:
        os.close(fd)


def alive():
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == os.getpid():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as fh:
                fields = fh.read().rsplit(b")", 1)[1].split()
            if fields[0] in (b"Z", b"X"):
                continue
            if int(fields[2]) in groups or int(fields[3]) in groups:
                found.append(int(name))
                continue
            with open(f"/proc/{name}/environ", "rb") as fh:
                if marker in fh.read().split(b"\0"):
                    found.append(int(name))
        except (OSError, IndexError, ValueError):
            continue
    return found


# a few empty rounds in a row: a child still between fork and exec shows its token only after exec
deadline = time.monotonic() + 30
quiet = 0
while quiet < 3 and time.monotonic() < deadline:
    pids = alive()
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    quiet = 0 if pids else quiet + 1
    time.sleep(0.02)
"""


class _Supervisor:
    """The watchdog, started with the first child, and what dkms tells it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._fd: Optional[int] = None  # our end of the socket; kept open until dkms exits
        self._unavailable = False
        self.token = ""
        #: tree locks the watchdog keeps until the children are gone
        self._locks: Set[int] = set()

    @property
    def started(self) -> bool:
        return self._fd is not None

    def child_env(self, env: Optional[Mapping[str, str]]) -> Dict[str, str]:
        """``env`` (default: ours) for a child, marked as one of ours; starts the watchdog."""
        out = dict(os.environ if env is None else env)
        with self._lock:
            self._start()
            if self.token:
                out[ENV_SUPERVISED] = self.token
            else:
                out.pop(ENV_SUPERVISED, None)
        return out

    def _start(self) -> None:
        if self._fd is not None or self._unavailable:
            return
        if not sys.executable or not os.path.isdir("/proc"):
            self._unavailable = True
            return
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        token = f"{os.getpid()}.{os.urandom(8).hex()}"
        child = theirs.fileno()
        # Started with posix_spawn, not subprocess: it is never waited for (it outlives dkms by
        # design), and a Popen object would complain about that. It gets no descriptor but its
        # end of the socket: nobody waiting for a pipe of ours to close waits for the watchdog.
        actions: List[Tuple[object, ...]] = [
            (os.POSIX_SPAWN_OPEN, fd, os.devnull, os.O_RDWR, 0) for fd in (0, 1, 2)
        ]
        for name in os.listdir("/proc/self/fd"):
            fd = int(name)
            if fd > 2 and fd != child and _inheritable(fd):
                actions.append((os.POSIX_SPAWN_CLOSE, fd))
        try:
            os.set_inheritable(child, True)
            os.posix_spawn(
                sys.executable,
                [sys.executable, "-I", "-S", "-c", WATCHDOG, str(child), token],
                {},
                file_actions=actions,
                setsid=True,
            )
        except OSError:
            ours.close()
            self._unavailable = True
            return
        finally:
            theirs.close()
        self._fd = ours.detach()
        self.token = token
        for fd in self._locks:
            self._send(b"L%d" % fd, fd)

    def _send(self, message: bytes, fd: Optional[int] = None) -> None:
        if self._fd is None:
            return
        try:
            sock = socket.socket(fileno=self._fd)
        except OSError:
            return
        try:
            if fd is None:
                sock.send(message)
            else:
                socket.send_fds(sock, [message], [fd])
        except OSError:  # the watchdog is gone: nothing more can be done
            pass
        finally:
            sock.detach()

    def register(self, pgid: int) -> None:
        with self._lock:
            self._send(b"+%d" % pgid)

    def unregister(self, pgid: int) -> None:
        with self._lock:
            self._send(b"-%d" % pgid)

    def hold_lock(self, fd: int) -> None:
        with self._lock:
            self._locks.add(fd)
            self._send(b"L%d" % fd, fd)

    def drop_lock(self, fd: int) -> None:
        with self._lock:
            if fd in self._locks:
                self._locks.discard(fd)
                self._send(b"U%d" % fd)


def _inheritable(fd: int) -> bool:
    try:
        return os.get_inheritable(fd)
    except OSError:  # closed meanwhile (the descriptor listdir itself used)
        return False


_supervisor = _Supervisor()

#: process groups of the logged commands and bash evaluations running now (and what they started)
_running: set[int] = set()
_running_lock = threading.Lock()


def watchdog_started() -> bool:
    """Whether the watchdog runs (it is started with the first child)."""
    return _supervisor.started


def hold_lock_for_children(fd: int) -> None:
    """Keep the tree lock ``fd`` locked, should dkms die, until every child of dkms is dead.

    The watchdog keeps a duplicate of the descriptor; releasing the lock must unlock it
    (``flock(LOCK_UN)``) before closing it, then call :func:`release_lock_for_children`.
    """
    _supervisor.hold_lock(fd)


def release_lock_for_children(fd: int) -> None:
    """The tree lock ``fd`` was released: the watchdog closes its duplicate."""
    _supervisor.drop_lock(fd)


def kill_running() -> None:
    """Kill every logged command still running, with all it started: dkms is being interrupted.

    Logged commands run in their own process group, so a make (and its compilers) never outlives
    the dkms that holds the tree lock for it, also when a build thread of the planner started it.
    Should dkms be killed outright, the watchdog does the same.
    """
    with _running_lock:
        groups = list(_running)
    for pgid in groups:
        _killpg(pgid)


def _killpg(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except OSError:
        pass


class StartFailed(Exception):
    """:func:`process_group` could not start the program (``error`` says why)."""

    def __init__(self, program: str, error: OSError) -> None:
        super().__init__(f"cannot start {program}: {error.strerror or error}")
        self.program = program
        self.error = error


@contextmanager
def process_group(
    argv: Sequence[StrPath],
    *,
    cwd: Optional[StrPath] = None,
    env: Optional[Mapping[str, str]] = None,
    stdout: Optional[Union[int, IO[bytes]]] = None,
    stderr: Optional[Union[int, IO[bytes]]] = None,
) -> Iterator[subprocess.Popen[bytes]]:
    """Start ``argv`` as the leader of a new session that dies with dkms; wait with :func:`wait_group`.

    Leaving the block kills whatever is left of the group: everything when the block ends by an
    exception (Ctrl-C, SIGTERM, a timeout), or what the leader left running in the background.
    Raises :class:`StartFailed` when the program cannot be started.
    """
    args = [os.fspath(a) for a in argv]
    try:
        proc = subprocess.Popen(
            args,
            cwd=cwd,
            env=_supervisor.child_env(env),
            stdin=subprocess.DEVNULL,
            stdout=stdout,
            stderr=stderr,
            start_new_session=True,
        )
    except OSError as exc:
        raise StartFailed(args[0], exc) from exc
    with _running_lock:
        _running.add(proc.pid)
    _supervisor.register(proc.pid)
    try:
        yield proc
    finally:
        if proc.returncode is None:
            _killpg(proc.pid)
            proc.wait()
        with _running_lock:
            _running.discard(proc.pid)
        _supervisor.unregister(proc.pid)


def wait_group(proc: subprocess.Popen[bytes], timeout: Optional[float] = None) -> int:
    """Wait for the leader started by :func:`process_group`, kill what it left in its group, reap it.

    The leader is reaped only after the kill, so its process group id cannot have been reused.
    Raises ``subprocess.TimeoutExpired`` after ``timeout`` seconds (the group is left running).
    """
    if proc.returncode is not None:
        return int(proc.returncode)
    if timeout is None:
        os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOWAIT)
    else:
        deadline = time.monotonic() + timeout
        delay = 0.0005
        while os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOWAIT | os.WNOHANG) is None:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise subprocess.TimeoutExpired(proc.args, timeout)
            time.sleep(min(delay, remaining))
            delay = min(delay * 2, 0.05)
    _killpg(proc.pid)
    return int(proc.wait())


def _trace(argv: Sequence[str], cwd: Optional[StrPath]) -> None:
    if DEBUG:
        where = f" (in {cwd})" if cwd else ""
        print(f"+ {shlex.join(argv)}{where}", file=sys.stderr)


def which(program: str, path: Optional[str] = None) -> Optional[str]:
    """Return the full path of ``program`` on ``PATH`` (or ``path``), or None."""
    return shutil.which(program, path=path)


def run(
    argv: Sequence[StrPath],
    *,
    cwd: Optional[StrPath] = None,
    env: Optional[Mapping[str, str]] = None,
    input: Optional[bytes] = None,
    capture: bool = True,
    stdout: Optional[Union[int, IO[bytes]]] = None,
    stderr: Optional[Union[int, IO[bytes]]] = None,
    check: bool = False,
    timeout: Optional[float] = None,
) -> subprocess.CompletedProcess[bytes]:
    """Run ``argv`` and return the completed process.

    ``capture`` collects stdout and stderr (bytes) unless ``stdout``/``stderr`` are given.
    A missing program raises DkmsError(1) naming it; ``check`` raises DkmsError(1) with the
    command line and its exit status on failure.
    """
    args = [os.fspath(a) for a in argv]
    _trace(args, cwd)
    out: Optional[Union[int, IO[bytes]]] = stdout
    err: Optional[Union[int, IO[bytes]]] = stderr
    if capture:
        out = subprocess.PIPE if stdout is None else stdout
        err = subprocess.PIPE if stderr is None else stderr
    try:
        proc = subprocess.run(
            args,
            cwd=cwd,
            env=_supervisor.child_env(env),
            input=input,
            stdout=out,
            stderr=err,
            stdin=None if input is not None else subprocess.DEVNULL,
            timeout=timeout,
            check=False,
        )
    except FileNotFoundError as exc:
        if cwd is not None and not Path(cwd).is_dir():
            raise DkmsError(15, f"Cannot change into directory {cwd}.") from exc
        raise DkmsError(
            1,
            f"Program '{args[0]}' was not found.",
            hint="Install the package that provides it (see the README's set-up command).",
        ) from exc
    except OSError as exc:  # not executable, not a program (ENOEXEC), …
        raise DkmsError(1, f"Program '{args[0]}' cannot be executed: {exc.strerror or exc}.") from exc
    if check and proc.returncode != 0:
        detail = (proc.stderr or b"").decode(errors="replace").strip() if capture else ""
        raise DkmsError(
            1,
            f"Command failed with exit status {proc.returncode}: {shlex.join(args)}"
            + (f"\n{detail}" if detail else ""),
        )
    return proc


def run_logged(
    command: str,
    *,
    description: str,
    log: Path,
    cwd: StrPath,
    env: Optional[Mapping[str, str]] = None,
) -> int:
    """Run a shell command line with ``bash -c``, appending a block to ``log`` (spec/tree.md §7.2).

    The block is: empty line, description, ``# command: ...``, combined output, empty line,
    ``# exit code: N``, ``# elapsed time: HH:MM:SS``, and a line of 64 dashes.
    Returns the exit status. A working directory that cannot be entered gives DkmsError(15).
    """
    if not Path(cwd).is_dir():
        raise DkmsError(15, f"Cannot change into directory {cwd}.")
    _trace(["bash", "-c", command], cwd)
    with open(log, "ab") as fh:
        fh.write(f"\n{description}\n# command: {command}\n".encode("utf-8", "surrogateescape"))
        fh.flush()
        start = time.monotonic()
        try:
            with process_group(
                ["bash", "-c", command], cwd=cwd, env=env, stdout=fh, stderr=subprocess.STDOUT
            ) as proc:
                returncode = wait_group(proc)
        except StartFailed as exc:
            raise DkmsError(
                1,
                f"Program 'bash' cannot be started: {exc.error.strerror or exc.error}.",
                hint="Install the package that provides it (see the README's set-up command).",
            ) from exc
        elapsed = int(time.monotonic() - start)
        fh.write(
            f"\n# exit code: {returncode}\n"
            f"# elapsed time: {elapsed // 3600:02d}:{elapsed // 60 % 60:02d}:{elapsed % 60:02d}\n"
            f"{'-' * 64}\n".encode()
        )
    return returncode


def start(
    argv: Sequence[StrPath],
    *,
    stdin: Union[int, IO[bytes]],
    stdout: Union[int, IO[bytes]],
    stderr: Union[int, IO[bytes]],
) -> subprocess.Popen[bytes]:
    """Start ``argv`` without waiting for it, for a filter that data streams through.

    A decompressor reading an archive into a pipe, or a compressor writing one from a pipe: the
    caller reads or writes the pipes and must ``wait()`` for the process (and kill it when it gives
    up early). A missing program raises DkmsError(1) naming it, like :func:`run`.
    """
    args = [os.fspath(a) for a in argv]
    _trace(args, None)
    try:
        return subprocess.Popen(
            args, stdin=stdin, stdout=stdout, stderr=stderr, env=_supervisor.child_env(None)
        )
    except FileNotFoundError as exc:
        raise DkmsError(
            1,
            f"Program '{args[0]}' was not found.",
            hint="Install the package that provides it (see the README's set-up command).",
        ) from exc
    except OSError as exc:
        raise DkmsError(1, f"Program '{args[0]}' cannot be executed: {exc.strerror or exc}.") from exc
